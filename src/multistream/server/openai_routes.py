"""An OpenAI-compatible ``/v1/chat/completions`` route, as a reusable FastAPI router.

The router talks to a :class:`ChatBackend`; :class:`HFChatBackend` is plain sequential
generation with a Hugging Face causal LM and its chat template (the base model as-is). A
multi-stream backend can implement the same two methods and reuse the router unchanged.

Supported request fields: ``messages`` (system/user/assistant, string content), ``model``
(the served name, or left out; another name gets 404 as vLLM answers), ``max_tokens`` / ``max_completion_tokens``, ``temperature`` (0 = greedy),
``top_p``, ``seed``, ``stream`` (server-sent events, ``data: [DONE]`` at the end), ``n`` (only
1). ``response_format`` and other fields are accepted and ignored. Errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape; a full server answers 429 with
``Retry-After``. ``POST /v1/completions`` takes a ``prompt`` (one string) with the same fields
and answers in the legacy completions shape.

Example:
    >>> app = FastAPI(); app.include_router(openai_router(HFChatBackend(model, tok, "smollm2-135m")))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

__all__ = [
    "MAX_SEED",
    "CapacityError",
    "ChatBackend",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "CompletionRequest",
    "HFChatBackend",
    "openai_router",
]


# torch generators take 64-bit seeds; the multi-stream engine seeds batch member i with seed + i.
MAX_SEED = 2**63 - 1
_MAX_TOKENS = 1_000_000


class CapacityError(RuntimeError):
    """The backend runs as many requests as it may; the route answers 429 with ``Retry-After``.

    Args:
        message: what is full and how to raise the limit.
        retry_after_s: seconds the client should wait.
    """

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ChatMessage(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """The request fields the route reads; unknown fields are ignored as OpenAI clients send many.
    Every number is range-checked here, at the edge: a bad value is a 400 naming the field."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=_MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_MAX_TOKENS)
    # Left out: the served model's default (its decoding presets; 1.0 for a plain base model).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    # Set for /v1/completions: the prompt is raw text, not chat messages (no chat template).
    raw_prompt: bool = Field(default=False, exclude=True)
    # The client's address, set by the route (never from the body): per-client limits use it.
    _client: str | None = PrivateAttr(default=None)

    @property
    def client_address(self) -> str | None:
        return self._client

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(BaseModel):
    """``/v1/completions``: one prompt string and the same sampling fields as chat."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str | list[str] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=16, ge=1, le=_MAX_TOKENS)
    # Left out: the served model's default (its decoding presets; 1.0 for a plain base model).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    def as_chat(self) -> ChatRequest:
        """The same request as one raw user message (the backends' one entry point)."""
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError(f"prompt: send one prompt per request, got a list of {len(self.prompt)}")
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return ChatRequest(
            messages=[ChatMessage(role="user", content=prompt)], model=self.model,
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stream=self.stream, raw_prompt=True,
        )  # fmt: skip


@dataclass
class Completion:
    """A finished completion: text, why it stopped (``stop`` or ``length``) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatBackend(Protocol):
    """What the router needs from a model."""

    name: str
    max_tokens_default: int

    def stream(self, request: ChatRequest) -> Iterator[str | Completion]:
        """Yield text pieces as they are decoded, then one :class:`Completion`."""
        ...


class HFChatBackend:
    """Sequential generation with a Hugging Face causal LM, one request at a time.

    Args:
        model: a causal LM in eval mode (e.g. from :func:`multistream.models.load_base`).
        tokenizer: its tokenizer; its chat template formats the messages.
        name: the model name reported to clients.
        max_tokens_default: completion limit when the request gives none.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str, max_tokens_default: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_tokens_default = max_tokens_default
        eos = tokenizer.eos_token_id
        self._stop_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        # One CPU/GPU model: requests take turns (a batch scheduler is the engine's job).
        self._lock = threading.Lock()

    def _prompt(self, messages: list[ChatMessage], raw: bool = False) -> list[int]:
        from ..sequential import chat_prompt_ids

        chat = [m.model_dump() for m in messages]
        if not raw:
            return chat_prompt_ids(self.tokenizer, chat)
        return self.tokenizer.encode("\n".join(m["content"] for m in chat), add_special_tokens=False)

    def stream(self, request: ChatRequest) -> Iterator[str | Completion]:
        prompt = self._prompt(request.messages, raw=request.raw_prompt)
        from ..sequential import SequentialBaseline

        limit = request.token_limit or self.max_tokens_default
        baseline = SequentialBaseline(
            self.model, self.tokenizer, prompt, limit,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed,
        )  # fmt: skip
        with self._lock:
            yield from baseline
        finish = "stop" if baseline.reason == "eos" else "length"
        yield Completion(baseline.text, finish, len(prompt), len(baseline.ids))


def _error(
    status: int,
    message: str,
    param: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": None}},
        headers=headers,
    )


def _unknown_model(name: str, served: str) -> JSONResponse:
    # vLLM's answer for a model it does not serve (404, type NotFoundError, code 404).
    return JSONResponse(
        status_code=404,
        content={
            "error": {
                "message": f"The model `{name}` does not exist. This server serves `{served}`.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        },
    )


async def _read_body(raw: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The validated request body, or the 400 that names what is wrong with it."""
    try:
        body = await raw.json()
    except RecursionError:
        return _error(400, "the request body nests too deep to be a request")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"the request body is not valid JSON ({e})")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        return _error(400, f"field {param!r}: {first['msg']}", param=param)


async def _iterate_in_thread(it: Iterator[Any]) -> AsyncIterator[Any]:
    """Run a blocking iterator in a worker thread, one item at a time (the event loop stays free)."""
    sentinel = object()
    while True:
        item = await asyncio.to_thread(next, it, sentinel)
        if item is sentinel:
            return
        yield item


async def _started(it: Iterator[Any]) -> Iterator[Any]:
    """``it`` with its first item already computed (in a worker thread); errors surface here."""
    sentinel = object()
    first = await asyncio.to_thread(next, it, sentinel)
    return it if first is sentinel else itertools.chain([first], it)


def openai_router(backend: ChatBackend) -> APIRouter:
    """A router with ``POST /v1/chat/completions``, ``POST /v1/completions`` and
    ``GET /v1/models`` for ``backend``.

    Args:
        backend: the model behind the route (:class:`HFChatBackend` or a multi-stream one).

    Returns:
        an ``APIRouter`` to ``include_router`` into any FastAPI app.
    """
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": backend.name, "object": "model", "owned_by": "multistream"}],
        }

    async def start(request: ChatRequest, raw: Request) -> Iterator[Any] | JSONResponse:
        """The backend's item stream with its first item computed, or the error response."""
        if request.model is not None and request.model != backend.name:
            return _unknown_model(request.model, backend.name)
        request._client = raw.client.host if raw.client else None
        try:
            # The first item comes before any answer is sent, so that a request the backend
            # refuses (a limit, a bad setting: ValueError) gets a 400 with its reason, not a 500.
            return await _started(backend.stream(request))
        except CapacityError as e:
            return _error(429, str(e), kind="rate_limit_error", headers={"Retry-After": str(e.retry_after_s)})
        except ValueError as e:
            return _error(400, str(e))

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(raw: Request) -> JSONResponse | StreamingResponse:
        request = await _read_body(raw, ChatRequest)
        if isinstance(request, JSONResponse):
            return request
        assert isinstance(request, ChatRequest)
        items = await start(request, raw)
        if isinstance(items, JSONResponse):
            return items
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        name = backend.name
        if not request.stream:
            done = await _finish(items)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": done.text},
                            "finish_reason": done.finish_reason,
                        }
                    ],
                    "usage": _usage(done),
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for item in _iterate_in_thread(items):
                if isinstance(item, Completion):
                    yield chunk({}, item.finish_reason)
                else:
                    yield chunk({"content": item}, None)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.post("/v1/completions", response_model=None)
    async def completions(raw: Request) -> JSONResponse | StreamingResponse:
        body = await _read_body(raw, CompletionRequest)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, CompletionRequest)
        try:
            request = body.as_chat()
        except ValueError as e:
            return _error(400, str(e), param="prompt")
        items = await start(request, raw)
        if isinstance(items, JSONResponse):
            return items
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def payload(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": backend.name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if not request.stream:
            done = await _finish(items)
            return JSONResponse({**payload(done.text, done.finish_reason), "usage": _usage(done)})

        async def events() -> AsyncIterator[str]:
            async for item in _iterate_in_thread(items):
                if isinstance(item, Completion):
                    data = payload("", item.finish_reason)
                else:
                    data = payload(item, None)
                yield f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return router


async def _finish(items: Iterator[Any]) -> Completion:
    done: Completion | None = None
    async for item in _iterate_in_thread(items):
        if isinstance(item, Completion):
            done = item
    assert done is not None
    return done


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }
