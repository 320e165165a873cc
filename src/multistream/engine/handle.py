"""What every layout's live session shares: its place in a batch, cancelling, iterating, results.

:class:`~multistream.engine.Session` (Layout A rows) and
:class:`~multistream.engine.blocks_decode.BlocksSession` (Layout B steps) differ in how they take
input and build their rows; this base keeps the rest in one place. A subclass's ``state`` has
``inputs`` (an :class:`~multistream.engine.inputs.InputQueues`, whose lock guards ``stop``),
``stop`` and ``rows``, and the subclass provides ``step()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

from .config import Row


class SessionHandle:
    """A session's handle on its batch slot and state (shared by every layout)."""

    # The batch class a standalone session runs in (a batch of one).
    _batch_class: ClassVar[type]
    batch: Any
    slot: int
    state: Any
    _standalone: bool

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: Any | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        """A standalone session: a batch of one that this handle steps itself."""
        batch = self._batch_class(model, tokenizer, 1, config, now)
        member = batch.sessions[0]
        self._attach(batch, member.slot, member.state, standalone=True)
        batch.sessions[0] = self

    def _attach(self, batch: Any, slot: int, state: Any, standalone: bool) -> None:
        self.batch = batch
        self.slot = slot
        self.state = state
        self._standalone = standalone

    def step(self) -> Row:
        raise NotImplementedError

    def cancel(self, reason: str = "cancelled") -> None:
        """End the session from outside (a client left, a user pressed stop). Rows produced so
        far stay in :attr:`rows`; a batch keeps stepping its other sessions and skips this one.

        Args:
            reason: the stop reason recorded in :attr:`stop` (e.g. ``"client"``).
        """
        with self.state.inputs.lock:
            if self.state.stop is None:
                self.state.stop = reason

    def _require_standalone(self, what: str) -> None:
        if not self._standalone:
            raise RuntimeError(f"this session belongs to a SessionBatch; call batch.{what}() instead")

    def __iter__(self) -> Iterator[Row]:
        while self.state.stop is None:
            yield self.step()

    async def __aiter__(self) -> AsyncIterator[Row]:
        # Steps run in a worker thread so feeding tasks on the event loop keep running.
        while self.state.stop is None:
            yield await asyncio.to_thread(self.step)

    @property
    def stop(self) -> str | None:
        return self.state.stop

    @property
    def rows(self) -> list[tuple[int, ...]]:
        return list(self.state.rows)
