"""Deterministic converters: :class:`SequentialExample` -> :class:`StreamGrid`, one policy each.

Layout shared by every policy (one token per row per stream):

* **Input.** The example's input fields (``system``, ``user``, ``data``, in that order) go to the
  input stream of the same name, or to the first input stream when the schema has none of that
  name (consecutive fields landing in one stream are joined by a blank line). Fields are streamed
  one after another from row 0, each tokenized as a live engine feeds it
  (:func:`~multistream.data.tokenize.tokenize_live_text`) and closed by the end token (EOS) in the
  next row, which tells the model the turn is complete (``end_inputs=False`` leaves it out).
  ``E`` = the row after the last input cell.
* **Output.** The answer goes to the first ``output`` stream, the rationale (if the example has
  one and the schema has a ``think`` stream) to the first ``think`` stream. Each generated stream
  ends with EOS and is silent everywhere else.

A generated cell at row ``r`` is predicted from rows ``< r`` (``masks.py``), so content at rows
``>= E`` has seen all input. Policies (``multistream convert --policy NAME``), with what each
guarantees (tests check it on every shared data set, ``tests/test_data_convert.py``):

``sequential``
    Every generated cell before row ``E`` is silent: the baseline, in stream form.
``wait-k``
    The output stream is silent for rows ``< k``; from row ``k`` it says a bridging utterance
    chosen from :data:`BRIDGING_UTTERANCES` by a hash of the example id (so it uses no input
    content); then silence until the answer, which starts at ``max(E, k + len(bridging))``.
    If ``k >= E - 1`` the input is (all but) over by row ``k``: nothing to bridge, and the layout
    equals ``sequential``. Thinking,
    if any, starts at ``E``. So no answer content precedes the end of the input.
``think-while-reading``
    The think stream works through the rationale's steps while the input arrives: step ``j``
    starts no earlier than the end of step ``j-1`` and no earlier than the row after the input
    *sentence* holding the first mention of each key term of the step (numbers, rare words:
    :func:`~multistream.data.causality.key_terms`). So no thinking word mentions a number or rare
    word before the input has introduced it. A rationale without steps starts at ``E``; an example
    without a rationale is dropped (``no_thinking``). The answer starts at ``E`` or when thinking
    ends, whichever is later.
``separated``
    As ``sequential``, but the schema must give the instruction (``system``/``user``) and the
    untrusted ``data`` field different input streams (spec §5.2), e.g. ``system,data,assistant``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..grid import StreamGrid
from ..schema import Role, StreamSchema
from .causality import GridWord, input_end_row, key_terms, lexical_violations
from .examples import SequentialExample
from .tokenize import live_words, tokenize_output_text

__all__ = [
    "BRIDGING_UTTERANCES",
    "GUARANTEES",
    "POLICIES",
    "ConversionError",
    "ConversionPolicy",
    "ConvertContext",
    "ConvertReport",
    "Drop",
    "EarlyCheck",
    "InputLayout",
    "bridging_for",
    "build_grid",
    "check_grid",
    "conversion_context",
    "convert_example",
    "convert_examples",
    "get_policy",
    "layout_inputs",
    "place_steps",
    "register_guarantee",
    "register_policy",
    "resolve_schema",
]

# Content-free openings (paper App., rewrite prompt: "Let me start helping you with your question",
# "Allow me to begin while you continue"). None holds a key term, so none can leak input.
BRIDGING_UTTERANCES: tuple[str, ...] = (
    "Sure, let me think.",
    "Let me start helping you with your question.",
    "Allow me to begin while you continue.",
    "Okay, I am following along.",
    "All right, let me take a look.",
    "Good question, let me work on it.",
)

# A word that closes a sentence: the row after it is when the sentence has been read.
_SENTENCE_END_RE = re.compile(r"[.!?:;][\"')\]]*$")


class ConversionError(ValueError):
    """The conversion is mis-configured (schema, policy, k); the message says how to fix it."""


class Drop(Exception):
    """Raised by a policy to drop one example; ``reason`` is the report key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class ConvertReport:
    """Kept and dropped counts of a conversion (``dropped`` by reason)."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples_dropped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason), first 100

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    def drop(self, example_id: str, reason: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples_dropped) < 100:
            self.examples_dropped.append((example_id, reason))


@dataclass
class InputLayout:
    """Where an example's input sits in the grid.

    Args:
        cells: per input stream, ``(row, token ids)`` runs (EOS included).
        words: every input word with its stream and rows.
        sentence_end: for each word of ``words``, the last row of its sentence.
        end_row: ``E``, the row after the last input EOS.
    """

    cells: dict[str, list[tuple[int, list[int]]]]
    words: list[GridWord]
    sentence_end: list[int]
    end_row: int

    def term_ready_rows(self, tokenizer: Any) -> dict[str, int]:
        """For each input key term: the first row at which its whole first sentence has been read."""
        ready: dict[str, int] = {}
        for w, s_end in zip(self.words, self.sentence_end, strict=True):
            for term in key_terms(w.text, tokenizer):
                ready.setdefault(term, s_end + 1)
        return ready


@dataclass
class ConvertContext:
    """What a policy needs besides the example: schema, tokenizer, k, end token, target streams."""

    schema: StreamSchema
    tokenizer: Any
    k: int
    eos_id: int
    output_stream: str
    think_stream: str | None
    end_inputs: bool = True

    def encode(self, text: str) -> list[int]:
        return tokenize_output_text(text, self.tokenizer, self.schema.silence_text, self.schema.silence_id)


# A placement: per generated stream, (row, ids) runs; plus meta entries.
Placement = tuple[dict[str, list[tuple[int, list[int]]]], dict[str, Any]]
PlaceFn = Callable[[SequentialExample, InputLayout, ConvertContext], Placement]


# What a generated stream may say before the input ends: ``(grid, stream index, tokenizer)`` ->
# problems. Called only for streams that speak before row ``E``.
EarlyCheck = Callable[[StreamGrid, int, Any], list[str]]


def _nothing_early(grid: StreamGrid, c: int, tokenizer: Any) -> list[str]:
    """The default guarantee: no generated stream speaks before the input has ended."""
    end = input_end_row(grid)
    first = int((~grid.silent()[:end, c]).nonzero()[0, 0])
    return [f"stream {grid.schema.names[c]!r}: speaks at row {first}, before the input ends at row {end}"]


@dataclass(frozen=True)
class ConversionPolicy:
    """A registered conversion policy (see the module docstring for each guarantee).

    Args:
        name: the ``--policy`` name.
        description: one line for listings.
        place: where the generated text goes (None: grids of this policy are made elsewhere,
            e.g. the LLM rewrite; only their guarantee is registered).
        needs_think_stream: the schema must have a think stream and the example a rationale.
        uses_k: the policy reads ``k`` (validated as ``k >= 0``).
        input_streams: input streams the schema must have by name, with why (``separated``
            keeps untrusted ``data`` apart from the instruction).
        early: per generated role, what a stream of that role may say before the input ends
            (default: nothing, :func:`_nothing_early`).
    """

    name: str
    description: str
    place: PlaceFn | None
    needs_think_stream: bool = False
    uses_k: bool = False
    input_streams: tuple[tuple[str, str], ...] = ()
    early: tuple[tuple[Role, EarlyCheck], ...] = ()

    def early_check(self, role: Role) -> EarlyCheck:
        return dict(self.early).get(role, _nothing_early)


POLICIES: dict[str, ConversionPolicy] = {}
# Every policy whose grids check_grid knows, including those made elsewhere (``rewrite``).
GUARANTEES: dict[str, ConversionPolicy] = {}


def register_policy(
    name: str,
    description: str,
    needs_think_stream: bool = False,
    *,
    uses_k: bool = False,
    input_streams: tuple[tuple[str, str], ...] = (),
    early: tuple[tuple[Role, EarlyCheck], ...] = (),
) -> Callable[[PlaceFn], PlaceFn]:
    """Decorator registering a placement function as policy ``name``; duplicates are an error."""

    def wrap(place: PlaceFn) -> PlaceFn:
        if name in GUARANTEES:
            raise ValueError(f"conversion policy {name!r} is already registered")
        policy = ConversionPolicy(name, description, place, needs_think_stream, uses_k, input_streams, early)
        POLICIES[name] = GUARANTEES[name] = policy
        return place

    return wrap


def register_guarantee(policy: ConversionPolicy) -> None:
    """Make :func:`check_grid` know grids of a policy made outside :data:`POLICIES` (``place=None``)."""
    if policy.name in GUARANTEES:
        raise ValueError(f"conversion policy {policy.name!r} is already registered")
    GUARANTEES[policy.name] = policy


def bridging_for(example: SequentialExample) -> str:
    """The bridging utterance of an example: fixed set, picked by a hash of source and id."""
    digest = hashlib.sha256(f"{example.source}:{example.id}".encode()).digest()
    return BRIDGING_UTTERANCES[int.from_bytes(digest[:4], "big") % len(BRIDGING_UTTERANCES)]


# -- layout helpers -----------------------------------------------------------------------------


def _route_inputs(example: SequentialExample, schema: StreamSchema) -> list[tuple[str, str]]:
    """(stream, text) runs in streaming order, consecutive fields for one stream joined."""
    inputs = [s.name for s in schema.streams if s.role is Role.INPUT]
    if not inputs:
        raise ConversionError(
            f"schema {','.join(schema.names)} has no input stream; add one, e.g. 'user,assistant'"
        )
    runs: list[tuple[str, str]] = []
    for name, text in example.input_fields():
        stream = name if name in inputs else inputs[0]
        if runs and runs[-1][0] == stream:
            runs[-1] = (stream, runs[-1][1] + "\n\n" + text)
        else:
            runs.append((stream, text))
    return runs


def layout_inputs(example: SequentialExample, ctx: ConvertContext, with_words: bool) -> InputLayout:
    """Lay the input out from row 0; ``with_words`` also records words and sentence ends."""
    schema = ctx.schema
    cells: dict[str, list[tuple[int, list[int]]]] = {}
    words: list[GridWord] = []
    sentence_end: list[int] = []
    row = 0
    runs = _route_inputs(example, schema)
    if not runs:
        raise Drop("empty_input", "the example has no input text")
    for stream, text in runs:
        start = row
        ids: list[int] = []
        pending: list[int] = []  # indices into words of the sentence being read
        for w in live_words(text, ctx.tokenizer, schema.silence_text, schema.silence_id):
            first, last = row, row + len(w.ids) - 1
            row += len(w.ids)
            ids.extend(w.ids)
            if not with_words:
                continue
            words.append(GridWord(stream, w.text, first, last))
            sentence_end.append(-1)
            pending.append(len(words) - 1)
            if _SENTENCE_END_RE.search(w.text):
                for i in pending:
                    sentence_end[i] = last
                pending = []
        for i in pending:
            sentence_end[i] = row - 1
        if ctx.end_inputs:
            ids.append(ctx.eos_id)
            row += 1
        cells.setdefault(stream, []).append((start, ids))
    return InputLayout(cells, words, sentence_end, row)


def _response(example: SequentialExample, ctx: ConvertContext) -> tuple[str, str]:
    """(thinking text or "", output text) for this schema."""
    if ctx.think_stream is not None and example.has_thinking:
        thinking = example.thinking.strip() or "\n".join(example.steps)
        return thinking, (example.conclusion or example.assistant).strip()
    return "", example.assistant.strip()


def _with_eos(ids: list[int], ctx: ConvertContext) -> list[int]:
    return [*ids, ctx.eos_id]


def place_steps(
    steps: Sequence[str],
    sep: str,
    layout: InputLayout,
    ctx: ConvertContext,
    start_row: int = 0,
    delayed: Collection[int] = (),
    end: bool = True,
) -> tuple[list[tuple[int, list[int]]], int, list[int]]:
    """Place text steps in one stream as early as the input allows.

    Step ``j`` starts at the latest of: the end of step ``j-1`` (or ``start_row``), and the row
    after the input sentence holding the first mention of each of its key terms
    (:meth:`InputLayout.term_ready_rows`); steps listed in ``delayed`` wait for the input end.

    Args:
        steps: the texts, in order; step ``j > 0`` is prefixed with ``sep``.
        sep: separator between steps (``"\\n"`` or ``" "``).
        layout: the input layout (built ``with_words=True``).
        ctx: the conversion context (tokenizer, encoding, end token).
        start_row: no step starts earlier.
        delayed: indices of steps that must start at or after ``layout.end_row``.
        end: append the end token after the last step.

    Returns:
        ``(runs, next_row, starts)``: contiguous ``(row, ids)`` runs, the row after the last
        token, and each step's start row.
    """
    ready = layout.term_ready_rows(ctx.tokenizer)
    runs: list[tuple[int, list[int]]] = []
    starts: list[int] = []
    row = start_row
    for j, step in enumerate(steps):
        need = max((ready.get(t, 0) for t in key_terms(step, ctx.tokenizer)), default=0)
        if j in delayed:
            need = max(need, layout.end_row)
        ids = ctx.encode(step if j == 0 else sep + step)
        row = max(row, need)
        starts.append(row)
        if runs and row == runs[-1][0] + len(runs[-1][1]):
            runs[-1] = (runs[-1][0], runs[-1][1] + ids)  # contiguous: one run
        else:
            runs.append((row, ids))
        row += len(ids)
    if end and runs:
        runs[-1] = (runs[-1][0], _with_eos(runs[-1][1], ctx))
        row += 1
    return runs, row, starts


# -- policies -----------------------------------------------------------------------------------


def _think_then_answer(
    example: SequentialExample, start: int, ctx: ConvertContext, answer_prefix: str = ""
) -> tuple[dict[str, list[tuple[int, list[int]]]], int]:
    """Thinking from ``start`` (if any), then the answer when thinking ends."""
    thinking, answer = _response(example, ctx)
    placed: dict[str, list[tuple[int, list[int]]]] = {}
    row = start
    if thinking:
        ids = _with_eos(ctx.encode(thinking), ctx)
        placed[ctx.think_stream] = [(row, ids)]  # type: ignore[index]
        row += len(ids)
    if not answer:
        raise Drop("empty_output", "the example has no response text")
    placed[ctx.output_stream] = [(row, _with_eos(ctx.encode(answer_prefix + answer), ctx))]
    return placed, row


@register_policy("sequential", "output (and thinking) start after the input has ended")
def _sequential(example: SequentialExample, layout: InputLayout, ctx: ConvertContext) -> Placement:
    placed, answer_row = _think_then_answer(example, layout.end_row, ctx)
    return placed, {"answer_row": answer_row}


@register_policy(
    "separated",
    "sequential, with instruction and untrusted data in different input streams",
    input_streams=(("data", "for untrusted data"),),
)
def _separated(example: SequentialExample, layout: InputLayout, ctx: ConvertContext) -> Placement:
    return _sequential(example, layout, ctx)


def _bridging_early(grid: StreamGrid, c: int, tokenizer: Any) -> list[str]:
    """wait-k's output: before the answer (at ``meta["answer_row"]`` >= E) only its bridging."""
    problems: list[str] = []
    name = grid.schema.names[c]
    end = input_end_row(grid)
    rows = (~grid.silent()[:, c]).nonzero().flatten().tolist()
    col = grid.ids[:, c].tolist()
    # The bridging may run past E when the input ends soon after row k, so everything said before
    # the answer row must be the bridging.
    answer_row = grid.meta.get("answer_row", end)
    if answer_row < end:
        problems.append(f"stream {name!r}: the answer starts at row {answer_row} < input end {end}")
    text = tokenizer.decode([col[r] for r in rows if r < answer_row])
    k = grid.meta.get("k")
    if text not in BRIDGING_UTTERANCES or text != grid.meta.get("bridging"):
        problems.append(f"stream {name!r}: before the input ends it says {text!r}, not a bridging utterance")
    if k is None or rows[0] < k:
        problems.append(f"stream {name!r}: speaks at row {rows[0]}, before k={k} input rows")
    return problems


