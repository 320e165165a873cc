"""Reacting to new input while writing (issue 12 item 4): a user corrects the request while the
answer streams, and the rest of the answer must honour the correction.

Held-out set: ``evaluation/data/interrupt_heldout.jsonl`` (``scripts/build_demo_interrupt.py``
writes it with parameters and some phrasings that no training example uses). Each item is a
request, a correction, ``after_tokens`` (how many answer tokens have been written when the user
starts typing the correction) and a **programmatic check** of the text written after it.

The two systems, both greedy, on the same items:

* **multi-stream** (``--model``): the request is fed to a live :class:`~multistream.engine.Session`
  one token per row (lockstep), then closed; once the assistant has written ``after_tokens``
  tokens the user stream is reopened and the correction streams in, one token per row, while
  the model keeps decoding. The *post-correction text* is what the assistant writes from the
  first row that can have read the whole correction (two rows after its last token: a cell is
  predicted one row ahead and never sees its own row's peers), to its end token.
* **sequential** (``--baseline``, the twin): a chat. It answers the request in full (it cannot be
  interrupted), then reads the correction as a new user turn and continues; the continuation
  is the post-correction text.

The check (:func:`honours`) depends on the family: ``contains`` (every ``must`` group has one
alternative present as a whole word; no ``must_not`` string present), ``sequence`` (the expected
integers appear consecutively among the text's integers), ``numbered`` (``1. item``, ``2. item``,
... in order), ``order`` (the items of a known list that the text names are exactly the expected
ones, in order).

Reaction time: from the moment the correction's first token arrives to the first honouring
output (the end of the earliest matched key, :func:`honour_offset`). Multi-stream: rows (one
forward each; the correction's own rows included) and seconds. Sequential: tokens =
``max(answer tokens still to write, correction tokens still to type) + continuation tokens``,
seconds likewise (typing time: the multi-stream run's mean seconds per row).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HELDOUT_FILE",
    "InterruptOptions",
    "evaluate_interrupt",
    "honour_offset",
    "honours",
    "load_items",
]

HELDOUT_FILE = Path(__file__).parent / "data" / "interrupt_heldout.jsonl"
_INT = re.compile(r"(?<![\w.])-?\d+(?![\w])")


def _find(needle: str, text: str, case: bool = False) -> re.Match[str] | None:
    """First whole-word occurrence (letters/digits may not touch either end)."""
    flags = 0 if case else re.IGNORECASE
    needle = re.sub(r"\s+", " ", needle.strip())
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(p) for p in needle.split(" ")) + r"(?!\w)"
    return re.search(pattern, text, flags)


def _contains(check: dict[str, Any], text: str) -> tuple[bool, int | None]:
    case = bool(check.get("case", False))
    ends: list[int] = []
    for group in check["must"]:
        hits = [m for alt in group if (m := _find(alt, text, case))]
        if not hits:
            return False, None
        ends.append(min(m.end() for m in hits))
    if any(_find(bad, text, case) for bad in check.get("must_not", [])):
        return False, None
    return True, min(ends) if ends else 0


def _sequence(check: dict[str, Any], text: str) -> tuple[bool, int | None]:
    """The expected integers, consecutively, and no other integer after them; integers before
    them only in a lead-in that ends with a colon ("Sure, from 12 to 20: 12, 13, ...")."""
    want = [int(v) for v in check["numbers"]]
    found = [(int(m.group()), m.start(), m.end()) for m in _INT.finditer(text)]
    values = [v for v, _, _ in found]
    for i in range(len(values) - len(want) + 1):
        if values[i : i + len(want)] != want or i + len(want) != len(values):
            continue
        if i == 0 or ":" in text[found[i - 1][2] : found[i][1]]:
            return True, found[i][2]
    return False, None


def _numbered(check: dict[str, Any], text: str) -> tuple[bool, int | None]:
    first = None
    pos = 0
    for k, item in enumerate(check["items"], start=1):
        m = re.compile(rf"(?<!\d){k}[.)]\s*{re.escape(item)}(?!\w)", re.IGNORECASE).search(text, pos)
        if m is None:
            return False, None
        first = m.end() if first is None else first
        pos = m.end()
    return True, first


def _order(check: dict[str, Any], text: str) -> tuple[bool, int | None]:
    universe = check.get("universe") or check["items"]
    named = []  # every mention of a list item, in order of appearance
    for item in universe:
        pattern = re.compile(r"(?<!\w)" + re.escape(item) + r"(?!\w)", re.IGNORECASE)
        named += [(m.start(), m.end(), item.lower()) for m in pattern.finditer(text)]
    named.sort()
    if [item for _, _, item in named] != [i.lower() for i in check["items"]]:
        return False, None
    return True, named[0][1] if named else 0


_CHECKS = {"contains": _contains, "sequence": _sequence, "numbered": _numbered, "order": _order}


def _run_check(check: dict[str, Any], text: str) -> tuple[bool, int | None]:
    kind = check.get("type")
    if kind not in _CHECKS:
        raise ValueError(f"unknown interruption check type {kind!r}; expected one of {sorted(_CHECKS)}")
    return _CHECKS[kind](check, text)


def honours(check: dict[str, Any], text: str) -> bool:
    """Whether ``text`` (what was written after the correction) honours it.

    Example:
        >>> honours({"type": "sequence", "numbers": [9, 8, 7]}, "Sure, counting down: 9, 8, 7.")
        True
        >>> honours({"type": "contains", "must": [["Dear Maria"]], "must_not": ["Tom"]}, "Dear Tom, hi!")
        False
    """
    return _run_check(check, text)[0]


def honour_offset(check: dict[str, Any], text: str) -> int | None:
    """Characters of ``text`` up to the end of the first honouring key (the earliest matched
    ``must`` alternative, expected number, or list item), or None when ``text`` does not honour
    the correction."""
    ok, offset = _run_check(check, text)
    return offset if ok else None


def load_items(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The held-out interruptions (default: the packaged file), in file order."""
    path = Path(path) if path is not None else HELDOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with scripts/build_demo_interrupt.py")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            for key in ("id", "request", "correction", "after_tokens", "check"):
                item[key]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path}:{n}: not an interruption item ({e}); rebuild the file") from e
        items.append(item)
    return items[:limit] if limit is not None else items


