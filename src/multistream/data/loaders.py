"""Loaders: dataset files -> :class:`SequentialExample`, one registered format per dataset.

Formats (``multistream convert --format NAME``; :data:`FORMATS` lists them):

========== ====================================================================================
alpaca     JSON list of ``{instruction, input, output}`` (input -> ``data``)
chat       OpenAI-style JSONL ``{"messages": [{"role", "content"}, ...]}``, one user turn
squad      SQuAD JSONL ``{id, context, question, answers}`` (v1.1; v2.0 unanswerable -> skipped)
gsm8k      GSM8K JSONL ``{question, answer}`` (rationale lines -> steps)
math500    MATH500 JSONL ``{problem, solution, answer}`` (solution sentences -> steps)
logicnli   LogicNLI JSON ``{world: {facts, rules, statements, labels}}`` (one example per statement)
proofwriter ProofWriter JSON list ``{id, context, question, options, answer}``
pubmedqa   PubMedQA PQA-L JSON ``{pmid: {QUESTION, CONTEXTS, final_decision, LONG_ANSWER}}``
struq      StruQ/SecAlign AlpacaFarm JSON list ``{instruction, input, output}`` (input -> ``data``)
sep        SEP JSON list ``{instruction_only, input, injection, witness, output}``
========== ====================================================================================

A malformed record raises :class:`DatasetError` naming file, line (or record), field and fix;
with ``skip_bad=True`` it is counted in the :class:`LoadReport` instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import prompts
from .examples import SequentialExample

__all__ = [
    "FORMATS",
    "DatasetError",
    "DatasetFormat",
    "LoadReport",
    "iter_dataset_file",
    "load_dataset_file",
    "register_format",
    "split_sentences",
]


class DatasetError(ValueError):
    """A dataset file or record is malformed; the message names file, line/record and field."""


@dataclass
class LoadReport:
    """What a load kept and skipped (``skipped`` holds ``(where, message)``)."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


# A reader yields (where, raw record); a parser turns one raw record into examples.
Reader = Callable[[Path], Iterator[tuple[str, Any]]]
Parser = Callable[[Any, str], list[SequentialExample]]


@dataclass(frozen=True)
class DatasetFormat:
    """A registered dataset format.

    Args:
        name: the ``--format`` value.
        description: one line for ``--help`` and docs.
        read: yields ``(where, raw_record)``; ``where`` is ``"file:line"`` or ``"file record N"``.
        parse: turns one raw record into examples (several for LogicNLI worlds), raising
            :class:`DatasetError` with ``where`` in the message.
    """

    name: str
    description: str
    read: Reader
    parse: Parser


FORMATS: dict[str, DatasetFormat] = {}


def register_format(name: str, description: str, read: Reader) -> Callable[[Parser], Parser]:
    """Decorator registering ``parse`` under ``name``; a duplicate name is an error."""

    def wrap(parse: Parser) -> Parser:
        if name in FORMATS:
            raise ValueError(f"dataset format {name!r} is already registered")
        FORMATS[name] = DatasetFormat(name, description, read, parse)
        return parse

    return wrap


# -- readers ------------------------------------------------------------------------------------