def _anything_early(grid: StreamGrid, c: int, tokenizer: Any) -> list[str]:
    return []  # placed as early as the input allows: the lexical check in check_grid vouches for it


@register_policy(
    "wait-k",
    "bridging utterance after k input rows; the answer after the input ends",
    uses_k=True,
    early=((Role.OUTPUT, _bridging_early),),
)
def _wait_k(example: SequentialExample, layout: InputLayout, ctx: ConvertContext) -> Placement:
    end, k = layout.end_row, ctx.k
    if k >= end - 1:
        # The input is over (only its EOS row is left) before row k: nothing to bridge.
        placed, answer_row = _think_then_answer(example, end, ctx)
        return placed, {"answer_row": answer_row, "bridging": None, "k": k}
    bridging = bridging_for(example)
    bridge_ids = ctx.encode(bridging)
    start = max(end, k + len(bridge_ids))
    placed, answer_row = _think_then_answer(example, start, ctx, answer_prefix=" ")
    placed[ctx.output_stream].insert(0, (k, bridge_ids))
    return placed, {"answer_row": answer_row, "bridging": bridging, "k": k}


@register_policy(
    "think-while-reading",
    "thinking steps start once the input sentences they mention are read; answer after the input",
    needs_think_stream=True,
    early=((Role.THINK, _anything_early),),
)
def _think_while_reading(example: SequentialExample, layout: InputLayout, ctx: ConvertContext) -> Placement:
    if not example.has_thinking:
        raise Drop("no_thinking", "the example has no rationale to think with")
    if not example.steps:
        placed, answer_row = _think_then_answer(example, layout.end_row, ctx)
        return placed, {"answer_row": answer_row, "think_steps": 0}
    # Steps are separated as in the rationale: lines (GSM8K) or sentences (MATH500).
    sep = "\n" if example.thinking.strip() == "\n".join(example.steps) else " "
    runs, row, starts = place_steps(example.steps, sep, layout, ctx)
    early = sum(r < layout.end_row for r in starts)
    _, answer = _response(example, ctx)
    if not answer:
        raise Drop("empty_output", "the example has no response text")
    answer_row = max(layout.end_row, row)
    placed = {ctx.think_stream: runs, ctx.output_stream: [(answer_row, _with_eos(ctx.encode(answer), ctx))]}
    return placed, {"answer_row": answer_row, "think_steps": len(example.steps), "early_steps": early}


