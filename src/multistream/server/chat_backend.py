"""The multi-stream model behind the OpenAI-compatible route (a :class:`ChatBackend`).

A chat request becomes one live session: the messages are fed into the model's input stream
(a ``system`` message into an input stream named ``system`` when the schema has one), the
stream is closed, and the visible output streams' cells are returned as the answer, piece by
piece as rows arrive. Requests run through the live scheduler, so concurrent requests and
WebSocket sessions are decoded together in the engine's batches.

Earlier turns of a conversation are fed as plain text before the last message: the engine has
no way to place an old answer into a generated stream, and the models are trained on single
questions.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..engine import Row, SessionConfig
from ..schema import Role
from .live import RETRY_AFTER_S, LiveService, visible_text
from .openai_routes import CapacityError, ChatMessage, ChatRequest, Completion
from .protocol import ProtocolError
from .scheduler import LiveSession, SessionLimitError

__all__ = ["MultiStreamChatBackend"]

# How long a request waits for its next row before giving up (a stalled worker must not hang it).
ROW_TIMEOUT_S = 60.0
# How often a waiting request looks whether its session failed to start.
_POLL_S = 0.25
# finish_reason of the OpenAI API per engine stop reason: "stop" = the model ended the answer.
_FINISH = {"silence": "stop", "end_token": "stop", "max_rows": "length", "client": "length"}


class _Listener:
    """Moves a session's events from the worker thread to the request's thread."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_start(self, live: LiveSession) -> None:
        self.events.put(("start", live))

    def on_row(self, live: LiveSession, row: Row) -> None:
        self.events.put(("row", row))

    def on_stop(self, live: LiveSession, reason: str, error: str | None) -> None:
        self.events.put(("stop", (reason, error)))


def _cancel_when_started(opening: Any) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().cancel()


class MultiStreamChatBackend:
    """Answers chat requests with the live multi-stream model.

    Args:
        service: the :class:`~multistream.server.live.LiveService` (model, scheduler, limits).

    Example:
        >>> app.include_router(openai_router(MultiStreamChatBackend(service)))  # doctest: +SKIP
    """

    def __init__(self, service: LiveService) -> None:
        self.service = service
        self.name = service.config.model_name
        self.max_tokens_default = service.config.max_rows
        schema = service.schema
        inputs = [s.name for s in schema.streams if s.role is Role.INPUT]
        if not inputs:
            raise ValueError(f"the model's streams {schema.names} have no input stream for chat messages")
        self.system_stream = "system" if "system" in inputs else None
        self.input_stream = next((n for n in inputs if n != "system"), inputs[0])
        self.output_streams = [s.name for s in schema.streams if s.role is Role.OUTPUT]

    def inputs(self, messages: list[ChatMessage]) -> dict[str, str]:
        """Text per input stream for ``messages`` (see the module docstring)."""
        fed: dict[str, list[str]] = {self.input_stream: []}
        for message in messages:
            if message.role == "system" and self.system_stream is not None:
                fed.setdefault(self.system_stream, []).append(message.content)
            else:
                fed[self.input_stream].append(message.content)
        return {stream: "\n".join(parts) for stream, parts in fed.items()}

    def _config(self, request: ChatRequest) -> SessionConfig:
        # Fields the request leaves out keep the server's defaults (the model's presets), as
        # on the WebSocket: one set of decoding defaults for every route.
        base = self.service.session_config_defaults()
        given = {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}
        sampling = replace(base.sampling, **{k: v for k, v in given.items() if v is not None})
        return replace(base, sampling=sampling)

    def stream(self, request: ChatRequest) -> Iterator[str | Completion]:
        """Yield the output stream's text as rows arrive, then one :class:`Completion`.

        A request holds one of its client's slots (``max_sessions_per_client``) while it runs;
        a client over its cap, like a full server, gets :class:`CapacityError` (429).
        """
        client = request.client_address
        if client is not None:
            try:
                self.service.claim_client_slot(client)
            except ProtocolError as e:
                raise CapacityError(str(e), RETRY_AFTER_S) from None
        try:
            yield from self._answer(request)
        finally:
            if client is not None:
                self.service.release_client_slot(client)

    def _answer(self, request: ChatRequest) -> Iterator[str | Completion]:
        inputs = self.inputs(request.messages)
        for stream, text in inputs.items():
            self.service.check_input(stream, text, 0)
        limit = request.token_limit or self.max_tokens_default
        listener = _Listener()
        try:
            opening = self.service.scheduler.open(self._config(request), listener)
        except SessionLimitError as e:
            raise CapacityError(str(e), RETRY_AFTER_S) from None
        live: LiveSession | None = None
        pieces: list[str] = []
        prompt_tokens = 0
        reason = "max_rows"
        try:
            while True:
                kind, value = self._next_event(listener, opening)
                if kind == "start":
                    live = value
                    prompt_tokens = sum(live.feed(stream, text) for stream, text in inputs.items())
                    live.close()
                elif kind == "row":
                    text = visible_text(value, self.service.end_tokens)
                    piece = "".join(text[n] or "" for n in self.output_streams)
                    if piece:
                        pieces.append(piece)
                        yield piece
                    if len(pieces) >= limit:
                        reason = "client"  # the request's max_tokens ended it, not the model
                        break
                else:
                    reason, error = value
                    if error is not None:
                        raise RuntimeError(error)
                    break
        finally:
            if live is not None:
                live.cancel()  # a client that went away frees its slot
            else:  # not started yet: end the session as soon as it does
                opening.add_done_callback(_cancel_when_started)
        yield Completion("".join(pieces), _FINISH.get(reason, "stop"), prompt_tokens, len(pieces))

    @staticmethod
    def _next_event(listener: _Listener, opening: Any) -> tuple[str, Any]:
        """The session's next event; a session that could not start raises its reason at once
        instead of after the row timeout."""
        waited = 0.0
        while True:
            try:
                return listener.events.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
            if opening.done() and not opening.cancelled() and opening.exception() is not None:
                error = opening.exception()
                raise ValueError(f"the session could not start: {type(error).__name__}: {error}")
            if waited >= ROW_TIMEOUT_S:
                raise TimeoutError(f"no row within {ROW_TIMEOUT_S:.0f} s; the server is overloaded")