def _token_at(tokenizer: Any, ids: list[int], offset: int) -> int:
    """Index of the token with which the decoded ``ids`` reach character ``offset``."""
    for i in range(len(ids)):
        if len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) >= offset:
            return i
    return len(ids) - 1


# -- the two systems --------------------------------------------------------------------------------


def run_multistream(runner: Any, item: dict[str, Any], max_rows: int = 160) -> dict[str, Any]:
    """One item through a live session: request, ``after_tokens`` answer tokens, the correction
    fed mid-answer. Returns texts, the post-correction text and the reaction time."""
    import torch

    from ..engine import Session, SessionStopped, tokenize_live

    tok, schema = runner.tokenizer, runner.schema
    user = schema.names[schema.input_indices[0]]
    out_c = schema.index(runner.output_stream)
    silence, eos = schema.require_silence_id(), tok.eos_token_id
    request = [*tokenize_live(tok, item["request"], schema), eos]
    correction = [*tokenize_live(tok, item["correction"], schema), eos]
    session = Session(runner.model, tok, runner.session_config(len(request) + max_rows))
    start_rows = runner.presets.start_rows(schema, tok)
    if start_rows is not None:
        session.prefill(start_rows)
    session.feed(user, request)
    session.close(user, end_token=False)
    before: list[int] = []
    written: list[tuple[int, int, float]] = []  # (row, token, seconds since the correction arrived)
    arrival_row: int | None = None
    arrival_t = 0.0
    row_seconds: list[float] = []
    ended_first = False
    with torch.inference_mode():
        while True:
            if arrival_row is None and (len(before) >= item["after_tokens"] or session.stop is not None):
                ended_first = session.stop is not None
                try:
                    session.reopen(user)
                except SessionStopped:  # stopped for good (max_rows) before the correction came
                    break
                session.feed(user, correction)
                session.close(user, end_token=False)
                arrival_row, arrival_t = len(session.state.rows), time.perf_counter()
            if session.stop is not None:
                break
            began = time.perf_counter()
            row = session.step()
            row_seconds.append(time.perf_counter() - began)
            token = int(row.ids[out_c])
            if token in (silence, eos):
                continue
            if arrival_row is None:
                before.append(token)
            else:
                written.append((row.index, token, time.perf_counter() - arrival_t))
    # The first row that can have read the correction's last token (predicted one row ahead,
    # from a cell that sees only earlier rows).
    reads_all = (arrival_row or 0) + len(correction) + 1
    post = [(r, t, s) for r, t, s in written if r >= reads_all]
    post_ids = [t for _, t, _ in post]
    post_text = tok.decode(post_ids, skip_special_tokens=True)
    offset = honour_offset(item["check"], post_text) if arrival_row is not None else None
    reaction_rows = reaction_s = None
    if offset is not None and post:
        i = _token_at(tok, post_ids, offset)
        reaction_rows = post[i][0] - arrival_row + 1
        reaction_s = post[i][2]
    return {
        "before": tok.decode(before, skip_special_tokens=True),
        "during": tok.decode([t for r, t, _ in written if r < reads_all], skip_special_tokens=True),
        "post": post_text,
        "honoured": offset is not None,
        "reaction_tokens": reaction_rows,
        "reaction_s": reaction_s,
        "correction_tokens": len(correction),
        "ended_before_correction": ended_first,
        "stop": session.stop,
        "row_s": statistics.fmean(row_seconds) if row_seconds else None,
    }