# LLM rewrites (:mod:`~multistream.data.rewrite`) are made there; their output may speak before
# the input ends because each chunk was judged (the lexical check in check_grid still applies).
register_guarantee(
    ConversionPolicy(
        "rewrite",
        "LLM rewrite of wait-k grids, judged chunk by chunk",
        None,
        early=((Role.OUTPUT, _anything_early),),
    )
)


# -- public entry -------------------------------------------------------------------------------


def get_policy(name: str) -> ConversionPolicy:
    """The registered policy ``name``.

    Raises:
        ConversionError: no such policy; the message lists the known ones.
    """
    policy = POLICIES.get(name)
    if policy is None:
        raise ConversionError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}")
    return policy


def resolve_schema(schema: str | StreamSchema, tokenizer: Any) -> StreamSchema:
    """A schema from a spec string or object, with its silence id resolved for ``tokenizer``."""
    parsed = StreamSchema.parse(schema) if isinstance(schema, str) else schema
    return parsed.with_tokenizer(tokenizer) if parsed.silence_id is None else parsed


def conversion_context(
    policy: ConversionPolicy, schema: StreamSchema, tokenizer: Any, k: int, end_inputs: bool
) -> ConvertContext:
    """Validate a policy against a schema and tokenizer; the context every placement uses.

    Raises:
        ConversionError: no output stream, a missing think or data stream, a negative ``k``, or a
            tokenizer without a usable end token.
    """
    outputs = [schema.names[i] for i in schema.output_indices]
    thinks = [schema.names[i] for i in schema.indices(Role.THINK)]
    if not outputs:
        raise ConversionError(
            f"schema {','.join(schema.names)} has no output stream; add one, e.g. 'user,assistant'"
        )
    if policy.needs_think_stream and not thinks:
        raise ConversionError(
            f"policy {policy.name!r} needs a think stream; use e.g. --schema user,think,assistant"
        )
    if policy.uses_k and k < 0:
        raise ConversionError(f"{policy.name} needs k >= 0 input rows, got k={k}")
    for stream, why in policy.input_streams:
        if stream not in schema.names or schema[stream].role is not Role.INPUT:
            raise ConversionError(
                f"policy {policy.name!r} needs an input stream named {stream!r} {why}; schema "
                f"{','.join(schema.names)} has none (use e.g. --schema system,{stream},assistant)"
            )
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConversionError("the tokenizer has no eos_token_id; output streams need an end token")
    if eos == schema.silence_id:
        raise ConversionError(
            f"the tokenizer's end token {eos} equals the silence token; pick another silence"
        )
    return ConvertContext(schema, tokenizer, k, eos, outputs[0], thinks[0] if thinks else None, end_inputs)


