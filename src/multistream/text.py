"""What a front-end shows of a model's streams: the answer end tokens and a row's visible text.

Shared by the terminal chat, the web session and the OpenAI route, so every front-end hides and
stops on the same end token (one rule, one place, no front-end importing another).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .schema import Role, StreamSchema

if TYPE_CHECKING:
    from .engine import Row

__all__ = ["answer_end_tokens", "visible_text"]


def answer_end_tokens(schema: StreamSchema, tokenizer: Any) -> dict[str, int]:
    """The end token of every output stream: the tokenizer's eos, which the data converters put
    after every answer (``data/convert.py``), as the evaluation runners use it too. The engine
    then ends a stream at it, and a session stops once every answer has ended.

    Args:
        schema: the model's streams.
        tokenizer: its tokenizer.

    Returns:
        ``{output stream name: eos id}``; empty when the tokenizer has no eos token.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int):
        return {}
    return {s.name: eos for s in schema.streams if s.role is Role.OUTPUT}


def visible_text(row: Row, end_tokens: dict[str, int]) -> dict[str, str | None]:
    """A row's cell texts for display: an end token is shown as nothing (``None``), like
    silence; the session's stop reason ``end_token`` says that the answer ended."""
    names = list(row.text)
    return {
        name: None if end_tokens.get(name) == row.ids[c] else row.text[name] for c, name in enumerate(names)
    }
