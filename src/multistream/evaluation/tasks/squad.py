"""SQuAD v1.1 (spec §5.1): a fixed sample of 1,000 dev questions, EM and F1 (official rules).

The paper's sample file (``squad_v1_val1000_seed42.jsonl``) is not public; ours is
``random.Random(42).sample`` over the dev set in file order, so it is fixed and reproducible
but not the same 1,000 questions.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...data.examples import SequentialExample
from ...data.prompts import squad_prompt
from ..metrics import extract_final_answer, squad_exact_match, squad_f1
from . import Task, register_task

SAMPLE_SIZE = 1000
SAMPLE_SEED = 42


def _select(examples: list[SequentialExample], _: Path) -> list[SequentialExample]:
    if len(examples) <= SAMPLE_SIZE:
        return examples
    return random.Random(SAMPLE_SEED).sample(examples, SAMPLE_SIZE)


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    golds = example.meta.get("answers") or [example.answer]
    prediction = extract_final_answer(output)
    return {
        "prediction": prediction,
        "em": squad_exact_match(prediction, golds),
        "f1": squad_f1(prediction, golds),
    }


TASK = register_task(
    Task(
        "squad",
        "squad/dev-v1.1.jsonl",
        "squad",
        _score,
        primary="f1",
        max_new_tokens=48,
        select=_select,
        prompt=squad_prompt,
        description="SQuAD v1.1 dev, a fixed 1,000-question sample: answer span, EM and F1",
    )
)