def build_grid(
    layout: InputLayout, placed: dict[str, list[tuple[int, list[int]]]], schema: StreamSchema
) -> StreamGrid:
    """The grid holding the input layout plus the placed ``(row, ids)`` runs; silence elsewhere."""
    runs = {**layout.cells}
    for name, r in placed.items():
        runs[name] = runs.get(name, []) + r
    num_rows = max(row + len(ids) for rs in runs.values() for row, ids in rs)
    ids = torch.full((num_rows, schema.num_streams), schema.require_silence_id(), dtype=torch.long)
    for name, rs in runs.items():
        c = schema.index(name)
        for row, toks in rs:
            ids[row : row + len(toks), c] = torch.tensor(toks, dtype=torch.long)
    return StreamGrid(ids, schema)


def convert_example(
    example: SequentialExample,
    policy: str,
    schema: StreamSchema,
    tokenizer: Any,
    k: int = 8,
    max_rows: int | None = None,
    end_inputs: bool = True,
) -> StreamGrid:
    """Convert one example; raises :class:`Drop` when the policy rejects it.

    Args:
        example: the example.
        policy: a name in :data:`POLICIES`.
        schema: a schema with resolved silence id (:func:`resolve_schema`).
        tokenizer: the tokenizer the grid's ids belong to.
        k: wait-k's number of input rows before the bridging utterance.
        max_rows: drop (``too_long``) grids with more rows.
        end_inputs: close each input field with the end token (EOS), so the model sees the turn
            is complete; ``False`` leaves it to silence, as the paper's tabular data does.

    Returns:
        the grid; ``grid.meta`` holds ``source``, ``id``, ``policy``, ``input_end_row``,
        ``answer_row``, the gold ``answer`` and policy details (``k``, ``bridging``).
    """
    pol = get_policy(policy)
    ctx = conversion_context(pol, schema, tokenizer, k, end_inputs)
    if pol.needs_think_stream and not example.has_thinking:
        raise Drop("no_thinking", "the example has no rationale to think with")  # before any layout work
    layout = layout_inputs(example, ctx, with_words=pol.needs_think_stream)
    assert pol.place is not None  # get_policy returns placing policies only
    placed, extra = pol.place(example, layout, ctx)
    grid = build_grid(layout, placed, schema)
    if max_rows is not None and grid.num_rows > max_rows:
        raise Drop("too_long", f"{grid.num_rows} rows > max_rows={max_rows}")
    grid.meta = {
        "source": example.source,
        "id": example.id,
        "policy": policy,
        "input_end_row": layout.end_row,
        **extra,
        "answer": example.answer,
    }
    if example.meta:
        grid.meta["example"] = example.meta
    return grid