def _generate(lm: Any, tok: Any, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy token ids and the seconds at which each appeared (from the call)."""
    from ..sequential import SequentialBaseline

    began = time.perf_counter()
    ids, times = [], []
    baseline = SequentialBaseline(lm, tok, prompt, max_tokens)
    while (token := baseline.next_token()) is not None:
        ids.append(token)
        times.append(time.perf_counter() - began)
    return ids, times


def run_sequential(
    lm: Any, tok: Any, item: dict[str, Any], row_s: float | None, max_tokens: int = 96
) -> dict[str, Any]:
    """One item as a chat: the whole first answer, then the correction as a new user turn."""
    import torch

    from ..engine import tokenize_live
    from ..sequential import chat_prompt_ids

    with torch.inference_mode():
        first, first_t = _generate(lm, tok, chat_prompt_ids(tok, item["request"]), max_tokens)
        answer = tok.decode(first, skip_special_tokens=True)
        turns = [
            {"role": "user", "content": item["request"]},
            {"role": "assistant", "content": answer.strip()},
            {"role": "user", "content": item["correction"]},
        ]
        cont, cont_t = _generate(lm, tok, chat_prompt_ids(tok, turns), max_tokens)
    k = min(item["after_tokens"], len(first))
    remaining = len(first) - k + 1  # its own end token included
    remaining_s = (first_t[-1] if first_t else 0.0) - (first_t[k - 1] if k > 0 else 0.0)
    typed = len(tokenize_live(tok, item["correction"])) + 1  # the correction and its end token
    post_text = tok.decode(cont, skip_special_tokens=True)
    offset = honour_offset(item["check"], post_text)
    reaction_tokens = reaction_s = None
    if offset is not None and cont:
        i = _token_at(tok, cont, offset)
        reaction_tokens = max(remaining, typed) + i + 1
        typing_s = typed * row_s if row_s is not None else 0.0
        reaction_s = max(remaining_s, typing_s) + cont_t[i]
    return {
        "before": tok.decode(first[:k], skip_special_tokens=True),
        "first_answer": answer,
        "post": post_text,
        "honoured": offset is not None,
        "reaction_tokens": reaction_tokens,
        "reaction_s": reaction_s,
        "remaining_tokens": remaining,
        "correction_tokens": typed,
    }


# -- the evaluation -------------------------------------------------------------------------------


@dataclass
class InterruptOptions:
    """Settings of ``multistream eval interrupt``."""

    model: str
    out: Path
    baseline: str | None = None
    limit: int | None = None
    items: Path | None = None
    max_tokens: int = 96
    threads: int | None = None


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    honoured = [r for r in records if r["honoured"]]
    tokens = [r["reaction_tokens"] for r in honoured]
    seconds = [r["reaction_s"] for r in honoured]
    return {
        "n": n,
        "honoured": len(honoured),
        "honour_rate": len(honoured) / n if n else None,
        "reaction_tokens_median": statistics.median(tokens) if tokens else None,
        "reaction_tokens_mean": statistics.fmean(tokens) if tokens else None,
        "reaction_s_median": statistics.median(seconds) if seconds else None,
        "reaction_s_mean": statistics.fmean(seconds) if seconds else None,
    }


def _by(records: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> dict[str, Any]:
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for m, b in records:
        groups[str(m[key])].append((m, b))
    return {
        k: {"n": len(v), "model": sum(m["honoured"] for m, _ in v) / len(v),
            "baseline": sum(b["honoured"] for _, b in v) / len(v)}
        for k, v in sorted(groups.items())
    }  # fmt: skip


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(text: str, limit: int = 140) -> str:
    text = text.replace("\n", " / ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_interrupt_report(results: dict[str, Any], out: Path) -> Path:
    m, b = results["model"], results["baseline"]
    lines = [
        "# Reacting to new input while writing: interruptions mid-answer",
        "",
        f"- model: `{results['model_name']}` (multi-stream, the correction fed into the live session)",
        f"- baseline: `{results['baseline_name']}` (sequential: reads the correction after its whole answer)",
        f"- items: {m['n']} held-out interruptions (`{results['items_file']}`), greedy, lockstep input",
        f"- torch threads: {results['threads']}; wall time {results['wall_s']:.0f} s",
        "",
        "| | model | baseline |",
        "|---|---|---|",
        f"| honours the correction | {m['honoured']}/{m['n']} ({_fmt(m['honour_rate'])}) | "
        f"{b['honoured']}/{b['n']} ({_fmt(b['honour_rate'])}) |",
        f"| tokens from the correction's arrival to the first honouring output (median / mean) | "
        f"{_fmt(m['reaction_tokens_median'], 1)} / {_fmt(m['reaction_tokens_mean'], 1)} | "
        f"{_fmt(b['reaction_tokens_median'], 1)} / {_fmt(b['reaction_tokens_mean'], 1)} |",
        f"| seconds, the same (median / mean) | {_fmt(m['reaction_s_median'])} / {_fmt(m['reaction_s_mean'])} | "
        f"{_fmt(b['reaction_s_median'])} / {_fmt(b['reaction_s_mean'])} |",
        "",
        "Reaction times are over the items each system honours. Multi-stream: rows from the row that "
        "holds the correction's first token (its own rows included). Sequential: the rest of its first "
        "answer (or the correction's typing, whichever is longer), then its continuation.",
        "",
        "| family | n | model | baseline |",
        "|---|---|---|---|",
    ]
    for k, v in results["by_family"].items():
        lines.append(f"| {k} | {v['n']} | {_fmt(v['model'])} | {_fmt(v['baseline'])} |")
    lines += ["", "| correction phrasing | n | model | baseline |", "|---|---|---|---|"]
    for k, v in results["by_phrasing"].items():
        lines.append(f"| {k} | {v['n']} | {_fmt(v['model'])} | {_fmt(v['baseline'])} |")
    lines += [
        "",
        "## Examples",
        "",
        "| id | request | correction | model: after the correction | ok | baseline: continuation | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["examples"][:12]:
        lines.append(
            f"| {r['id']} | {_cell(r['request'], 60)} | {_cell(r['correction'], 50)} | "
            f"{_cell(r['model']['post'])} | {'yes' if r['model']['honoured'] else 'no'} | "
            f"{_cell(r['baseline']['post'])} | {'yes' if r['baseline']['honoured'] else 'no'} |"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def evaluate_interrupt(options: InterruptOptions, progress: Any = None) -> dict[str, Any]:
    """Run both systems on the held-out interruptions; write ``results.json``, ``report.md``
    and the per-item cache ``examples.jsonl`` (a rerun resumes). Returns the results."""
    import torch

    from .store import ResultStore
    from .systems import load_systems

    if options.threads:
        torch.set_num_threads(options.threads)
    items = load_items(options.items, options.limit)
    systems = load_systems(options.model, options.baseline, max_new_tokens=options.max_tokens)
    runner = systems.model
    lm, tok = systems.baseline.model, systems.baseline.tokenizer
    settings = {"kind": "interrupt", "model": systems.model_name, "baseline": systems.baseline_name,
                "items": str(options.items or HELDOUT_FILE), "max_tokens": options.max_tokens}  # fmt: skip
    store = ResultStore(options.out, settings)
    began = time.perf_counter()
    examples = []
    for n, item in enumerate(items, start=1):
        record = store.get(item["id"])
        if record is None:
            m = run_multistream(runner, item, max_rows=options.max_tokens + 64)
            b = run_sequential(lm, tok, item, m["row_s"], options.max_tokens)
            record = {"id": item["id"], "family": item.get("family", "?"), "kind": item.get("kind", "?"),
                      "unseen": bool(item.get("unseen")), "request": item["request"],
                      "correction": item["correction"], "after_tokens": item["after_tokens"],
                      "model": m, "baseline": b}  # fmt: skip
            store.put(item["id"], record)
        examples.append(record)
        if progress is not None:
            progress(n, len(items), record)
    pairs = [(r["model"] | {"family": r["family"], "unseen": r["unseen"]}, r["baseline"]) for r in examples]
    for m, _ in pairs:
        m["phrasing"] = "unseen" if m["unseen"] else "seen in training"
    results = {
        "kind": "interrupt",
        "model_name": systems.model_name,
        "baseline_name": systems.baseline_name,
        "items_file": str(options.items or HELDOUT_FILE.name),
        "threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - began,
        "model": _summary([r["model"] for r in examples]),
        "baseline": _summary([r["baseline"] for r in examples]),
        "by_family": _by(pairs, "family"),
        "by_phrasing": _by(pairs, "phrasing"),
        "notes": systems.notes,
        "examples": examples,
    }
    out = Path(options.out)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / "results.json")
    write_interrupt_report(results, out)
    return results
