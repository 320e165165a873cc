"""Layout B converters: :class:`SequentialExample` -> :class:`~multistream.data.blocks_io.BlocksRecord`.

Same loaders and policies as the grid converters (:mod:`~multistream.data.convert`), laid out as
the paper's Sec 5/6 models read them (spec §2.5): a system block (stream 0, visible to all), a
user block (stream 1, streamed) and H assistant heads (stream ``2 + h``), each a ChatML block
with its own step counter ``y`` starting at ``y0`` (the system block's length).

**When a head may use a user token.** A head token at block position ``p`` is predicted from
its predecessor at ``y0 + p - 1``, which sees user tokens at steps strictly before that: user
block positions ``<= p - 2``. Layout B has no silence, so a head that must wait says something
content-free meanwhile: bridging utterances (:data:`~multistream.data.convert.BRIDGING_UTTERANCES`,
starting at the one :func:`~multistream.data.convert.bridging_for` picks, then cycling) until
the text it is about to say may use what it needs. Policies (``multistream convert --layout
blocks --policy NAME``):

``wait-k`` (H = 1)
    The assistant bridges from its first token until the whole user block (``<|im_end|>``
    included) is visible, then answers. ``k`` does not apply: with no silence the assistant
    speaks from its first step, and this is the earliest start at which an answer that uses the
    whole input leaks nothing from the future.
``think-while-reading`` (H = 2)
    Head 0 thinks: step ``j`` of the rationale starts once the user sentences holding its key
    terms (numbers, rare words) are visible and step ``j-1`` is said, bridging in between.
    Head 1 answers once the input and all of head 0 (its ``<|im_end|>``) are visible.
``separated`` (H = 1, spec §5.2 / Sec 6)
    Instruction (``system`` and ``user`` fields) in the system block, the untrusted ``data`` in
    the user block; the assistant bridges until the data is read, then answers.

``sequential`` has no Layout B form (waiting without silence *is* bridging: use ``wait-k``).
System text is ordinary BPE (the whole block is known before decoding starts); user text is
tokenised as live input (``" " + word``), exactly as a live session tokenises what it is fed;
head text is ordinary BPE, one piece per utterance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .blocks_io import BlocksRecord, BlockText, Piece, chatml_ids
from .causality import key_terms
from .convert import (
    _SENTENCE_END_RE,
    BRIDGING_UTTERANCES,
    ConversionError,
    ConvertReport,
    Drop,
    bridging_for,
    get_policy,
)
from .examples import SequentialExample
from .io import GridFileError
from .tokenize import live_words

__all__ = [
    "BLOCKS_PLACEMENTS",
    "DEFAULT_SYSTEM",
    "BlocksContext",
    "UserBlock",
    "check_blocks",
    "convert_blocks_example",
    "convert_blocks_examples",
    "earliest_index",
]

# Spec §3.2: the system message when an example has none.
DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass
class UserBlock:
    """The user block of one example and when each of its words becomes readable.

    Args:
        text: the block text (live pieces).
        length: tokens in the framed block (prefix and ``<|im_end|>`` included).
        prefix_len: tokens of ``<|im_start|>user\\n``.
        ready: for each user key term, the block position after which its first sentence is
            complete (a head may use it from block position ``ready + 2``).
        system_terms: key terms of the system block (visible to every head from the start).
    """

    text: BlockText
    length: int
    prefix_len: int
    ready: dict[str, int]
    system_terms: set[str]


@dataclass
class BlocksContext:
    """What a Layout B placement needs: the tokenizer and each head's prefix length."""

    tokenizer: Any
    head_prefix_len: int

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def earliest_index(position: int, ctx: BlocksContext) -> int:
    """The first head *content* index whose prediction sees block position ``position`` of another
    stream (user or head): ``y0 + prefix + j - 1 > y0 + position``."""
    return max(0, position + 2 - ctx.head_prefix_len)