def convert_examples(
    examples: Iterable[SequentialExample],
    policy: str = "sequential",
    schema: str | StreamSchema = "user,assistant",
    tokenizer: Any = "smollm2-135m",
    k: int = 8,
    max_rows: int | None = None,
    end_inputs: bool = True,
    report: ConvertReport | None = None,
) -> list[StreamGrid]:
    """Convert sequential examples into stream grids with one deterministic policy.

    Args:
        examples: from :func:`~multistream.data.loaders.load_dataset_file`.
        policy: ``sequential``, ``wait-k``, ``think-while-reading`` or ``separated``
            (guarantees in the module docstring).
        schema: ``"user,assistant"``-style spec or a :class:`StreamSchema`; input fields go to
            streams of the same name (``system``, ``user``, ``data``) or the first input stream.
        tokenizer: a tokenizer object or an embedded model name (``"smollm2-135m"``).
        k: wait-k's number of input rows before the bridging utterance (ignored otherwise).
        max_rows: drop grids longer than this (reason ``too_long``).
        end_inputs: close each input field with EOS (default; the live engine then feeds EOS
            when a turn is complete); ``False``: input just falls silent.
        report: filled with kept and dropped-by-reason counts when given.

    Returns:
        one grid per kept example, in input order; write them with
        :func:`~multistream.data.io.write_grids`.

    Raises:
        ConversionError: unknown policy, or a schema the policy cannot use.

    Example:
        >>> from multistream.data.loaders import load_dataset_file
        >>> exs = load_dataset_file("../shared/data/gsm8k/test.jsonl", "gsm8k", limit=2)  # doctest: +SKIP
        >>> grids = convert_examples(exs, policy="wait-k", schema="user,assistant", k=8)  # doctest: +SKIP
    """
    if isinstance(tokenizer, str):
        from ..base_models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    resolved = resolve_schema(schema, tokenizer)
    report = report if report is not None else ConvertReport()
    out = []
    for ex in examples:
        try:
            grid = convert_example(
                ex, policy, resolved, tokenizer, k=k, max_rows=max_rows, end_inputs=end_inputs
            )
        except Drop as d:
            report.drop(f"{ex.source}:{ex.id}", d.reason)
            continue
        report.kept += 1
        out.append(grid)
    return out


