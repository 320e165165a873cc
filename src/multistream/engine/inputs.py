"""Input queues of one session: tokens fed from any thread, read by the decode step.

:class:`InputQueues` owns its lock, so feeding (a WebSocket task, a typing thread) never reaches
into the batch that decodes the session. Which queued token enters a row is the input clock's
decision (:attr:`~multistream.engine.SessionConfig.clock`): ``lockstep`` takes the next token of
every input stream per row, ``realtime`` only once its arrival time has passed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..schema import StreamSchema

__all__ = ["InputQueues", "StreamInput", "tokenize_live"]


def tokenize_live(tokenizer: Any, text: str, schema: StreamSchema | None = None) -> list[int]:
    """Token ids of live input text, as the paper's pipeline makes them: ``" " + word`` per
    whitespace-separated word (so every word starts with a space, also the first).

    With a schema, a word that would contain the silence token is re-spelled without it, exactly
    as the training converters do (:func:`multistream.data.tokenize.tokenize_live_text`), so
    input text such as ``"16 - 3"`` never reads as a silent cell.
    """
    from ..data.tokenize import tokenize_live_text

    if schema is None:
        return tokenize_live_text(text, tokenizer)
    return tokenize_live_text(text, tokenizer, schema.silence_text, schema.silence_id)


@dataclass
class StreamInput:
    """Queued tokens of one input stream: ``(token id, arrival time)``, and whether it ended."""

    queue: deque[tuple[int, float]] = field(default_factory=deque)
    closed: bool = False


class InputQueues:
    """The input streams of one session, guarded by one lock of their own.

    Args:
        names: the session's input stream names, in schema order.
        columns: their stream indices in the schema (same order).
    """

    def __init__(self, names: Iterable[str], columns: Iterable[int]) -> None:
        self.streams: dict[str, StreamInput] = {n: StreamInput() for n in names}
        self.columns: dict[str, int] = dict(zip(self.streams, columns, strict=True))
        self.lock = threading.Lock()

    # Mapping-like access, so ``state.inputs["user"].queue`` keeps working.
    def __getitem__(self, name: str) -> StreamInput:
        return self.streams[name]

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def __iter__(self):
        return iter(self.streams)

    def __len__(self) -> int:
        return len(self.streams)

    def get(self, name: str) -> StreamInput | None:
        return self.streams.get(name)

    def values(self):
        return self.streams.values()

    def items(self):
        return self.streams.items()

    def feed(self, name: str, ids: list[int], start: float, interval: float) -> None:
        """Queue ``ids`` on stream ``name``; token k arrives at ``start + k * interval``."""
        with self.lock:
            inp = self.streams[name]
            if inp.closed:
                raise ValueError(
                    f"stream {name!r} is closed; feed before close(), or reopen({name!r}) it for a follow-up"
                )
            inp.queue.extend((int(t), start + k * interval) for k, t in enumerate(ids))

    def close(self, names: Iterable[str], eos: int | None, now: float) -> None:
        """Close streams; an open stream first queues ``eos`` when given."""
        with self.lock:
            for name in names:
                inp = self.streams[name]
                if eos is not None and not inp.closed:
                    inp.queue.append((int(eos), now))
                inp.closed = True

    def reopen(self, names: Iterable[str]) -> None:
        """Open closed streams again: they accept input and are no longer counted as ended.
        Tokens still queued (an end token queued by ``close``) are read first."""
        with self.lock:
            for name in names:
                self.streams[name].closed = False

    @property
    def awaiting(self) -> bool:
        """An input stream is still open but nothing is queued (see ``Session.awaiting_input``)."""
        with self.lock:
            inputs = list(self.streams.values())
            return bool(inputs) and not any(i.queue for i in inputs) and not all(i.closed for i in inputs)

    def take(self, now: float | None) -> tuple[dict[int, int], bool]:
        """Pop the tokens that enter the next row.

        Args:
            now: the ``realtime`` clock's time (a token enters once it has arrived), or None
                for ``lockstep`` (the next token of every stream enters).

        Returns:
            ``({stream index: token id}, drained)``; ``drained`` is True when every stream was
            closed and empty before this row (the row is the first, or a later, row without input).
        """
        out: dict[int, int] = {}
        with self.lock:
            drained = all(inp.closed and not inp.queue for inp in self.streams.values())
            for name, inp in self.streams.items():
                if inp.queue and (now is None or inp.queue[0][1] <= now):
                    out[self.columns[name]] = inp.queue.popleft()[0]
        return out, drained
