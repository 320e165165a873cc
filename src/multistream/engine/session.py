"""Sessions and batches of sessions: inputs in, rows out, over a decode backend.

:class:`SessionBatch` keeps the sessions that decode together. Each :meth:`SessionBatch.step`
forwards every running session's previous row through the backend in one call (the step
planner of the model's layout says which tokens that is), then builds each session's next row:
input cells from its queues, generated cells sampled from the logits (spec §3.1). Sessions join
(:meth:`SessionBatch.add_session`) and leave (:meth:`SessionBatch.remove`) between any two steps:
the backend gives each session a slot of its own, so a session decodes exactly as it would
alone, whoever its neighbours are (continuous batching).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..grid import StreamGrid
from ..sampling import forced_silent_mask, penalty_ramp, sample_row, stream_penalties, summarise
from ..schema import Role, StreamSchema
from .backend import DecodeBackend
from .config import GenerationResult, Row, SessionConfig, SessionStopped
from .handle import SessionHandle
from .inputs import InputQueues, tokenize_live
from .planner import get_planner
from .stops import StopRules, resolve_end_tokens

if TYPE_CHECKING:
    from ..model import MultiStreamLM

__all__ = ["Session", "SessionBatch", "SessionState", "generate"]

# Stops a follow-up may undo: the model ended its answer; nothing outside ended the session.
_RESUMABLE = ("silence", "end_token")


@dataclass
class SessionState:
    """Everything one session knows; its KV state lives in its batch's backend (``slot``).

    Args:
        rows: every row so far (prefill included), token ids in schema order.
        num_prefill: how many of ``rows`` came from ``prefill``.
        pending: the last row was returned but is not in the KV cache yet (the next step
            forwards it).
        inputs: the input streams' queues (``inputs["user"].queue``, ``.closed``).
        inputs_closed_row: first row without input after every input stream closed.
        first_visible_output_row: first row where an output stream is not silent.
        silent_rows: consecutive all-silent generated rows since the inputs closed.
        ended: generated streams that emitted their end token.
        stop: stop reason once stopped.
        generator: this session's random generator (None = global RNG).
    """

    rows: list[tuple[int, ...]] = field(default_factory=list)
    num_prefill: int = 0
    pending: bool = False
    inputs: InputQueues = field(default_factory=lambda: InputQueues((), ()))
    inputs_closed_row: int | None = None
    first_visible_output_row: int | None = None
    silent_rows: int = 0
    ended: set[int] = field(default_factory=set)
    stop: str | None = None
    generator: torch.Generator | None = None

    @property
    def generated_rows(self) -> int:
        return len(self.rows) - self.num_prefill


def _as_ids(rows: StreamGrid | torch.Tensor | Sequence[Sequence[int]], schema: StreamSchema) -> torch.Tensor:
    if isinstance(rows, StreamGrid):
        if rows.schema.names != schema.names:
            raise ValueError(
                f"prefill grid streams {rows.schema.names} differ from the model's {schema.names}"
            )
        return rows.ids
    ids = torch.as_tensor(rows, dtype=torch.long)
    if ids.dim() != 2 or ids.shape[1] != schema.num_streams:
        raise ValueError(f"prefill rows must be [rows, {schema.num_streams} streams], got {tuple(ids.shape)}")
    return ids


class SessionBatch:
    """Several independent sessions decoded together, one batched forward per row.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer (cell text, live input, end tokens).
        size: number of sessions to start with (0 is allowed: add them with
            :meth:`add_session`).
        config: shared :class:`SessionConfig` (default: greedy, lockstep).
        now: time source of the ``realtime`` clock (default ``time.monotonic``).
        backend: the decode backend (default: :class:`~multistream.engine.hf_backend.HFBackend`
            over ``model``).

    Example:
        >>> batch = SessionBatch(model, tok, 2)                   # doctest: +SKIP
        >>> batch.sessions[0].feed("user", "Hi"); batch.sessions[0].close("user")  # doctest: +SKIP
        >>> rows = batch.step()   # one Row (or None once stopped) per session     # doctest: +SKIP
        >>> late = batch.add_session()   # joins on the next step                  # doctest: +SKIP
    """

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        # Layout B decodes interleaved blocks (spec §3.2) under the same API: one module of its own.
        if cls is SessionBatch and getattr(getattr(model, "config", None), "layout", "grid") == "blocks":
            from .blocks_decode import BlocksSessionBatch

            return BlocksSessionBatch(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: MultiStreamLM,
        tokenizer: Any,
        size: int,
        config: SessionConfig | None = None,
        now: Callable[[], float] | None = None,
        backend: DecodeBackend | None = None,
    ) -> None:
        if model.training:
            raise ValueError("the model is in training mode; call model.eval() before decoding")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SessionConfig()
        self.now = now or time.monotonic
        schema: StreamSchema = model.schema
        self.schema = schema
        self.silence_id = schema.require_silence_id()
        names = schema.names
        generated = {s.name: s.generated for s in schema.streams}
        self._device = device = model.device
        self._temperature = self.config.sampling.temperatures(names).to(device)
        is_output = torch.tensor([s.role is Role.OUTPUT for s in schema.streams])
        is_think = torch.tensor([s.role is Role.THINK for s in schema.streams])
        self._penalty = stream_penalties(self.config.sampling, is_output, is_think, names).to(device)
        self._forced = forced_silent_mask(self.config.sampling, names, generated).to(device)
        self._input_mask = torch.tensor([not s.generated for s in schema.streams], device=device)
        self._end_ids = resolve_end_tokens(self.config.end_tokens, schema, tokenizer)
        self.rules = StopRules(
            silence_id=self.silence_id,
            generated=tuple(schema.generated_indices),
            outputs=tuple(schema.output_indices),
            end_ids=self._end_ids,
            stop_silent_rows=self.config.stop_silent_rows,
            max_rows=self.config.max_rows,
        )
        # A model trained with hidden silence keys (MultiStreamConfig.hides_silence) decodes so too.
        hidden = self.config.skip_silence or bool(getattr(model.config, "hides_silence", False))
        self.planner = get_planner(model, skip_silence=hidden)
        self._generated = self.planner.generated.to(device)
        self.backend = backend or self._default_backend(max(size, 1))
        self._step_lock = threading.RLock()  # one step, join or leave at a time
        self._logits: torch.Tensor | None = None  # [slots, G, V] of each slot's last forward
        self._has_logits = torch.zeros(0, dtype=torch.bool, device=device)
        self._seeds = itertools.count(0)
        self.sessions: list[Session] = []
        for _ in range(size):
            self.add_session()

    def _default_backend(self, slots: int) -> DecodeBackend:
        if getattr(self.model, "column_mode", None) is not None:
            # Hybrid base (Qwen3.5): recurrent linear-attention state per stream and slot.
            from ..hybrid_decode import HybridBackend

            return HybridBackend(self.model, slots)
        from .hf_backend import HFBackend

        return HFBackend(
            self.model,
            slots,
            drop_hidden=self.config.drop_silence,
            fastpath=self.config.fastpath,
            fastpath_max_rows=self.config.fastpath_max_rows,
            pad_id=self.silence_id,
        )

    # -- membership ------------------------------------------------------------------------------

    def add_session(self) -> Session:
        """A new session in this batch; it takes part from the next :meth:`step` on (its first
        row, like any session's, has silent generated cells). Safe while other sessions run."""
        with self._step_lock:
            slot = self.backend.open_slot()
            seed = self.config.sampling.seed
            session = Session._member(self, slot, None if seed is None else seed + next(self._seeds))
            if self._has_logits.shape[0] <= slot:
                grown = torch.zeros(self.backend.num_slots, dtype=torch.bool, device=self._device)
                grown[: self._has_logits.shape[0]] = self._has_logits
                self._has_logits = grown
            self._has_logits[slot] = False
            self.sessions.append(session)
            return session

    def remove(self, session: Session, reason: str = "cancelled") -> None:
        """Take a session out of the batch and free its KV slot for the next one. Its rows stay
        readable; a session still running stops with ``reason``."""
        with self._step_lock:
            if session not in self.sessions:
                raise ValueError("the session is not a member of this batch")
            session.cancel(reason)
            self.sessions.remove(session)
            self.backend.free_slot(session.slot)
            self._has_logits[session.slot] = False

    def reopen(self, session: Session, stream: str | None = None, *, resume: bool = True) -> None:
        """Open a closed input stream of ``session`` again, for a follow-up turn in the same
        session: it takes new user input during (or, with ``resume``, after) an answer, and the
        model reads it in the context of everything it read and wrote so far.

        The session counts as not closed any more: the silence penalty and the silence stop
        rule wait for the next ``close``, and streams that wrote their end token may speak
        again. Waits for a step in progress (so no row is half before, half after). Reopening
        streams that are open, in a running session, does nothing.

        Args:
            session: a member of this batch.
            stream: the input stream to reopen; None reopens all of them.
            resume: also restart a session that stopped by ``silence`` or ``end_token`` (its
                KV slot is still held); False: a stopped session is an error.

        Raises:
            SessionStopped: the session stopped for another reason, left the batch, or
                ``resume`` is False and it stopped.
        """
        names = list(session.state.inputs) if stream is None else [stream]
        for name in names:
            session._check_input(name)
        with self._step_lock:
            state = session.state
            if session not in self.sessions:
                raise SessionStopped("the session left its batch (its KV slot is freed); start a new session")
            with state.inputs.lock:
                if state.stop is None and not any(state.inputs[n].closed for n in names):
                    return  # open and running: nothing to reopen
                if state.stop is not None and (not resume or state.stop not in _RESUMABLE):
                    raise SessionStopped(
                        f"the session stopped ({state.stop}); it cannot take a follow-up, start a new session"
                    )
                state.stop = None
                state.inputs_closed_row = None
                state.silent_rows = 0
                state.ended.clear()
            state.inputs.reopen(names)

    # -- prefill ---------------------------------------------------------------------------------

    def prefill(self, rows: Sequence[StreamGrid | torch.Tensor | Sequence[Sequence[int]] | None]) -> None:
        """Put given rows into each session's cache, in one forward for the whole batch.

        Args:
            rows: per session (in :attr:`sessions` order), its first rows (``StreamGrid``,
                LongTensor ``[R, C]`` or nested lists) or None for none. Only before the
                session's first row.
        """
        with self._step_lock:
            sessions = list(self.sessions)
            if len(rows) != len(sessions):
                raise ValueError(f"prefill got {len(rows)} entries for {len(sessions)} sessions")
            grids = [None if r is None else _as_ids(r, self.schema) for r in rows]
            for session, g in zip(sessions, grids, strict=True):
                if g is not None and session.state.rows:
                    raise ValueError(
                        f"session {session.slot} already has rows; prefill only before the first step"
                    )
            chosen = [(s, g) for s, g in zip(sessions, grids, strict=True) if g is not None and g.shape[0]]
            if not chosen:
                return
            with torch.inference_mode():
                self._forward([s for s, _ in chosen], [g for _, g in chosen], [0] * len(chosen))
            for session, g in chosen:
                session.state.rows.extend(tuple(r) for r in g.tolist())
                session.state.num_prefill = g.shape[0]

    # -- one row ---------------------------------------------------------------------------------

    def step(self) -> list[Row | None]:
        """Forward every session's last row, then build each session's next row.

        Returns:
            One :class:`Row` per member of :attr:`sessions` (as it was when the step began),
            None for sessions that had already stopped.
        """
        with self._step_lock:
            sessions = list(self.sessions)
            if all(s.state.stop is not None for s in sessions):
                raise SessionStopped("every session of this batch has stopped; read .stop for why")
            with torch.inference_mode():
                pending = [s for s in sessions if s.state.pending and s.state.stop is None]
                if pending:
                    rows = [torch.tensor([s.state.rows[-1]]) for s in pending]
                    self._forward(pending, rows, [len(s.state.rows) - 1 for s in pending])
                    for s in pending:
                        s.state.pending = False
                return self._next_rows(sessions)

    def _forward(self, sessions: list[Session], rows: list[torch.Tensor], starts: list[int]) -> None:
        slots = torch.tensor([s.slot for s in sessions], dtype=torch.long)
        logits = self.backend.append(self.planner.plan(slots, rows, starts))  # [N, G, V]
        if self._logits is None or self._logits.shape[0] < self.backend.num_slots:
            grown = logits.new_zeros(self.backend.num_slots, *logits.shape[1:])
            if self._logits is not None:
                grown[: self._logits.shape[0]] = self._logits
            self._logits = grown
        index = slots.to(self._device)
        self._logits[index] = logits
        self._has_logits[index] = True

    def _next_rows(self, sessions: list[Session]) -> list[Row | None]:
        C = self.schema.num_streams
        device = self._device
        active = [s for s in sessions if s.state.stop is None]
        N = len(active)
        # Input cells first: they decide whether the inputs closed, which sets the penalty.
        inputs = torch.full((N, C), self.silence_id, dtype=torch.long)
        since_close = torch.full((N,), -1, dtype=torch.long)
        ended = torch.zeros(N, C, dtype=torch.bool)
        clock_now = self.now() if self.config.clock == "realtime" else None
        for i, s in enumerate(active):
            state = s.state
            row_index = len(state.rows)
            taken, drained = state.inputs.take(clock_now)
            if drained and state.inputs_closed_row is None:
                state.inputs_closed_row = row_index
            for c, token in taken.items():
                inputs[i, c] = token
            if state.inputs_closed_row is not None:
                since_close[i] = row_index - state.inputs_closed_row
            for c in state.ended:
                ended[i, c] = True
        slots = torch.tensor([s.slot for s in active], dtype=torch.long, device=device)
        forced = self._forced[None].expand(N, C) | ended.to(device)
        summaries = None
        if self._logits is None:
            generated = torch.full((N, C), self.silence_id, dtype=torch.long, device=device)
        else:
            # Sessions without a forwarded row (no prefill, first step) start with silence.
            forced = forced | ~self._has_logits[slots][:, None]
            logits = self._logits.new_zeros(N, C, self._logits.shape[-1])  # [N, C, V]
            logits[:, self._generated] = self._logits[slots]  # input streams' rows stay 0, never used
            penalty = (
                self._penalty[None]
                * penalty_ramp(since_close, self.config.sampling.penalty_ramp_rows).to(device)[:, None]
            )  # [N, C]
            generated = sample_row(
                logits,
                self._temperature,
                top_k=self.config.sampling.top_k,
                top_p=self.config.sampling.top_p,
                silence_id=self.silence_id,
                silence_penalty=penalty,
                forced_silent=forced,
                generators=[s.state.generator for s in active],
            )
            if self.config.sampling.summaries:
                summaries = summarise(logits)
        row_ids = torch.where(self._input_mask[None], inputs.to(device), generated).tolist()  # [N, C]
        summary_lists = None
        if summaries is not None:
            summary_lists = (
                summaries.entropy.tolist(),
                summaries.top1_id.tolist(),
                summaries.top1_prob.tolist(),
                self._has_logits[slots].tolist(),
            )
        out: dict[int, Row] = {
            id(s): self._finish_row(s, tuple(row_ids[i]), summary_lists, i) for i, s in enumerate(active)
        }
        return [out.get(id(s)) for s in sessions]

    def _finish_row(
        self, session: Session, ids: tuple[int, ...], summary_lists: tuple[list, ...] | None, i: int
    ) -> Row:
        state = session.state
        index = len(state.rows)
        state.rows.append(ids)
        state.pending = True
        stop = self.rules.observe(
            state, index, ids, state.inputs_closed_row is not None, state.generated_rows
        )
        with state.inputs.lock:
            if state.stop is None:
                state.stop = stop
        schema = self.schema
        silence = self.silence_id
        text = {
            name: (None if ids[c] == silence else self.tokenizer.decode([ids[c]]))
            for c, name in enumerate(schema.names)
        }
        summaries = None
        if summary_lists is not None and summary_lists[3][i]:
            entropy, top1_id, top1_prob, _ = summary_lists
            summaries = {
                schema.names[c]: {
                    "entropy": entropy[i][c],
                    "top1_id": top1_id[i][c],
                    "top1_prob": top1_prob[i][c],
                }
                for c in schema.generated_indices
            }
        return Row(index=index, ids=ids, text=text, stop=state.stop, summaries=summaries)

    # -- memory ----------------------------------------------------------------------------------

    def cache_bytes(self) -> int:
        """Bytes held by the KV cache in use (all layers, keys and values, padding included)."""
        return self.backend.cache_bytes()

    def cached_tokens(self) -> list[int]:
        """Per session, how many cached tokens are visible keys (excludes padding)."""
        return [self.backend.cached_tokens(s.slot) for s in self.sessions]


class Session(SessionHandle):
    """One live conversation: feed inputs, step rows, read texts.

    A session made directly owns a private batch of one; sessions of a :class:`SessionBatch`
    are stepped through their batch.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer.
        config: a :class:`SessionConfig` (default: greedy, lockstep).
        now: time source of the ``realtime`` clock.

    Example:
        >>> session = Session(model, tok)                  # doctest: +SKIP
        >>> session.feed("user", "What is 2+2?")           # doctest: +SKIP
        >>> session.close("user")                          # doctest: +SKIP
        >>> for row in session:                            # doctest: +SKIP
        ...     print(row.index, row.text)
    """

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cls is Session and getattr(getattr(model, "config", None), "layout", "grid") == "blocks":
            from .blocks_decode import BlocksSession

            return BlocksSession(model, *args, **kwargs)  # Layout B: see SessionBatch.__new__
        return super().__new__(cls)

    _batch_class = SessionBatch

    @classmethod
    def _member(cls, batch: SessionBatch, slot: int, seed: int | None) -> Session:
        schema = batch.schema
        inputs = InputQueues(
            [schema.streams[c].name for c in schema.input_indices], list(schema.input_indices)
        )
        state = SessionState(inputs=inputs)
        if seed is not None:
            state.generator = torch.Generator(device=batch.model.device).manual_seed(seed)
        session = cls.__new__(cls)
        session._attach(batch, slot, state, standalone=False)
        return session

    # -- inputs ----------------------------------------------------------------------------------

    def _check_input(self, stream: str) -> None:
        self.batch.schema.index(stream)  # unknown names fail with the list of streams
        if stream not in self.state.inputs:
            raise ValueError(
                f"stream {stream!r} is generated, not an input; inputs: {list(self.state.inputs)}"
            )

    def feed(
        self,
        stream: str,
        text_or_ids: str | Sequence[int],
        *,
        at: float | None = None,
        interval: float = 0.0,
    ) -> int:
        """Queue input for an input stream; safe from any thread, also while a step runs.

        Args:
            stream: name of an input stream.
            text_or_ids: text (tokenised with :func:`tokenize_live`: whole words) or token ids.
            at: arrival time of the first token for the ``realtime`` clock (default: now).
            interval: seconds between successive tokens' arrivals (``realtime`` only).

        Returns:
            The number of tokens queued.
        """
        self._check_input(stream)
        ids = (
            tokenize_live(self.batch.tokenizer, text_or_ids, self.batch.schema)
            if isinstance(text_or_ids, str)
            else list(text_or_ids)
        )
        self.state.inputs.feed(stream, ids, self.batch.now() if at is None else at, interval)
        return len(ids)

    def close(self, stream: str | None = None, end_token: bool | None = None) -> None:
        """Mark an input stream (default: all) as finished; queued tokens are still read.
        Once every input is closed and read, the silence penalty ramps in and the silence stop
        rule may fire.

        Args:
            stream: the input stream to close; None closes all of them.
            end_token: queue the tokenizer's end token (EOS) first; default
                :attr:`SessionConfig.close_with_end_token`.
        """
        names = list(self.state.inputs) if stream is None else [stream]
        for name in names:
            self._check_input(name)
        if end_token is None:
            end_token = self.batch.config.close_with_end_token
        eos = getattr(self.batch.tokenizer, "eos_token_id", None) if end_token else None
        if end_token and eos is None:
            raise ValueError("close(end_token=True) needs a tokenizer with an eos_token_id")
        self.state.inputs.close(names, eos, self.batch.now())

    def reopen(self, stream: str | None = None, *, resume: bool = True) -> None:
        """Open a closed input stream again for a follow-up turn: what is fed next is read as
        new user input in this same session, during or after the answer (see
        :meth:`SessionBatch.reopen`).

        Args:
            stream: the input stream; None reopens every input stream.
            resume: also restart a session that stopped by ``silence`` or ``end_token``.

        Example:
            >>> session.close("user")                          # doctest: +SKIP
            >>> session.step(); session.step()                 # the answer streams  # doctest: +SKIP
            >>> session.reopen("user"); session.feed("user", "and why?")             # doctest: +SKIP
        """
        self.batch.reopen(self, stream, resume=resume)

    @property
    def awaiting_input(self) -> bool:
        """True while an input stream is still open but no input token is queued: under the
        lockstep clock the next row would read silence where the user is only slow to type, so
        live front-ends wait for input (rows then follow the typing, as in training grids)."""
        return self.state.inputs.awaiting

    # -- decoding --------------------------------------------------------------------------------

    def prefill(self, rows: StreamGrid | torch.Tensor | Sequence[Sequence[int]]) -> None:
        """Put given rows (``[R, C]``) into the cache in one forward, before the first step."""
        self._require_standalone("prefill")
        self.batch.prefill([rows])

    def step(self) -> Row:
        """Compute and return the next row.

        Raises:
            SessionStopped: the session had stopped (see :attr:`stop`); rows stay in :attr:`rows`.
        """
        self._require_standalone("step")
        if self.state.stop is not None:
            raise SessionStopped(f"the session stopped ({self.state.stop}); its rows are in .rows")
        row = self.batch.step()[0]
        assert row is not None  # a running standalone session always yields its row
        return row

    # -- results ---------------------------------------------------------------------------------

    def grid(self) -> StreamGrid:
        """All rows so far as a grid."""
        C = self.batch.schema.num_streams
        ids = torch.tensor(self.state.rows, dtype=torch.long).reshape(-1, C)
        return StreamGrid(ids, self.batch.schema, {"stop": self.state.stop})

    def texts(self) -> dict[str, str]:
        """Full text of every stream so far (silence removed)."""
        return self.grid().stream_texts(self.batch.tokenizer)


def generate(
    model: MultiStreamLM,
    tokenizer: Any | None = None,
    inputs: Mapping[str, str | Sequence[int]] | None = None,
    *,
    prefill: StreamGrid | torch.Tensor | None = None,
    on_row: Callable[[Row], None] | None = None,
    config: SessionConfig | None = None,
    **options: Any,
) -> GenerationResult:
    """Decode one session to its end: feed ``inputs`` (lockstep), close them, step until a
    stop rule fires.

    Args:
        model: the multi-stream model.
        tokenizer: its tokenizer (default: the base model's, from ``model.config.base_model``).
        inputs: text or token ids per input stream; inputs not given stay silent.
        prefill: rows to start from.
        on_row: called with every new row as it is produced (for live display).
        config: a full :class:`SessionConfig`; or give its fields (and sampling fields) as
            keyword ``options``.

    Returns:
        :class:`GenerationResult`.
    """
    if config is not None and options:
        raise TypeError(f"pass either config= or keyword options, not both (got {sorted(options)})")
    config = config or SessionConfig.from_kwargs(**options)
    if tokenizer is None:
        if not model.config.base_model:
            raise ValueError(
                "no tokenizer given and the model has no base_model to take one from; pass tokenizer="
            )
        from ..base_models import load_tokenizer

        tokenizer = load_tokenizer(model.config.base_model)
    session = Session(model, tokenizer, config)
    if prefill is not None:
        session.prefill(prefill)
    for name, value in (inputs or {}).items():
        session.feed(name, value)
    session.close()
    rows = []
    for row in session:
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return GenerationResult(
        texts=session.texts(),
        grid=session.grid(),
        rows=rows,
        stop=session.stop,
        first_visible_output_row=session.state.first_visible_output_row,
        inputs_closed_row=session.state.inputs_closed_row,
    )
