"""The sequential baseline: a chat prompt in, one token per step out, from a plain causal LM.

Everything that compares a multi-stream model with sequential decoding goes through here: the
server's baseline lane, the OpenAI-compatible route, the evaluation runners and training's
sequential twin (which needs the same prompt). So the chat template, and the ``BatchEncoding``
that ``apply_chat_template(tokenize=True)`` returns in transformers 5, are handled once, in
:func:`chat_prompt_ids`, and tokens are drawn by the engine's own vectorised sampler
(:func:`multistream.sampling.sample_row`: temperature, top-k, top-p, a seeded generator).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .sampling import sample_row

__all__ = ["SequentialBaseline", "baseline_lm", "chat_prompt_ids"]


def chat_prompt_ids(
    tokenizer: Any,
    messages: str | Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a chat, as the tokenizer's chat template writes it.

    Args:
        tokenizer: a Hugging Face tokenizer (or any object with ``encode``).
        messages: ``[{"role": ..., "content": ...}]``, or one text (a single user turn).
        add_generation_prompt: end with the assistant turn's opening, where an answer starts.

    Returns:
        The ids. A tokenizer without a chat template (tiny test models) gets the message
        contents joined by newlines, without special tokens.

    Example:
        >>> class Words:
        ...     def encode(self, text, add_special_tokens=False): return [len(w) for w in text.split()]
        >>> chat_prompt_ids(Words(), "how are you")
        [3, 3, 3]
    """
    chat = (
        [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    )
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return list(tokenizer.encode("\n".join(m["content"] for m in chat), add_special_tokens=False))


# Original bases of models whose adapter was merged for decoding, loaded once per reference.
_UNMERGED_BASES: dict[str, Any] = {}
_UNMERGED_LOCK = threading.Lock()


def baseline_lm(model: Any) -> tuple[Any, contextlib.AbstractContextManager]:
    """The plain causal LM a baseline of ``model`` runs, and the context to run it in.

    A Hugging Face LM is itself. A :class:`~multistream.model.MultiStreamLM` contributes its
    base model *without* its adapter (the baseline is the untouched base): a PEFT adapter is
    switched off for the call; an adapter that was merged for decoding cannot be, so the base
    is loaded once more from ``model.config.base_model``.
    """
    if not hasattr(model, "get_base_model") or not hasattr(model, "stream_embedding"):
        return model, contextlib.nullcontext()
    if getattr(model, "adapter_merged", False):
        reference = model.config.base_model
        if not reference:
            raise ValueError(
                "the model's adapter is merged and it records no base model to run the baseline with"
            )
        with _UNMERGED_LOCK:
            if reference not in _UNMERGED_BASES:
                from .loading import load_base

                base, _ = load_base(reference, dtype=model.dtype)
                _UNMERGED_BASES[reference] = base.to(model.device).eval()
        return _UNMERGED_BASES[reference], contextlib.nullcontext()
    wrapped = model.base_model
    off = wrapped.disable_adapter() if hasattr(wrapped, "disable_adapter") else contextlib.nullcontext()
    return model.get_base_model(), off


class SequentialBaseline:
    """Decode a prompt with a causal LM, one token per :meth:`step`, with a KV cache.

    Args:
        model: a Hugging Face causal LM, or a multi-stream model (its base runs, adapter off;
            see :func:`baseline_lm`).
        tokenizer: the tokenizer (answer text, end tokens).
        prompt_ids: the prompt (see :func:`chat_prompt_ids`).
        max_tokens: stop after this many tokens.
        temperature: 0 = greedy.
        top_p, top_k: nucleus and top-k filters (1.0 / 0 = off).
        seed: seed of this baseline's generator (None: the global RNG).

    Attributes:
        ids: answer token ids so far; ``text``: their text; ``reason``: ``"eos"`` or
        ``"max_tokens"`` once finished.

    Example:
        >>> baseline = SequentialBaseline(lm, tok, chat_prompt_ids(tok, "Hi"), 32)  # doctest: +SKIP
        >>> print("".join(baseline))                                              # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        max_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("the baseline prompt is empty; give it the question text")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_tokens = len(prompt_ids)
        self.max_tokens = max_tokens
        self.temperature = torch.tensor([float(temperature)])
        self.top_p = top_p
        self.top_k = top_k
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.ids: list[int] = []
        self.text = ""
        self.reason: str | None = None
        self._next_input = torch.tensor([list(prompt_ids)], dtype=torch.long)
        self._cache: Any = None
        eos = getattr(tokenizer, "eos_token_id", None)
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    def _logits(self) -> torch.Tensor:
        lm, context = baseline_lm(self.model)
        device = next(lm.parameters()).device
        with context, torch.inference_mode():
            out = lm(
                input_ids=self._next_input.to(device), cache=self._cache, use_cache=True, logits_to_keep=1
            )
        self._cache = out.cache
        return out.logits[:, -1:].float().cpu()  # [1, 1, V]

    def next_token(self) -> int | None:
        """Decode one token id; None once finished (:attr:`reason` says why)."""
        if self.reason is not None:
            return None
        token = int(
            sample_row(
                self._logits(),
                self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                silence_id=-1,  # no silence in a sequential answer
                generators=[self.generator],
            )[0, 0]
        )
        if token in self._eos_ids:
            self.reason = "eos"
            return None
        self.ids.append(token)
        self._next_input = torch.tensor([[token]], dtype=torch.long)
        if len(self.ids) >= self.max_tokens:
            self.reason = "max_tokens"
        return token

    def step(self) -> str | None:
        """Decode one token and return the new text (may be empty while a multi-byte character
        is incomplete), or None once finished."""
        if self.next_token() is None:
            # Flush what a split character held back (once), then report the end.
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True) if self.ids else ""
            if text == self.text:
                return None
            piece, self.text = text[len(self.text) :], text
            return piece
        # Decode the whole answer and emit the difference: single tokens may split characters.
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and self.reason is None:
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece

    def __iter__(self) -> Iterator[str]:
        while (piece := self.step()) is not None:
            if piece:
                yield piece