class _Head:
    """One head's pieces as they are placed, with its length in tokens."""

    def __init__(self, example: SequentialExample, ctx: BlocksContext) -> None:
        self.ctx = ctx
        self.pieces: list[Piece] = []
        self.length = 0  # content tokens so far
        self.bridging: list[str] = []
        self._next = BRIDGING_UTTERANCES.index(bridging_for(example))

    def say(self, text: str, sep: str = " ") -> None:
        text = (sep if self.pieces else "") + text
        self.pieces.append(Piece(text))
        self.length += len(self.ctx.encode(text))

    def bridge_until(self, index: int) -> None:
        """Bridging utterances until the content reaches ``index`` tokens (or more)."""
        while self.length < index:
            utterance = BRIDGING_UTTERANCES[self._next % len(BRIDGING_UTTERANCES)]
            self._next += 1
            self.bridging.append(utterance)
            self.say(utterance)

    def block(self) -> BlockText:
        return BlockText("assistant", tuple(self.pieces))


# A placement: (heads, meta entries).
BlocksPlaceFn = Callable[
    [SequentialExample, UserBlock, BlocksContext], tuple[list[BlockText], dict[str, Any]]
]
# Per policy name: the example fields that go to the system block (the rest form the user block),
# whether the placement reads key-term readiness (costly: every input word is looked up), and
# the placement itself.
BLOCKS_PLACEMENTS: dict[str, tuple[tuple[str, ...], bool, BlocksPlaceFn]] = {}


def _register(
    name: str, system_fields: tuple[str, ...], needs_terms: bool = False
) -> Callable[[BlocksPlaceFn], BlocksPlaceFn]:
    get_policy(name)  # a Layout B form of an existing policy only

    def wrap(place: BlocksPlaceFn) -> BlocksPlaceFn:
        BLOCKS_PLACEMENTS[name] = (system_fields, needs_terms, place)
        return place

    return wrap


def _answer(example: SequentialExample, with_thinking: bool) -> str:
    text = (example.conclusion or example.assistant) if with_thinking else example.assistant
    if not text.strip():
        raise Drop("empty_output", "the example has no response text")
    return text.strip()


@_register("wait-k", ("system",))
def _wait_k(example: SequentialExample, user: UserBlock, ctx: BlocksContext) -> tuple[list[BlockText], dict]:
    head = _Head(example, ctx)
    answer_from = earliest_index(user.length - 1, ctx)  # the user's <|im_end|> is visible
    head.bridge_until(answer_from)
    answer_from = head.length
    head.say(_answer(example, with_thinking=False))
    return [head.block()], {"answer_from": [answer_from], "bridging": [head.bridging]}


@_register("separated", ("system", "user"))
def _separated(
    example: SequentialExample, user: UserBlock, ctx: BlocksContext
) -> tuple[list[BlockText], dict]:
    return _wait_k(example, user, ctx)


@_register("think-while-reading", ("system",), needs_terms=True)
def _think_while_reading(
    example: SequentialExample, user: UserBlock, ctx: BlocksContext
) -> tuple[list[BlockText], dict]:
    if not example.has_thinking:
        raise Drop("no_thinking", "the example has no rationale to think with")
    answer = _answer(example, with_thinking=True)
    think = _Head(example, ctx)
    input_read = earliest_index(user.length - 1, ctx)
    steps = list(example.steps) or [example.thinking.strip()]
    # Steps are separated as in the rationale: lines (GSM8K) or sentences (MATH500).
    sep = "\n" if example.thinking.strip() == "\n".join(example.steps) else " "
    starts: list[int] = []
    for step in steps:
        terms = key_terms(step, ctx.tokenizer) - user.system_terms
        need = max((earliest_index(user.ready[t], ctx) for t in terms if t in user.ready), default=0)
        if not example.steps:
            need = input_read  # a rationale without steps may use anything: wait for the input
        bridged = len(think.bridging)
        think.bridge_until(need)
        # A step right after the previous one keeps the rationale's separator; after bridging, a space.
        follows_step = bool(starts) and len(think.bridging) == bridged
        starts.append(think.length)
        think.say(step, sep if follows_step else " ")
    early = sum(s < input_read for s in starts)
    # The answer head reads head 0 (same prefix length, so the same rule) and the input.
    think_len = ctx.head_prefix_len + think.length + 1  # framed: prefix + content + <|im_end|>
    out = _Head(example, ctx)
    out.bridge_until(max(input_read, earliest_index(think_len - 1, ctx)))
    answer_from = out.length
    out.say(answer)
    meta = {
        "answer_from": [None, answer_from],
        "bridging": [think.bridging, out.bridging],
        "think_steps": len(example.steps),
        "early_steps": early,
    }
    return [think.block(), out.block()], meta


