"""MATH500 (spec §5.1): the final ``\\boxed{}`` expression, normalised (Hendrycks et al.)."""

from __future__ import annotations

from functools import partial

from ...data.examples import SequentialExample
from ...data.prompts import math_prompt
from ..metrics import extract_final_answer, math_answers_equal
from . import Task, register_task


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    prediction = extract_final_answer(output)
    return {"prediction": prediction, "accuracy": float(math_answers_equal(prediction, example.answer))}


TASK = register_task(
    Task(
        "math500",
        "math500/test.jsonl",
        "math500",
        _score,
        max_new_tokens=384,
        prompt=partial(math_prompt, integer=False),
        description="MATH500: competition math, the boxed expression (normalised)",
    )
)
