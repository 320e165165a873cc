"""Layout B decoding: the interleaved streaming decode of paper-spec §3.2, under the Session API.

A Layout B model (``model.config.layout == "blocks"``) reads a system block, a user block that
arrives token by token, and writes H assistant heads. A step (a :class:`~multistream.engine.Row`)
is one ``y``:

1. The first step prefills, in one forward: the system block (what was fed to ``system``
   before the first step, ordinary BPE, or :data:`~multistream.data.blocks.DEFAULT_SYSTEM`,
   framed ``<|im_start|>system\\n ... <|im_end|>``), the user prefix ``<|im_start|>user\\n`` and
   every head's prefix ``<|im_start|>assistant\\n``, at ``y = 0 ..`` and ``y0 ..``. Each head's
   first token is sampled from its last prefix token (it sees no user content yet).
2. Every later step forwards the previous row: the next user token (fed with ``feed``, one per
   step, live tokenisation; ``close`` ends the block with ``<|im_end|>``) at the user's own
   ``y``, and the last sampled token of every running head at that head's ``y``; then it samples
   each running head's next token from its own new position.
3. A head stops at ``<|im_end|>``; when the last head stops every head stops (spec §3.2), and
   the session stops (``end_token``), also while the user still types. ``max_rows`` caps steps.

Visibility is the decode-time y-rule of the backend (:mod:`~multistream.engine.backend`): a new
token sees cached or new keys with a strictly smaller ``y`` and itself. With every block's
positions counted as in training (:class:`~multistream.layout.blocks.BlocksLayout`) and one
user token per step, every key a query sees in training is in the cache (or in the same
forward) when it is computed, so the cached decode equals the full forward of the final
example (``tests/test_blocks_decode.py``). ``include_im_end_in_cross_channel=False`` hides
``<|im_end|>`` keys (exact: no later token of their own block exists).
``allow_assistant_cross_channel=False`` needs per-stream visibility, which the backend does not
have: such models are refused with a message.

Rows: ``ids`` holds each stream's token of that step, the schema's silence id where a stream
has none (``text`` is None there, and for the user block's closing ``<|im_end|>``); Layout B has
no silence, so :meth:`BlocksSession.texts` joins each stream's tokens, whatever their ids.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..grid import StreamGrid
from ..sampling import sample_row, summarise
from ..schema import Role
from .backend import DecodeBackend, TokenPlan
from .config import Row, SessionConfig, SessionStopped
from .handle import SessionHandle
from .inputs import InputQueues
from .stops import resolve_end_tokens

if TYPE_CHECKING:
    from ..model import MultiStreamLM

__all__ = ["BlocksPlanner", "BlocksSession", "BlocksSessionBatch", "BlocksState"]

SYSTEM, USER = 0, 1


def is_blocks_model(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "layout", "grid") == "blocks"


@dataclass
class BlocksState:
    """One Layout B session (field names as :class:`~multistream.engine.SessionState`).

    Args:
        rows: every step so far, token ids in schema order (silence id = nothing this step).
        tokens: per stream, every token of its block so far (framing included).
        y: per stream, the ``y`` its next token takes.
        pending: per stream, the token of the last row not yet in the cache (or None).
        ended: generated streams that said ``<|im_end|>`` (or were stopped with the last head).
        user_done: the user block has its ``<|im_end|>``.
    """

    rows: list[tuple[int, ...]] = field(default_factory=list)
    num_prefill: int = 0
    pending_row: bool = False
    inputs: InputQueues = field(default_factory=lambda: InputQueues((), ()))
    inputs_closed_row: int | None = None
    first_visible_output_row: int | None = None
    silent_rows: int = 0
    ended: set[int] = field(default_factory=set)
    stop: str | None = None
    generator: torch.Generator | None = None
    tokens: list[list[int]] = field(default_factory=list)
    prefix_len: list[int] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    pending: dict[int, int] = field(default_factory=dict)
    user_done: bool = False
    started: bool = False

    @property
    def generated_rows(self) -> int:
        return len(self.rows) - self.num_prefill


class BlocksPlanner:
    """Turns Layout B steps into backend appends (:class:`~multistream.engine.backend.TokenPlan`).

    Args:
        schema: the model's streams (``system``, ``user``, heads).
        hide_im_end: ``<|im_end|>`` keys are hidden (``include_im_end_in_cross_channel=False``).
        im_end: the ``<|im_end|>`` id.
    """

    def __init__(self, schema: Any, hide_im_end: bool = False, im_end: int | None = None, **_: Any) -> None:
        self.generated = torch.tensor(schema.generated_indices, dtype=torch.long)
        self.hide_im_end = hide_im_end
        self.im_end = im_end

    def plan(self, slots: torch.Tensor, tokens: Sequence[Sequence[tuple[int, int, int]]]) -> TokenPlan:
        """``tokens[i]``: ``(stream, y, id)`` appended to slot ``slots[i]``; the logits wanted are
        those of each generated stream's last token in that list (-1 where it has none or it is
        ``<|im_end|>``)."""
        N = len(tokens)
        T = max(1, max(len(t) for t in tokens))
        ids = torch.zeros(N, T, dtype=torch.long)
        pos = torch.zeros(N, T, dtype=torch.long)
        streams = torch.zeros(N, T, dtype=torch.long)
        present = torch.zeros(N, T, dtype=torch.bool)
        logits_at = torch.full((N, len(self.generated)), -1, dtype=torch.long)
        where = {int(c): g for g, c in enumerate(self.generated.tolist())}
        for i, toks in enumerate(tokens):
            for j, (c, y, t) in enumerate(toks):
                ids[i, j], pos[i, j], streams[i, j], present[i, j] = t, y, c, True
                # A head's <|im_end|> ends it: nothing is sampled from it (and with
                # include_im_end_in_cross_channel=False its query sees only its own block).
                if c in where and t != self.im_end:
                    logits_at[i, where[c]] = j
        hidden = ~present
        if self.hide_im_end and self.im_end is not None:
            hidden = hidden | (present & (ids == self.im_end))
        return TokenPlan(slots, ids, pos, streams, present, hidden, logits_at)


class BlocksSessionBatch:
    """Several Layout B sessions decoded together, one batched forward per step (same API as
    :class:`~multistream.engine.SessionBatch`)."""

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
        if not is_blocks_model(model):
            raise ValueError(
                f"BlocksSessionBatch decodes Layout B models; this one is {model.config.layout!r}"
            )
        from ..data.blocks_io import chatml_ids

        options = dict(getattr(model.config, "layout_options", {}) or {})
        if not options.get("allow_assistant_cross_channel", True):
            raise NotImplementedError(
                "decoding a Layout B model trained with allow_assistant_cross_channel=False needs per-stream "
                "key visibility, which the decode backend does not offer yet"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SessionConfig()
        self.now = now or time.monotonic
        self.schema = schema = model.schema
        self.silence_id = schema.require_silence_id()
        if [s.role is Role.INPUT for s in schema.streams[:2]] != [True, True] or not schema.generated_indices:
            raise ValueError(f"a Layout B schema is system, user, then heads; got {schema.names}")
        self._heads = list(schema.generated_indices)
        self._prefix: dict[int, list[int]] = {}
        for c in range(schema.num_streams):
            role = "system" if c == SYSTEM else "user" if c == USER else "assistant"
            self._prefix[c], self.im_end = chatml_ids(role, tokenizer)
        self._end_ids = resolve_end_tokens(self.config.end_tokens, schema, tokenizer)
        self._device = model.device
        self._temperature = self.config.sampling.temperatures(schema.names).to(self._device)
        self.planner = BlocksPlanner(
            schema, hide_im_end=not options.get("include_im_end_in_cross_channel", True), im_end=self.im_end
        )
        if backend is None:
            from .hf_backend import HFBackend

            backend = HFBackend(
                model,
                max(size, 1),
                drop_hidden=False,
                fastpath=self.config.fastpath,
                fastpath_max_rows=self.config.fastpath_max_rows,
                pad_id=self.silence_id,
            )
        self.backend = backend
        self._step_lock = threading.RLock()
        self._logits: dict[int, torch.Tensor] = {}  # slot -> [G, V] of its last forward
        self._seeds = itertools.count(0)
        self.sessions: list[BlocksSession] = []
        for _ in range(size):
            self.add_session()

    # -- membership ------------------------------------------------------------------------------

    def add_session(self) -> BlocksSession:
        """A new session; it takes part from the next :meth:`step` on."""
        with self._step_lock:
            slot = self.backend.open_slot()
            seed = self.config.sampling.seed
            session = BlocksSession._member(self, slot, None if seed is None else seed + next(self._seeds))
            self._logits.pop(slot, None)
            self.sessions.append(session)
            return session

    def remove(self, session: BlocksSession, reason: str = "cancelled") -> None:
        """Take a session out of the batch and free its slot."""
        with self._step_lock:
            if session not in self.sessions:
                raise ValueError("the session is not a member of this batch")
            session.cancel(reason)
            self.sessions.remove(session)
            self.backend.free_slot(session.slot)
            self._logits.pop(session.slot, None)

    def reopen(self, session: BlocksSession, stream: str | None = None, *, resume: bool = True) -> None:
        """Layout B cannot take a follow-up in a running session: see :meth:`BlocksSession.reopen`."""
        session.reopen(stream, resume=resume)

    def prefill(self, rows: Sequence[Any]) -> None:
        """Layout B starts from its system block (feed ``system`` before the first step)."""
        if any(r is not None for r in rows):
            raise ValueError(
                "a Layout B session has no grid rows to prefill; feed the 'system' stream instead"
            )

    # -- one step --------------------------------------------------------------------------------

    def step(self) -> list[Row | None]:
        """Forward every running session's previous step (or its prefill), then sample the next.

        Returns:
            One :class:`Row` per member of :attr:`sessions`, None for stopped ones.
        """
        with self._step_lock:
            sessions = list(self.sessions)
            if all(s.state.stop is not None for s in sessions):
                raise SessionStopped("every session of this batch has stopped; read .stop for why")
            active = [s for s in sessions if s.state.stop is None]
            with torch.inference_mode():
                feeds = [self._feed(s.state) for s in active]
                todo = [(s, f) for s, f in zip(active, feeds, strict=True) if f]
                if todo:
                    slots = torch.tensor([s.slot for s, _ in todo], dtype=torch.long)
                    logits = self.backend.append(self.planner.plan(slots, [f for _, f in todo]))
                    for i, (s, f) in enumerate(todo):
                        fed = {c for c, _, _ in f}
                        self._logits[s.slot] = torch.where(
                            torch.tensor([c in fed for c in self._heads], device=logits.device)[:, None],
                            logits[i],
                            self._logits.get(s.slot, logits[i]),
                        )
                rows = self._next_rows(active)
            out = {id(s): r for s, r in zip(active, rows, strict=True)}
            return [out.get(id(s)) for s in sessions]

    def _feed(self, state: BlocksState) -> list[tuple[int, int, int]]:
        """The ``(stream, y, id)`` tokens this step appends for one session."""
        out: list[tuple[int, int, int]] = []
        if not state.started:
            state.started = True
            system = self._take_system(state)
            state.tokens = [[] for _ in self.schema.streams]
            state.prefix_len = [len(self._prefix[c]) for c in range(self.schema.num_streams)]
            framed = [*self._prefix[SYSTEM], *system, self.im_end]
            y0 = len(framed)
            state.y = [0] + [y0] * (self.schema.num_streams - 1)
            for c in range(self.schema.num_streams):
                out.extend(self._push(state, c, framed if c == SYSTEM else self._prefix[c]))
            return out
        for c, token in sorted(state.pending.items()):
            out.extend(self._push(state, c, [token]))
        state.pending.clear()
        return out

    def _push(self, state: BlocksState, c: int, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        out = [(c, state.y[c] + k, int(t)) for k, t in enumerate(ids)]
        state.y[c] += len(ids)
        state.tokens[c].extend(int(t) for t in ids)
        return out

    def _take_system(self, state: BlocksState) -> list[int]:
        """Every system token queued before the first step (they make the whole system block)."""
        from ..data.blocks import DEFAULT_SYSTEM

        system = state.inputs["system"]
        with state.inputs.lock:
            ids = [t for t, _ in system.queue]
            system.queue.clear()
            system.closed = True
        return ids or list(self.tokenizer.encode(DEFAULT_SYSTEM, add_special_tokens=False))

    def _take_user(self, state: BlocksState, now: float | None) -> int | None:
        user = state.inputs["user"]
        with state.inputs.lock:
            if user.queue and (now is None or user.queue[0][1] <= now):
                return user.queue.popleft()[0]
            if user.closed and not user.queue and not state.user_done:
                return self.im_end  # close() ends the user block
        return None

    def _next_rows(self, active: list[BlocksSession]) -> list[Row]:
        C = self.schema.num_streams
        N = len(active)
        now = self.now() if self.config.clock == "realtime" else None
        V = next(iter(self._logits.values())).shape[-1]
        logits = torch.zeros(N, C, V, device=self._device)
        running = torch.zeros(N, C, dtype=torch.bool)
        for i, s in enumerate(active):
            if s.slot in self._logits:
                logits[i, self._heads] = self._logits[s.slot].to(logits.dtype)
            for c in self._heads:
                running[i, c] = c not in s.state.ended
        sampled = sample_row(
            logits,
            self._temperature,
            top_k=self.config.sampling.top_k,
            top_p=self.config.sampling.top_p,
            silence_id=self.silence_id,
            forced_silent=~running.to(self._device),
            generators=[s.state.generator for s in active],
        ).tolist()
        summaries = summarise(logits) if self.config.sampling.summaries else None
        rows = []
        for i, s in enumerate(active):
            state = s.state
            cells: dict[int, int] = {}
            user = None if state.user_done else self._take_user(state, now)
            if user is not None:
                cells[USER] = user
                state.pending[USER] = user
                state.user_done = user == self.im_end
            elif state.user_done and state.inputs_closed_row is None:
                state.inputs_closed_row = len(state.rows)
            for c in self._heads:
                if running[i, c]:
                    token = sampled[i][c]
                    cells[c] = token
                    state.pending[c] = token
                    if token == self.im_end or token == self._end_ids.get(c):
                        state.ended.add(c)
            if self._heads[-1] in state.ended:  # spec §3.2: the last head ends them all
                state.ended.update(self._heads)
            rows.append(self._finish_row(s, cells, summaries, i))
        return rows

    def _finish_row(self, session: BlocksSession, cells: dict[int, int], summaries: Any, i: int) -> Row:
        state = session.state
        index = len(state.rows)
        ids = tuple(cells.get(c, self.silence_id) for c in range(self.schema.num_streams))
        state.rows.append(ids)
        if state.first_visible_output_row is None and any(c in cells for c in self.schema.output_indices):
            state.first_visible_output_row = index
        with state.inputs.lock:
            if state.stop is None:
                if set(self._heads) <= state.ended:
                    state.stop = "end_token"
                elif state.generated_rows >= self.config.max_rows:
                    state.stop = "max_rows"
        # The user block's closing <|im_end|> is framing, not text: shown as nothing (ids keep it).
        text = {
            name: (
                None
                if c not in cells or (c == USER and cells[c] == self.im_end)
                else self.tokenizer.decode([cells[c]])
            )
            for c, name in enumerate(self.schema.names)
        }
        row_summaries = None
        if summaries is not None:
            row_summaries = {
                self.schema.names[c]: {
                    "entropy": float(summaries.entropy[i, c]),
                    "top1_id": int(summaries.top1_id[i, c]),
                    "top1_prob": float(summaries.top1_prob[i, c]),
                }
                for c in self._heads
                if c in cells
            }
        return Row(index=index, ids=ids, text=text, stop=state.stop, summaries=row_summaries)

    # -- memory ----------------------------------------------------------------------------------

    def cache_bytes(self) -> int:
        return self.backend.cache_bytes()

    def cached_tokens(self) -> list[int]:
        return [self.backend.cached_tokens(s.slot) for s in self.sessions]


class BlocksSession(SessionHandle):
    """One live Layout B conversation: the API of :class:`~multistream.engine.Session`."""

    _batch_class = BlocksSessionBatch

    @classmethod
    def _member(cls, batch: BlocksSessionBatch, slot: int, seed: int | None) -> BlocksSession:
        state = BlocksState(inputs=InputQueues(["system", "user"], [SYSTEM, USER]))
        if seed is not None:
            state.generator = torch.Generator(device=batch._device).manual_seed(seed)
        session = cls.__new__(cls)
        session._attach(batch, slot, state, standalone=False)
        return session

    def feed(
        self, stream: str, text_or_ids: str | Sequence[int], *, at: float | None = None, interval: float = 0.0
    ) -> int:
        """Queue input: ``system`` (before the first step; ordinary BPE) or ``user`` (live
        tokenisation, one token per step). Returns the number of tokens queued."""
        if stream not in ("system", "user"):
            raise ValueError(f"stream {stream!r} is generated, not an input; inputs: ['system', 'user']")
        if stream == "system" and self.state.started:
            raise ValueError("the system block is read at the first step; feed 'system' before stepping")
        tok = self.batch.tokenizer
        if isinstance(text_or_ids, str):
            if stream == "system":
                ids = list(tok.encode(text_or_ids, add_special_tokens=False))
            else:
                from ..data.tokenize import tokenize_live_text

                ids = tokenize_live_text(text_or_ids, tok)
        else:
            ids = list(text_or_ids)
        self.state.inputs.feed(stream, ids, self.batch.now() if at is None else at, interval)
        return len(ids)

    def close(self, stream: str | None = None, end_token: bool | None = None) -> None:
        """End an input stream (default: all): the user block then ends with ``<|im_end|>``
        once its queued tokens are read (``end_token`` is accepted for API compatibility)."""
        names = ["system", "user"] if stream is None else [stream]
        for name in names:
            if name not in ("system", "user"):
                raise ValueError(f"stream {name!r} is not an input; inputs: ['system', 'user']")
        self.state.inputs.close(names, None, self.batch.now())

    @property
    def awaiting_input(self) -> bool:
        """The user block is open but nothing is queued (front-ends wait, as for Layout A)."""
        user = self.state.inputs["user"]
        with self.state.inputs.lock:
            return not user.closed and not user.queue

    def prefill(self, rows: Any) -> None:
        self._require_standalone("prefill")
        self.batch.prefill([rows])

    def step(self) -> Row:
        """Compute and return the next step.

        Raises:
            SessionStopped: the session had stopped.
        """
        self._require_standalone("step")
        if self.state.stop is not None:
            raise SessionStopped(f"the session stopped ({self.state.stop}); its rows are in .rows")
        row = self.batch.step()[0]
        assert row is not None
        return row

    def reopen(self, stream: str | None = None, *, resume: bool = True) -> None:
        """A closed user block cannot be reopened: ``close`` ended it with ``<|im_end|>`` and
        the heads' positions were laid out after it (spec §3.2), so a follow-up needs a new
        session. Reopening streams that are still open is a no-op.

        Raises:
            ValueError: a named input stream is closed (or the session stopped).
        """
        names = ["system", "user"] if stream is None else [stream]
        for name in names:
            if name not in ("system", "user"):
                raise ValueError(f"stream {name!r} is not an input; inputs: ['system', 'user']")
        with self.state.inputs.lock:
            closed = [n for n in names if self.state.inputs[n].closed]
        if closed or self.state.stop is not None:
            raise ValueError(
                f"a Layout B (blocks) session cannot reopen its closed {'/'.join(closed) or 'input'} "
                "block: close() ended it with <|im_end|> and the answer heads were placed after it "
                "(spec §3.2); start a new session for a follow-up"
            )

    def grid(self) -> StreamGrid:
        """The steps as a grid (silence id where a stream had nothing that step)."""
        C = self.batch.schema.num_streams
        ids = torch.tensor(self.state.rows, dtype=torch.long).reshape(-1, C)
        return StreamGrid(ids, self.batch.schema, {"stop": self.state.stop, "layout": "blocks"})

    def block_ids(self) -> list[list[int]]:
        """Every block's tokens in the KV cache, framing included (what the full forward scores;
        the last row's tokens join at the next step)."""
        return [list(t) for t in self.state.tokens]

    def texts(self) -> dict[str, str]:
        """Every stream's content so far (framing and ``<|im_end|>`` left out)."""
        tok = self.batch.tokenizer
        out = {}
        for c, name in enumerate(self.batch.schema.names):
            ids = self.state.tokens[c][self.state.prefix_len[c] :] if self.state.tokens else []
            if c in self.state.pending:  # said in the last row, forwarded with the next step
                ids = [*ids, self.state.pending[c]]
            out[name] = tok.decode([t for t in ids if t != self.batch.im_end])
        return out