# -- guarantees ---------------------------------------------------------------------------------


def check_grid(grid: StreamGrid, tokenizer: Any) -> list[str]:
    """Check a converted grid against the guarantee of the policy in ``grid.meta["policy"]``.

    Checks, for every policy: each generated stream that says anything ends with exactly one EOS
    and is silent after it, and no generated word mentions an input key term before the input
    introduces it (:func:`~multistream.data.causality.lexical_violations`). Per policy:
    ``sequential``/``separated``: generated streams are silent before ``E``; ``wait-k``: before
    ``E`` the output holds only its bridging utterance (one of :data:`BRIDGING_UTTERANCES`) from
    row ``k`` on, and thinking is silent; ``think-while-reading``: the output is silent before
    ``E``; ``rewrite`` (LLM rewrites, :mod:`~multistream.data.rewrite`): the output may speak
    before ``E`` (its chunks were judged), thinking may not.

    Args:
        grid: a grid made by :func:`convert_examples` or the rewrite (its meta names the policy).
        tokenizer: the tokenizer of its ids.

    Returns:
        human-readable problems; empty when the grid keeps its guarantee.
    """
    problems: list[str] = []
    policy = GUARANTEES.get(grid.meta.get("policy"))  # type: ignore[arg-type]
    if policy is None:
        return [f"grid meta names no known policy (got {grid.meta.get('policy')!r})"]
    schema = grid.schema
    eos = tokenizer.eos_token_id
    end = input_end_row(grid)
    silent = grid.silent()
    for c in schema.generated_indices:
        name = schema.names[c]
        rows = (~silent[:, c]).nonzero().flatten().tolist()
        if not rows:
            continue
        col = grid.ids[:, c].tolist()
        eos_rows = [r for r in rows if col[r] == eos]
        if eos_rows != [rows[-1]]:
            problems.append(f"stream {name!r}: expected one end token as its last cell, got rows {eos_rows}")
        if rows[0] < end:
            # Only the first output stream carries the answer (and so a bridging or rewrite).
            role = schema.streams[c].role
            if role is Role.OUTPUT and c != schema.output_indices[0]:
                problems.extend(_nothing_early(grid, c, tokenizer))
            else:
                problems.extend(policy.early_check(role)(grid, c, tokenizer))
    problems.extend(str(v) for v in lexical_violations(grid, tokenizer))
    return problems
