"""GSM8K test (spec §5.1): the final ``\\boxed{}`` number, compared as a number."""

from __future__ import annotations

from functools import partial

from ...data.examples import SequentialExample
from ...data.prompts import math_prompt
from ..metrics import extract_boxed, extract_final_answer, numbers_equal
from . import Task, register_task


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    # Small models often skip the box; the last number after "Final answer:" (or anywhere) counts.
    prediction = extract_boxed(output) or extract_final_answer(output)
    return {"prediction": prediction, "accuracy": float(numbers_equal(prediction, example.answer))}


TASK = register_task(
    Task(
        "gsm8k",
        "gsm8k/test.jsonl",
        "gsm8k",
        _score,
        max_new_tokens=256,
        prompt=partial(math_prompt, integer=True),
        description="GSM8K test: grade-school math, the boxed number",
    )
)
