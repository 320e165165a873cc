"""Running sum (issue 12, ``demo-think``): add up numbers that arrive one by one.

A prompt lists 5 to 10 one-digit numbers (1-9, total below 100) in one of several phrasings
("Add these numbers: 7, 3, 5.", "What is 7 + 3 + 5?", "I scored 7, 3 and 5 points ..."). The
reference rationale is the running total after each number (``" 7 10 15"``), the reference
answer ``" = 15"``. The task is chosen because work during the input pays off: a model that
keeps the running total while it reads has one addition left when the input ends, while a
sequential model has to write all of them after reading.

The held-out items (``evaluation/data/running_sum.jsonl``, 200 items, shipped with the
package) are drawn with :data:`HELDOUT_SEED` by :func:`make_items`; training items
(``scripts/build_demo_think.py``) come from another seed and never share a number sequence
with them.

Scoring: the prediction is the **last integer** in the output (the multi-stream model's
assistant stream; for the sequential twin the whole reply, whose running totals come before
its answer); correct when it equals the total. ``answered_any`` is 1 when the output holds an
integer at all.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ...data.examples import SequentialExample
from . import Task, register_task

__all__ = [
    "HELDOUT_SEED",
    "RUNNING_SUM_FILE",
    "answer_text",
    "example_from_item",
    "last_integer",
    "make_items",
    "phrase",
    "running_totals",
]

RUNNING_SUM_FILE = Path(__file__).resolve().parent.parent / "data" / "running_sum.jsonl"
HELDOUT_SEED = 12_002
MIN_COUNT, MAX_COUNT = 5, 10
MAX_TOTAL = 99  # two-digit totals: every thinking step is as long as one number of the input

# (text before the list, how the list is joined, text after the list). Digits appear only in the
# numbers, so a reader (and the grid builder) can tell where each number ends.
_TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("Add these numbers: ", "comma", "."),
    ("What is the sum of ", "comma_and", "?"),
    ("Please add up ", "comma_and", "."),
    ("Sum the following: ", "comma", "."),
    ("Keep a running total of ", "comma", "."),
    ("What is ", "plus", "?"),
    ("Compute ", "plus", "."),
    ("I scored ", "comma_and", " points in my games. How many points is that in total?"),
    ("My items cost ", "comma_and", " dollars. What do I pay altogether?"),
    ("Here are some numbers to add: ", "comma", "."),
    ("Total these up: ", "comma", "."),
    ("We walked ", "comma_and", " miles on the days of our trip. How far did we walk?"),
    ("Tell me the sum: ", "then", "."),
    ("Add ", "then", ". What do you get?"),
)


def _join(numbers: Sequence[int], how: str) -> str:
    words = [str(n) for n in numbers]
    if how == "comma":
        return ", ".join(words)
    if how == "comma_and":
        return ", ".join(words[:-1]) + " and " + words[-1]
    if how == "plus":
        return " + ".join(words)
    if how == "then":
        return ", then ".join(words)
    raise ValueError(f"unknown list joiner {how!r}")


def phrase(numbers: Sequence[int], template: int) -> str:
    """The prompt for ``numbers`` in phrasing ``template`` (an index into the template table)."""
    before, how, after = _TEMPLATES[template % len(_TEMPLATES)]
    return before + _join(numbers, how) + after


def running_totals(numbers: Sequence[int]) -> list[int]:
    """The total after each number."""
    out, total = [], 0
    for n in numbers:
        total += n
        out.append(total)
    return out


def answer_text(total: int) -> str:
    """What the assistant says: ``" = 15"``."""
    return f" = {total}"


def make_items(seed: int, n: int, exclude: Collection[tuple[int, ...]] = ()) -> list[dict[str, Any]]:
    """``n`` distinct items drawn with ``seed``; no number sequence of ``exclude`` is drawn.

    Returns:
        dicts with ``id``, ``numbers``, ``template``, ``prompt``, ``total``.
    """
    rng = random.Random(seed)
    seen = set(exclude)
    items: list[dict[str, Any]] = []
    while len(items) < n:
        count = rng.randint(MIN_COUNT, MAX_COUNT)
        numbers = tuple(rng.randint(1, 9) for _ in range(count))
        if sum(numbers) > MAX_TOTAL or numbers in seen:
            continue
        seen.add(numbers)
        template = rng.randrange(len(_TEMPLATES))
        items.append(
            {
                "id": f"s{seed}-{len(items)}",
                "numbers": list(numbers),
                "template": template,
                "prompt": phrase(numbers, template),
                "total": sum(numbers),
            }
        )
    return items


def example_from_item(item: dict[str, Any], source: str = "running_sum") -> SequentialExample:
    """An item as a :class:`SequentialExample`: the prompt, the running totals as thinking
    steps, ``" = total"`` as the conclusion."""
    steps = tuple(f" {t}" for t in running_totals(item["numbers"]))
    answer = answer_text(int(item["total"]))
    return SequentialExample(
        id=str(item["id"]),
        source=source,
        user=item["prompt"],
        assistant="".join(steps) + answer,
        thinking="".join(steps),
        steps=steps,
        conclusion=answer,
        answer=str(item["total"]),
        meta={"numbers": list(item["numbers"]), "template": int(item["template"])},
    )


def _load(path: Path) -> list[SequentialExample]:
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [example_from_item(item) for item in items]


_INT_RE = re.compile(r"-?\d+")


def last_integer(text: str) -> int | None:
    """The last integer written in ``text`` (None without one)."""
    found = _INT_RE.findall(text)
    return int(found[-1]) if found else None


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    value = last_integer(output)
    return {
        "prediction": output.strip(),
        "accuracy": float(value is not None and str(value) == example.answer.strip()),
        "answered_any": float(value is not None),
    }


TASK = register_task(
    Task(
        "running_sum",
        str(RUNNING_SUM_FILE),
        "chat",
        _score,
        primary="accuracy",
        max_new_tokens=48,
        loader=_load,
        description="200 held-out running sums of 5-10 one-digit numbers: thinking while reading",
    )
)
