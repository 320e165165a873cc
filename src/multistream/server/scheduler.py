"""One worker thread decodes every live session of a server, batching sessions together.

The model is used by this thread only. Sessions with the same settings share one running
:class:`~multistream.engine.SessionBatch` (up to ``max_batch`` of them) and are decoded in one
forward per row; batches and sequential-baseline jobs take turns. Batching is continuous: a
session that opens while a batch with its settings runs joins that batch and gets its first row
on the batch's next row, and a session that ends leaves at once, freeing its KV slot for the
next one (the engine gives every session a slot of its own, so neighbours never change its
tokens). Rows are paced: a batch steps at most once per ``row_interval_s`` (a live display needs
a steady rhythm, and the sequential baseline gets the same pace, one token per row time, so the
two lanes compare fairly).

Public behaviour, for front-ends and the server's limits:

* :meth:`DecodeScheduler.open` admits a session or raises :class:`SessionLimitError` at once
  when ``max_sessions`` sessions and baselines are live (callers map it to HTTP 429 / a
  protocol error); the returned future resolves on the worker within a row's time.
* :meth:`LiveSession.cancel` (a client left, an idle timeout) ends a session before its next
  row; ``on_stop`` then fires once with reason ``client``.
* :meth:`DecodeScheduler.run_baseline` runs a sequential baseline under the same limit.

Callbacks (``on_row``, ``on_stop``, ...) run on the worker thread: keep them short and
thread-safe (the WebSocket glue hands events to its event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine import Row, Session, SessionBatch, SessionConfig, SessionStopped
from .baseline import SequentialDecoder

__all__ = ["DecodeScheduler", "LiveSession", "SchedulerConfig", "SessionLimitError", "SessionListener"]

# Stop reason of a session ended from outside (protocol ``stop`` message or a disconnect).
STOP_CLIENT = "client"
STOP_ERROR = "error"


class SessionLimitError(RuntimeError):
    """The server runs as many live sessions as it may (``max_sessions``)."""


@dataclass
class SchedulerConfig:
    """How the worker batches and paces sessions.

    Args:
        max_sessions: live sessions at once, over all batches (an ``open`` beyond it fails).
        max_batch: most sessions decoded in one forward (one running batch).
        row_interval_s: least time between two rows of a session; 0 = as fast as the model.
        gather_s: how long the first session of a new batch waits for others to start with it
            (later ones join the running batch on its next row).
    """

    max_sessions: int = 16
    max_batch: int = 16
    row_interval_s: float = 0.1
    gather_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.max_batch < 1:
            raise ValueError(
                f"max_sessions and max_batch must be >= 1, got {self.max_sessions}, {self.max_batch}"
            )
        if self.row_interval_s < 0 or self.gather_s < 0:
            raise ValueError(
                f"row_interval_s and gather_s must be >= 0, got {self.row_interval_s}, {self.gather_s}"
            )


class LiveSession:
    """A session handed out by :meth:`DecodeScheduler.open`: feed it, close it, cancel it.

    Its start, rows and end reach the :class:`SessionListener` given to ``open``.
    """

    def __init__(
        self, session_id: str, session: Session, wait_for_input: bool, wake: Callable[[], None]
    ) -> None:
        self.id = session_id
        self.engine_session = session
        self.wait_for_input = wait_for_input
        self.cancelled = False
        self._wake = wake

    def feed(self, stream: str, text: str) -> int:
        """Queue text for an input stream (thread-safe); returns the number of tokens queued."""
        count = self.engine_session.feed(stream, text)
        self._wake()  # a batch waiting for input may go on
        return count

    def close(self, stream: str | None = None) -> None:
        """Finish an input stream (None: all)."""
        self.engine_session.close(stream)
        self._wake()

    def reopen(self, stream: str | None = None) -> None:
        """Open a closed input stream again for a follow-up while the session runs (waits for
        a row in progress). A session that stopped cannot: it has left its batch.

        Raises:
            SessionStopped: the session was cancelled or stopped.
            ValueError: the stream is unknown, or the model's layout cannot reopen (Layout B).
        """
        if self.cancelled:
            raise SessionStopped("the session was stopped; open a new session")
        self.engine_session.reopen(stream, resume=False)
        self._wake()

    def cancel(self) -> None:
        """Stop the session before its next row; ``on_stop`` then fires with reason ``client``."""
        self.cancelled = True
        self._wake()

    @property
    def ready(self) -> bool:
        """Whether a row may be decoded now (see ``wait_for_input`` in :meth:`DecodeScheduler.open`)."""
        return self.cancelled or not (self.wait_for_input and self.engine_session.awaiting_input)

    @property
    def rows(self) -> int:
        return self.engine_session.state.generated_rows


class SessionListener(Protocol):
    """Receives a live session's events, on the worker thread, in this order: ``on_start``
    once, ``on_row`` per row, ``on_stop`` once (reason, and an error message or None)."""

    def on_start(self, live: LiveSession) -> None: ...

    def on_row(self, live: LiveSession, row: Row) -> None: ...

    def on_stop(self, live: LiveSession, reason: str, error: str | None) -> None: ...


@dataclass
class _Opening:
    config: SessionConfig
    listener: SessionListener
    future: Future[LiveSession]
    since: float
    wait_for_input: bool


@dataclass
class _Member:
    live: LiveSession
    listener: SessionListener
    done: bool = False


@dataclass
class _RunningBatch:
    batch: SessionBatch
    config: SessionConfig
    members: list[_Member]
    due: float = 0.0

    @property
    def ready(self) -> bool:
        """A row is decoded once any running member is ready; a member still waiting for input
        then reads silence (batches are rarely shared by a slow typist and others)."""
        return any(m.live.ready for m in self.members if not m.done)


@dataclass
class _BaselineJob:
    decoder: SequentialDecoder
    on_token: Callable[[int, str], None]
    on_end: Callable[[str, int, str], None]
    due: float = 0.0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Work:
    openings: list[_Opening] = field(default_factory=list)
    batches: list[_RunningBatch] = field(default_factory=list)
    baselines: list[_BaselineJob] = field(default_factory=list)


class DecodeScheduler:
    """Owns the model on one worker thread; hands out live sessions.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer.
        config: batching and pacing (:class:`SchedulerConfig`).
        start_rows: token ids ``[rows][C]`` every session is prefilled with when it joins its
            batch (a warm start of the model's decoding presets,
            :meth:`~multistream.presets.DecodingPresets.start_rows`); None = none.

    Example:
        >>> scheduler = DecodeScheduler(model, tok).start()                       # doctest: +SKIP
        >>> live = scheduler.open(SessionConfig(), listener).result()             # doctest: +SKIP
        >>> live.feed("user", "Hello there"); live.close()                        # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: SchedulerConfig | None = None,
        start_rows: list[list[int]] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SchedulerConfig()
        self.start_rows = start_rows
        self._work = _Work()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._running = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> DecodeScheduler:
        """Start the worker thread (idempotent); returns self."""
        with self._cond:
            if self._thread is None:
                self._running = True
                self._thread = threading.Thread(target=self._loop, name="multistream-decode", daemon=True)
                self._thread.start()
        return self

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the worker; live sessions end with reason ``client``."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # -- requests ----------------------------------------------------------------------------

    @property
    def live_sessions(self) -> int:
        """Sessions that are open or opening, and sequential baselines running."""
        with self._cond:
            w = self._work
            return sum(not m.done for b in w.batches for m in b.members) + len(w.openings) + len(w.baselines)

    def _check_capacity(self) -> None:
        """Raise :class:`SessionLimitError` when ``max_sessions`` are live (lock held)."""
        if self.live_sessions >= self.config.max_sessions:
            raise SessionLimitError(
                f"the server already runs {self.config.max_sessions} live sessions and baselines "
                "(max_sessions); try again when one ends, or start the server with a larger --max-sessions"
            )

    def open(
        self, config: SessionConfig, listener: SessionListener, wait_for_input: bool = True
    ) -> Future[LiveSession]:
        """Ask for a new session.

        Args:
            config: its decoding settings; sessions with equal settings may share a batch.
            listener: receives its start, rows and end (on the worker thread).
            wait_for_input: decode no row while an input stream is open and nothing is queued
                (:attr:`~multistream.engine.Session.awaiting_input`), so rows follow the typing;
                False: rows run at the scheduler's pace and missing input is silence.

        Returns:
            A future that resolves to the :class:`LiveSession` once it has joined a batch.

        Raises:
            SessionLimitError: ``max_sessions`` sessions are live.
        """
        if self._thread is None:
            raise RuntimeError("the scheduler is not running; call start() first")
        future: Future[LiveSession] = Future()
        with self._cond:  # a reentrant lock: _check_capacity takes it again
            self._check_capacity()
            self._work.openings.append(_Opening(config, listener, future, time.monotonic(), wait_for_input))
            self._cond.notify_all()
        return future

    def run_baseline(
        self,
        decoder: SequentialDecoder,
        on_token: Callable[[int, str], None],
        on_end: Callable[[str, int, str], None],
    ) -> _BaselineJob:
        """Decode a sequential baseline, one token per row interval, on the worker thread.

        Args:
            decoder: the prepared :class:`~multistream.server.baseline.SequentialDecoder`.
            on_token: called with ``(index, text piece)`` per token.
            on_end: called once with ``(reason, token count, full text)``.

        Returns:
            A job handle with ``cancel()``.

        Raises:
            SessionLimitError: ``max_sessions`` sessions and baselines are live.
        """
        job = _BaselineJob(decoder, on_token, on_end)
        with self._cond:
            self._check_capacity()
            self._work.baselines.append(job)
            self._cond.notify_all()
        return job

    # -- worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    break
                now = time.monotonic()
                # Once the oldest opening has waited gather_s, every waiting one starts with it.
                ready: list[_Opening] = []
                if self._work.openings and now - self._work.openings[0].since >= self.config.gather_s:
                    ready, self._work.openings = self._work.openings, []
            for group in self._group(ready):
                self._start_batch(group)
            with self._cond:
                batches, baselines = list(self._work.batches), list(self._work.baselines)
            now = time.monotonic()
            for running in batches:
                self._end_cancelled(running)
                if running.due <= now and running.ready:
                    running.due = now + self.config.row_interval_s
                    self._step_batch(running)
            for job in baselines:
                if job.due <= now:
                    job.due = now + self.config.row_interval_s
                    self._step_baseline(job)
            for running in batches:
                self._leave(running)
            with self._cond:
                self._work.batches = [b for b in self._work.batches if b.members]
                self._work.baselines = [j for j in self._work.baselines if j.decoder.reason is None]
                if self._running:  # shutdown() may have notified while this thread was stepping
                    self._cond.wait(self._idle_wait())
        self._end_all()

    def _idle_wait(self) -> float:
        """Seconds until something is due (called with the lock held)."""
        w = self._work
        if not (w.openings or w.batches or w.baselines):
            return 1.0
        now = time.monotonic()
        # A batch waiting for input has nothing due: feed(), close() and cancel() wake the loop.
        dues = [b.due for b in w.batches if b.ready] + [j.due for j in w.baselines]
        if not dues and not w.openings:
            return 1.0
        dues += [o.since + self.config.gather_s for o in w.openings[:1]]
        return max(0.0, min(dues) - now)

    def _group(self, openings: list[_Opening]) -> list[list[_Opening]]:
        """Split ready openings into groups of equal settings and at most ``max_batch``."""
        groups: list[list[_Opening]] = []
        for opening in openings:
            for group in groups:
                if group[0].config == opening.config and len(group) < self.config.max_batch:
                    group.append(opening)
                    break
            else:
                groups.append([opening])
        return groups

    def _start_batch(self, group: list[_Opening]) -> None:
        """Admit a group of equal settings: into a running batch with room, else a new one."""
        config = group[0].config
        running = next(
            (
                b
                for b in self._work.batches
                if b.config == config and len(b.members) + len(group) <= self.config.max_batch
            ),
            None,
        )
        fresh: list[Session] = []
        if running is None:
            try:
                batch = SessionBatch(self.model, self.tokenizer, len(group), config)
            except Exception as e:  # a bad setting reaches here only if it passed validation
                for opening in group:
                    opening.future.set_exception(e)
                return
            fresh = list(batch.sessions)
            running = _RunningBatch(batch, config, [], due=time.monotonic())
            with self._cond:
                self._work.batches.append(running)
        # Joining a running batch: the session's first row comes with the batch's next row.
        sessions = [fresh.pop(0) if fresh else running.batch.add_session() for _ in group]
        if self.start_rows:
            # The newcomers' start rows, in one forward; members already running get none.
            joining = {id(s) for s in sessions}
            try:
                running.batch.prefill(
                    [self.start_rows if id(s) in joining else None for s in running.batch.sessions]
                )
            except Exception as e:  # e.g. start rows that do not fit the model: nobody starts
                for session in sessions:
                    running.batch.remove(session, STOP_ERROR)
                for opening in group:
                    opening.future.set_exception(e)
                return
        members = []
        for opening, session in zip(group, sessions, strict=True):
            live = LiveSession(f"s{next(self._ids)}", session, opening.wait_for_input, self._wake)
            members.append(_Member(live, opening.listener))
        running.members.extend(members)
        for member in members:
            member.listener.on_start(member.live)  # before any row: "ready" precedes rows
        for opening, member in zip(group, members, strict=True):
            opening.future.set_result(member.live)

    def _finish(self, member: _Member, reason: str, message: str | None = None) -> None:
        if not member.done:
            member.done = True
            member.listener.on_stop(member.live, reason, message)

    def _leave(self, running: _RunningBatch) -> None:
        """Take finished members out of their batch, freeing their KV slots for newcomers."""
        for member in [m for m in running.members if m.done]:
            running.members.remove(member)
            session = member.live.engine_session
            if session in running.batch.sessions:
                running.batch.remove(session, STOP_CLIENT)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _end_cancelled(self, running: _RunningBatch) -> None:
        for member in running.members:
            if member.live.cancelled and not member.done:
                member.live.engine_session.cancel(STOP_CLIENT)  # the batch skips it from now on
                self._finish(member, STOP_CLIENT)

    def _step_batch(self, running: _RunningBatch) -> None:
        if all(m.done for m in running.members):
            return
        by_session = {id(m.live.engine_session): m for m in running.members}
        sessions = list(running.batch.sessions)
        try:
            rows = running.batch.step()
        except Exception as e:  # the session cannot go on; tell its clients why
            for member in running.members:
                member.live.engine_session.cancel(STOP_ERROR)
                self._finish(member, STOP_ERROR, f"decoding failed: {type(e).__name__}: {e}")
            return
        for session, row in zip(sessions, rows, strict=True):
            member = by_session.get(id(session))
            if row is None or member is None or member.done:
                continue
            member.listener.on_row(member.live, row)
            if row.stop is not None:
                self._finish(member, row.stop)

    def _step_baseline(self, job: _BaselineJob) -> None:
        decoder = job.decoder
        if job.cancelled:
            decoder.reason = "cancelled"
        else:
            try:
                piece = decoder.step()
            except Exception:  # keep the worker alive for the other sessions
                decoder.reason, piece = STOP_ERROR, None
            if piece is not None:
                job.on_token(len(decoder.ids) - 1, piece)
        if decoder.reason is not None:
            job.on_end(decoder.reason, len(decoder.ids), decoder.text)

    def _end_all(self) -> None:
        with self._cond:
            work, self._work = self._work, _Work()
        for opening in work.openings:
            opening.future.cancel()
        for running in work.batches:
            for member in running.members:
                self._finish(member, STOP_CLIENT)
        for job in work.baselines:
            job.on_end("cancelled", len(job.decoder.ids), job.decoder.text)