def _user_block(
    example: SequentialExample, system_fields: tuple[str, ...], needs_terms: bool, ctx: BlocksContext
) -> tuple[BlockText, UserBlock]:
    """(system block, user block with readiness) for the routing of a policy."""
    tok = ctx.tokenizer
    fields = example.input_fields()
    system_text = "\n\n".join(text for name, text in fields if name in system_fields)
    user_text = "\n\n".join(text for name, text in fields if name not in system_fields)
    if not system_text and not user_text:
        raise Drop("empty_input", "the example has no input text")
    system = BlockText("system", (Piece(system_text or DEFAULT_SYSTEM),))
    prefix, _ = chatml_ids("user", tok)
    pos = len(prefix)
    ready: dict[str, int] = {}
    pending: list[str] = []
    for w in live_words(user_text, tok):
        pos += len(w.ids)
        if not needs_terms:
            continue
        pending.append(w.text)
        if _SENTENCE_END_RE.search(w.text):
            for text in pending:
                for term in key_terms(text, tok):
                    ready.setdefault(term, pos - 1)
            pending = []
    for text in pending:
        for term in key_terms(text, tok):
            ready.setdefault(term, pos - 1)
    user = BlockText("user", (Piece(user_text, live=True),) if user_text else ())
    system_terms = key_terms(system.text, tok) if needs_terms else set()
    return system, UserBlock(user, pos + 1, len(prefix), ready, system_terms)


def convert_blocks_example(
    example: SequentialExample, policy: str, tokenizer: Any, max_tokens: int | None = None
) -> BlocksRecord:
    """Convert one example to Layout B; raises :class:`~multistream.data.convert.Drop` when the
    policy rejects it.

    Args:
        example: the example.
        policy: ``wait-k``, ``think-while-reading`` or ``separated`` (module docstring).
        tokenizer: a tokenizer with ChatML tokens (``<|im_start|>``, ``<|im_end|>``).
        max_tokens: drop (``too_long``) examples whose blocks hold more tokens in all.

    Returns:
        the record; ``meta`` holds ``source``, ``id``, ``policy``, per head ``answer_from``
        (content index where the answer starts, None for a thinking head) and ``bridging``
        (utterances said while waiting), and the gold ``answer``.
    """
    get_policy(policy)
    if policy not in BLOCKS_PLACEMENTS:
        raise ConversionError(
            f"policy {policy!r} has no Layout B form: Layout B has no silence, so waiting is bridging text "
            f"(use --policy wait-k for an answer after the input); Layout B policies: "
            f"{', '.join(sorted(BLOCKS_PLACEMENTS))}"
        )
    system_fields, needs_terms, place = BLOCKS_PLACEMENTS[policy]
    try:
        prefix, _ = chatml_ids("assistant", tokenizer)
    except GridFileError as e:
        raise ConversionError(str(e)) from None
    ctx = BlocksContext(tokenizer, len(prefix))
    system, user = _user_block(example, system_fields, needs_terms, ctx)
    heads, extra = place(example, user, ctx)
    meta: dict[str, Any] = {"source": example.source, "id": example.id, "policy": policy, **extra}
    meta["answer"] = example.answer
    if example.meta:
        meta["example"] = example.meta
    record = BlocksRecord.tokenize(system, user.text, heads, tokenizer, meta)
    if max_tokens is not None and record.example.num_tokens > max_tokens:
        raise Drop("too_long", f"{record.example.num_tokens} tokens > max_tokens={max_tokens}")
    return record


def convert_blocks_examples(
    examples: Iterable[SequentialExample],
    policy: str = "wait-k",
    tokenizer: Any = "smollm2-135m",
    max_tokens: int | None = None,
    report: ConvertReport | None = None,
) -> list[BlocksRecord]:
    """Convert sequential examples to Layout B records with one policy; write them with
    :func:`~multistream.data.blocks_io.write_blocks`.

    Raises:
        ConversionError: unknown policy, a policy without Layout B form, or a tokenizer
            without ChatML tokens.
    """
    if isinstance(tokenizer, str):
        from ..base_models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    report = report if report is not None else ConvertReport()
    out = []
    for ex in examples:
        try:
            record = convert_blocks_example(ex, policy, tokenizer, max_tokens)
        except Drop as d:
            report.drop(f"{ex.source}:{ex.id}", d.reason)
            continue
        report.kept += 1
        out.append(record)
    return out


