"""LogicNLI test (spec §5.1): four labels after ``Final label:``."""

from __future__ import annotations

from ...data.examples import SequentialExample
from ...data.prompts import LOGICNLI_LABELS, nli_prompt
from ..metrics import extract_label
from . import Task, register_task


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    prediction = extract_label(output, LOGICNLI_LABELS, "Final label:")
    return {"prediction": prediction, "accuracy": float(prediction == example.answer)}


TASK = register_task(
    Task(
        "logicnli",
        "logicnli/test_language.json",
        "logicnli",
        _score,
        max_new_tokens=48,
        prompt=nli_prompt,
        description="LogicNLI test: one of four labels for premise and hypothesis",
    )
)