def _check_text_file(path: Path) -> None:
    """Fail early, whatever ``skip_bad`` says, on a file that is not text at all (an archive,
    an image, a model file): skipping every "line" of it would only hide the mistake."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise DatasetError(
            f"{path}: this is a binary file, not UTF-8 JSON text; give the dataset's .json or .jsonl file "
            "(unpack archives first)"
        )


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    where,
                    DatasetError(f"{where}: not UTF-8 text (byte {e.start + 1}); save the file as UTF-8"),
                )
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DatasetError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield where, DatasetError(f"{where}: the JSON nests too deep to be a record")


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg}); this format expects one JSON document"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start + 1}); save the file as UTF-8") from None
    except RecursionError:
        raise DatasetError(f"{path}: the JSON nests too deep to be a dataset") from None


def _read_json_list(path: Path) -> Iterator[tuple[str, Any]]:
    doc = _load_json(path)
    if not isinstance(doc, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got a {type(doc).__name__}")
    for i, rec in enumerate(doc):
        yield f"{path} record {i}", rec


def _read_json_object(path: Path) -> Iterator[tuple[str, Any]]:
    doc = _load_json(path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object keyed by id, got a {type(doc).__name__}")
    for key, rec in doc.items():
        yield f"{path} key {key!r}", (key, rec)


# -- field access with useful errors ------------------------------------------------------------


def _field(
    rec: Any, name: str, where: str, kind: type | tuple[type, ...] = str, optional: bool = False
) -> Any:
    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if name not in rec or rec[name] is None:
        if optional:
            return None
        raise DatasetError(f"{where}: missing field {name!r}; add it or pass --skip-bad to skip this record")
    value = rec[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetError(
            f"{where}: field {name!r} must be {want}, got {type(value).__name__}; fix the record or "
            "pass --skip-bad"
        )
    return value


def _nonempty(value: str, name: str, where: str) -> str:
    if not value.strip():
        raise DatasetError(f"{where}: field {name!r} is empty; fill it or pass --skip-bad")
    return value


def _record_id(where: str) -> str:
    """A stable id from a location: the line or record number."""
    return where.rsplit(":", 1)[-1] if ":" in where.rsplit(" ", 1)[-1] else where.rsplit(" ", 1)[-1]


# -- formats ------------------------------------------------------------------------------------


@register_format("alpaca", "Alpaca JSON list {instruction, input, output}", _read_json_list)
def _parse_alpaca(rec: Any, where: str) -> list[SequentialExample]:
    instruction = _nonempty(_field(rec, "instruction", where), "instruction", where)
    data = _field(rec, "input", where, optional=True) or ""
    output = _field(rec, "output", where, (str, list))
    if isinstance(output, list):  # the released processor also accepts a list; the first is the answer
        if not output or not isinstance(output[0], str):
            raise DatasetError(f"{where}: field 'output' is a list but its first item is not a string")
        output = output[0]
    system = _field(rec, "system", where, optional=True) or ""
    return [
        SequentialExample(
            id=_record_id(where),
            source="alpaca",
            system=system,
            user=instruction,
            data=data,
            assistant=_nonempty(output, "output", where).strip(),
        )
    ]


def _parse_messages(rec: Any, where: str) -> list[SequentialExample]:
    messages = _field(rec, "messages", where, list)
    system, users, assistants, thinking = [], [], [], ""
    for i, m in enumerate(messages):
        role = _field(m, "role", f"{where} messages[{i}]")
        content = _field(m, "content", f"{where} messages[{i}]")
        if role == "system":
            system.append(content)
        elif role == "user":
            if len(users) > len(assistants):
                raise DatasetError(f"{where} messages[{i}]: two user turns in a row; merge them")
            users.append(content)
        elif role == "assistant":
            assistants.append(content)
            thinking = _field(m, "reasoning_content", f"{where} messages[{i}]", optional=True) or ""
        else:
            raise DatasetError(
                f"{where} messages[{i}]: role {role!r} is not supported; use system, user or assistant"
            )
    if len(users) != 1 or len(assistants) != 1:
        raise DatasetError(
            f"{where}: field 'messages' has {len(users)} user and {len(assistants)} assistant turns; "
            "only single-turn chats (one user, one assistant message) convert for now"
        )
    rid = rec.get("id", _record_id(where))
    return [
        SequentialExample(
            id=str(rid),
            source="chat",
            system="\n\n".join(system),
            user=_nonempty(users[0], "messages.user.content", where),
            assistant=_nonempty(assistants[0], "messages.assistant.content", where).strip(),
            thinking=thinking.strip(),
            conclusion=assistants[0].strip() if thinking.strip() else "",
        )
    ]


register_format("chat", "OpenAI-style chat JSONL {messages: [{role, content}]}", _read_jsonl)(_parse_messages)


@register_format("squad", "SQuAD JSONL {id, context, question, answers}", _read_jsonl)
def _parse_squad(rec: Any, where: str) -> list[SequentialExample]:
    context = _nonempty(_field(rec, "context", where), "context", where)
    question = _nonempty(_field(rec, "question", where), "question", where)
    answers = _field(rec, "answers", where, list)
    if not answers:
        # v2.0 unanswerable questions have no span to train on.
        raise DatasetError(f"{where}: field 'answers' is empty (unanswerable question); pass --skip-bad")
    if not isinstance(answers[0], str):
        raise DatasetError(f"{where}: field 'answers' must be a list of strings")
    return [
        SequentialExample(
            id=str(_field(rec, "id", where)),
            source="squad",
            user=prompts.squad_prompt(context, question),
            assistant=prompts.squad_response(answers[0]),
            answer=answers[0].strip(),
            meta={"answers": answers, "title": rec.get("title", "")},
        )
    ]


_CALC_RE = re.compile(r"<<[^>]*>>")


@register_format("gsm8k", "GSM8K JSONL {question, answer} (#### final)", _read_jsonl)
def _parse_gsm8k(rec: Any, where: str) -> list[SequentialExample]:
    question = _nonempty(_field(rec, "question", where), "question", where)
    solution = _field(rec, "answer", where)
    rationale, sep, final = solution.rpartition("####")
    if not sep or not final.strip():
        raise DatasetError(f"{where}: field 'answer' has no '#### <final answer>' line; fix or --skip-bad")
    # The <<calc>> annotations are calculator hints, not text a model should write.
    steps = tuple(s.strip() for s in _CALC_RE.sub("", rationale).splitlines() if s.strip())
    conclusion = prompts.math_response(final.strip())
    thinking = "\n".join(steps)
    return [
        SequentialExample(
            id=_record_id(where),
            source="gsm8k",
            user=prompts.math_prompt(question, integer=True),
            assistant=f"{thinking}\n{conclusion}" if thinking else conclusion,
            thinking=thinking,
            steps=steps,
            conclusion=conclusion,
            answer=final.strip(),
        )
    ]


# Sentence ends outside LaTeX: a period followed by whitespace and a capital, or a blank line.
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])|\n\s*\n")


def split_sentences(text: str) -> tuple[str, ...]:
    """Split prose into sentences (at ``.!?`` + capital, or blank lines), never inside ``$...$``."""
    pieces, depth_ok = [], []
    for part in _SENTENCE_RE.split(text):
        # Never split inside $...$ math: re-join while the dollar count is odd.
        if depth_ok and depth_ok[-1].count("$") % 2:
            depth_ok[-1] = depth_ok[-1] + " " + part
        else:
            depth_ok.append(part)
    for p in depth_ok:
        if p.strip():
            pieces.append(p.strip())
    return tuple(pieces)


@register_format("math500", "MATH500 JSONL {problem, solution, answer}", _read_jsonl)
def _parse_math500(rec: Any, where: str) -> list[SequentialExample]:
    problem = _nonempty(_field(rec, "problem", where), "problem", where)
    solution = _nonempty(_field(rec, "solution", where), "solution", where)
    answer = _nonempty(_field(rec, "answer", where), "answer", where)
    conclusion = prompts.math_response(answer)
    return [
        SequentialExample(
            id=str(rec.get("unique_id") or _record_id(where)),
            source="math500",
            user=prompts.math_prompt(problem, integer=False),
            assistant=f"{solution.strip()}\n{conclusion}",
            thinking=solution.strip(),
            steps=split_sentences(solution),
            conclusion=conclusion,
            answer=answer.strip(),
            meta={"subject": rec.get("subject", ""), "level": rec.get("level")},
        )
    ]


@register_format("logicnli", "LogicNLI JSON {world: {facts, rules, statements, labels}}", _read_json_object)
def _parse_logicnli(item: Any, where: str) -> list[SequentialExample]:
    key, world = item
    facts = _field(world, "facts", where, list)
    rules = _field(world, "rules", where, list)
    statements = _field(world, "statements", where, list)
    labels = _field(world, "labels", where, list)
    if len(statements) != len(labels):
        raise DatasetError(
            f"{where}: 'statements' has {len(statements)} items but 'labels' has {len(labels)}"
        )
    premise = " ".join(str(s).strip() for s in [*facts, *rules])
    out = []
    for i, (statement, label) in enumerate(zip(statements, labels, strict=True)):
        if label not in prompts.LOGICNLI_LABELS:
            raise DatasetError(
                f"{where}: labels[{i}] is {label!r}; expected one of {', '.join(prompts.LOGICNLI_LABELS)}"
            )
        out.append(
            SequentialExample(
                id=f"{key}-{i}",
                source="logicnli",
                user=prompts.nli_prompt(premise, str(statement)),
                assistant=prompts.nli_response(label),
                answer=label,
            )
        )
    return out


@register_format("proofwriter", "ProofWriter JSON list {id, context, question, answer}", _read_json_list)
def _parse_proofwriter(rec: Any, where: str) -> list[SequentialExample]:
    context = _nonempty(_field(rec, "context", where), "context", where)
    question = _nonempty(_field(rec, "question", where), "question", where)
    letter = _field(rec, "answer", where)
    if letter not in prompts.PROOFWRITER_VALUES:
        raise DatasetError(f"{where}: field 'answer' is {letter!r}; expected A, B or C")
    # "Based on the above information, is the following statement true, false, or unknown? X."
    conclusion = question.rsplit("?", 1)[-1].strip() or question
    value = prompts.PROOFWRITER_VALUES[letter]
    return [
        SequentialExample(
            id=str(_field(rec, "id", where)),
            source="proofwriter",
            user=prompts.proofwriter_prompt(context, conclusion),
            assistant=prompts.proofwriter_response(value),
            answer=value,
        )
    ]


@register_format("pubmedqa", "PubMedQA PQA-L JSON {pmid: {QUESTION, CONTEXTS, ...}}", _read_json_object)
def _parse_pubmedqa(item: Any, where: str) -> list[SequentialExample]:
    pmid, rec = item
    question = _nonempty(_field(rec, "QUESTION", where), "QUESTION", where)
    contexts = _field(rec, "CONTEXTS", where, list)
    decision = _field(rec, "final_decision", where)
    if decision not in prompts.PUBMEDQA_VALUES:
        raise DatasetError(f"{where}: field 'final_decision' is {decision!r}; expected yes, no or maybe")
    long_answer = (_field(rec, "LONG_ANSWER", where, optional=True) or "").strip()
    conclusion = prompts.pubmedqa_response(decision)
    return [
        SequentialExample(
            id=str(pmid),
            source="pubmedqa",
            user=prompts.pubmedqa_prompt([str(c) for c in contexts], question),
            assistant=f"{long_answer}\n{conclusion}" if long_answer else conclusion,
            thinking=long_answer,
            conclusion=conclusion,
            answer=decision,
            meta={"year": rec.get("YEAR", "")},
        )
    ]


@register_format("struq", "StruQ/SecAlign AlpacaFarm JSON list {instruction, input, output}", _read_json_list)
def _parse_struq(rec: Any, where: str) -> list[SequentialExample]:
    instruction = _field(rec, "instruction_only", where, optional=True) or _field(rec, "instruction", where)
    data = _field(rec, "input", where, optional=True) or ""
    # 5 of the 805 reference outputs are empty; the records still serve evaluation (converters
    # drop them as ``empty_output``).
    output = _field(rec, "output", where, optional=True) or ""
    return [
        SequentialExample(
            id=_record_id(where),
            source="struq",
            user=_nonempty(instruction, "instruction", where),
            data=data,
            assistant=output.strip(),
            # Only records with data can carry an injected instruction (spec §5.2).
            meta={"injectable": bool(data.strip())},
        )
    ]


@register_format(
    "sep", "SEP JSON list {instruction_only, input, injection, witness, output}", _read_json_list
)
def _parse_sep(rec: Any, where: str) -> list[SequentialExample]:
    instruction = _nonempty(_field(rec, "instruction_only", where), "instruction_only", where)
    data = _nonempty(_field(rec, "input", where), "input", where)
    output = _nonempty(_field(rec, "output", where), "output", where)
    return [
        SequentialExample(
            id=_record_id(where),
            source="sep",
            user=instruction,
            data=data,
            assistant=output.strip(),
            meta={
                "injection": _field(rec, "injection", where),
                "witness": _field(rec, "witness", where),
                "task": rec.get("task_key_word", ""),
            },
        )
    ]


# -- public entry -------------------------------------------------------------------------------


def iter_dataset_file(
    path: str | os.PathLike[str],
    format: str,
    *,
    skip_bad: bool = False,
    report: LoadReport | None = None,
) -> Iterator[SequentialExample]:
    """Yield the examples of one dataset file lazily (see :func:`load_dataset_file`)."""
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; choose one of {', '.join(sorted(FORMATS))}")
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    _check_text_file(path)
    fmt = FORMATS[format]
    for where, raw in fmt.read(path):
        try:
            if isinstance(raw, DatasetError):
                raise raw
            examples = fmt.parse(raw, where)
        except DatasetError as e:
            if not skip_bad:
                raise
            if report is not None:
                report.skipped.append((where, str(e)))
            continue
        if report is not None:
            report.loaded += len(examples)
        yield from examples


def load_dataset_file(
    path: str | os.PathLike[str],
    format: str,
    *,
    skip_bad: bool = False,
    limit: int | None = None,
    report: LoadReport | None = None,
) -> list[SequentialExample]:
    """Load a dataset file into sequential examples.

    Args:
        path: the file (e.g. ``../shared/data/gsm8k/test.jsonl``).
        format: a registered format name (:data:`FORMATS`): ``alpaca``, ``chat``, ``squad``,
            ``gsm8k``, ``math500``, ``logicnli``, ``proofwriter``, ``pubmedqa``, ``struq``, ``sep``.
        skip_bad: count malformed records in ``report`` instead of raising.
        limit: keep at most this many examples (the first ones, in file order).
        report: filled with loaded and skipped counts when given.

    Returns:
        the examples, in file order.

    Raises:
        DatasetError: unknown format, missing file, or (without ``skip_bad``) a malformed record;
            the message names file, line or record, and field.

    Example:
        >>> examples = load_dataset_file("../shared/data/gsm8k/test.jsonl", "gsm8k")  # doctest: +SKIP
        >>> examples[0].answer                                                      # doctest: +SKIP
        '18'
    """
    out: list[SequentialExample] = []
    for ex in iter_dataset_file(path, format, skip_bad=skip_bad, report=report):
        if limit is not None and len(out) >= limit:
            break
        out.append(ex)
    return out
