"""ProofWriter (Logic-LM depth-5 dev subset, spec §5.1): True / False / Unknown after ``Answer:``."""

from __future__ import annotations

from ...data.examples import SequentialExample
from ...data.prompts import PROOFWRITER_VALUES, proofwriter_prompt
from ..metrics import extract_label
from . import Task, register_task


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    prediction = extract_label(output, tuple(PROOFWRITER_VALUES.values()), "Answer:")
    return {"prediction": prediction, "accuracy": float(prediction == example.answer)}


TASK = register_task(
    Task(
        "proofwriter",
        "proofwriter/dev.json",
        "proofwriter",
        _score,
        max_new_tokens=48,
        prompt=proofwriter_prompt,
        description="ProofWriter depth-5 dev: True / False / Unknown",
    )
)
