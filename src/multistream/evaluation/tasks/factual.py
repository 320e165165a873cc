"""Factual QA (issue 12): does a fine-tuned model keep the facts its base knows?

122 short questions with their accepted answers (``evaluation/data/factual_qa.jsonl``, shipped
with the package): 30 capitals, 24 authors and composers, 20 inventors, discoverers and
painters, 48 science and general-knowledge facts. Written by hand for this project from common
knowledge (no dataset copied); each record names a ``subject`` so training data that mentions it
can be left out (``scripts/build_demo_distill.py`` does). The file is chat JSONL, so the
``chat`` loader reads it; ``answers`` holds the aliases.

Scoring: an output is correct when any alias occurs in it as a whole word or phrase
(case-insensitive, accents and punctuation ignored), after the bridging opening is stripped.
``answered`` is 1 when the output holds any word at all, i.e. it is not only filler and silence.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from pathlib import Path

from ...data.examples import SequentialExample
from . import Task, register_task

__all__ = ["FACTUAL_QA_FILE", "alias_match", "aliases", "normalize"]

FACTUAL_QA_FILE = Path(__file__).resolve().parent.parent / "data" / "factual_qa.jsonl"


def normalize(text: str) -> str:
    """Lower case, accents removed, everything but letters and digits a single space."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " " + re.sub(r"[^a-z0-9]+", " ", text).strip() + " "


@cache
def _alias_table(path: Path) -> dict[str, tuple[str, ...]]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            table[str(rec["id"])] = tuple(rec["answers"])
    return table


def _load(path: Path) -> list[SequentialExample]:
    """The question file as examples; ``answer`` is the first alias (shown as gold in reports)."""
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        answers = [str(a) for a in rec["answers"]]
        examples.append(
            SequentialExample(
                id=str(rec["id"]),
                source="factual",
                user=rec["messages"][0]["content"],
                assistant=answers[0],
                answer=answers[0],
                meta={
                    "answers": answers,
                    "category": rec.get("category", ""),
                    "subject": rec.get("subject", ""),
                },
            )
        )
    return examples


def aliases(example: SequentialExample) -> tuple[str, ...]:
    """Accepted answers of an example: its ``meta["answers"]``, the file's, else the reference."""
    if example.meta.get("answers"):
        return tuple(example.meta["answers"])
    return _alias_table(FACTUAL_QA_FILE).get(example.id) or (example.answer or example.assistant,)


def alias_match(output: str, answers: tuple[str, ...] | list[str]) -> bool:
    """Whether any accepted answer occurs in ``output`` as whole words."""
    text = normalize(output)
    return any(normalize(a) in text for a in answers if normalize(a).strip())


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    prediction = output.strip()
    return {
        "prediction": prediction,
        "accuracy": float(alias_match(prediction, aliases(example))),
        "answered_any": float(bool(normalize(prediction).strip())),
    }


# Task.path is joined to the data directory; an absolute path (the packaged file) stays itself.
TASK = register_task(
    Task(
        "factual",
        str(FACTUAL_QA_FILE),
        "chat",
        _score,
        primary="accuracy",
        max_new_tokens=48,
        loader=_load,
        description="122 short factual questions shipped with the package: does the model keep its facts",
    )
)
