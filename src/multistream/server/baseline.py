"""The server's sequential-baseline lane: the base model answering a whole question.

The web page shows it beside the multi-stream lanes, so the difference is visible: a sequential
model starts only once the question is complete, a multi-stream model while it is being typed.
The decoding itself is :class:`multistream.sequential.SequentialBaseline` (one token per call,
so the decode scheduler interleaves it with the multi-stream rows on the same worker thread and
paces it at the same rate, one token per row); this module keeps the server's names for it.
"""

from __future__ import annotations

from typing import Any

from ..sequential import SequentialBaseline, chat_prompt_ids

__all__ = ["SequentialDecoder", "format_prompt"]


def format_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat, ending where the assistant's answer starts
    (:func:`multistream.sequential.chat_prompt_ids`)."""
    return chat_prompt_ids(tokenizer, messages)


class SequentialDecoder(SequentialBaseline):
    """:class:`~multistream.sequential.SequentialBaseline` with the server's positional signature.

    Args:
        model: the multi-stream model; its base without the adapter does the work.
        tokenizer: the tokenizer.
        prompt_ids: the prompt (see :func:`format_prompt`).
        max_tokens: stop after this many tokens.
        temperature: 0 = greedy.
        seed: random seed when sampling.
        top_p: nucleus filter (1.0 = off).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float = 1.0,
    ) -> None:
        super().__init__(
            model, tokenizer, prompt_ids, max_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