# -- guarantees ---------------------------------------------------------------------------------


def _words(ids: list[int], tokenizer: Any) -> list[tuple[str, int]]:
    """(word, index of its first token) of generated ids; a word starts at a token with leading
    whitespace."""
    words: list[tuple[str, int]] = []
    for i, t in enumerate(ids):
        piece = tokenizer.decode([t])
        if not words or piece[:1].isspace():
            words.append((piece, i))
        else:
            words[-1] = (words[-1][0] + piece, words[-1][1])
    return words


def _is_bridging(text: str) -> bool:
    """``text`` is bridging utterances joined by single spaces."""
    rest = text
    while rest:
        match = next((u for u in BRIDGING_UTTERANCES if rest.startswith(u)), None)
        if match is None:
            return False
        rest = rest[len(match) :]
        if rest and not rest.startswith(" "):
            return False
        rest = rest[1:]
    return True


def check_blocks(record: BlocksRecord, tokenizer: Any) -> list[str]:
    """Check a converted record against its policy's guarantee.

    Every head ends with exactly one ``<|im_end|>``; before its ``answer_from`` an answering
    head says only bridging utterances and it answers only once the whole user block (and, with
    H = 2, the thinking head) is visible; no head mentions a user key term before the sentence
    introducing it is visible.

    Returns:
        human-readable problems; empty when the record keeps its guarantee.
    """
    ex = record.example
    meta = ex.meta
    problems: list[str] = []
    _, end = chatml_ids("assistant", tokenizer)
    ctx = BlocksContext(tokenizer, 0)
    if meta.get("policy") not in BLOCKS_PLACEMENTS:
        return [f"meta names no Layout B policy (got {meta.get('policy')!r})"]
    # Readiness from the stored ids: a term is readable after the sentence holding it.
    user_prefix = len(chatml_ids("user", tokenizer)[0])
    user_words = _words(ex.user[user_prefix:-1], tokenizer)
    ready: dict[str, int] = {}
    sentence: list[str] = []
    for i, (word, _) in enumerate(user_words):
        nxt = user_words[i + 1][1] if i + 1 < len(user_words) else len(ex.user) - 1 - user_prefix
        sentence.append(word)
        if _SENTENCE_END_RE.search(word.strip()) or i + 1 == len(user_words):
            for w in sentence:
                for term in key_terms(w, tokenizer):
                    ready.setdefault(term, user_prefix + nxt - 1)
            sentence = []
    system_terms = key_terms(tokenizer.decode(ex.system), tokenizer)
    answer_from = meta.get("answer_from", [])
    for h, (ids, start) in enumerate(zip(ex.heads, ex.targets_from, strict=True)):
        ctx.head_prefix_len = start
        if ids.count(end) != 1 or ids[-1] != end:
            problems.append(f"head {h}: expected one <|im_end|> as its last token")
        content = ids[start:-1]
        a = answer_from[h] if h < len(answer_from) else None
        if a is not None:
            said = tokenizer.decode(content[:a])
            if not _is_bridging(said):
                problems.append(f"head {h}: before its answer it says {said!r}, not bridging utterances")
            waits = [earliest_index(len(ex.user) - 1, ctx)]
            if h > 0:
                waits.extend(earliest_index(len(ex.heads[g]) - 1, ctx) for g in range(h))
            if a < max(waits):
                problems.append(f"head {h}: answers at index {a}, before the input is visible ({max(waits)})")
        for word, i in _words(content, tokenizer):
            for term in sorted(key_terms(word, tokenizer) - system_terms):
                if term in ready and i < earliest_index(ready[term], ctx):
                    problems.append(
                        f"head {h}: {word.strip()!r} at index {i} mentions {term!r} before it is visible "
                        f"(index {earliest_index(ready[term], ctx)})"
                    )
    return problems
