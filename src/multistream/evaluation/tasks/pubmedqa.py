"""PubMedQA PQA-L (spec §5.1): yes / no / maybe after ``Final answer:``, on the official
500-question test split (``test_ground_truth.json`` next to the data file)."""

from __future__ import annotations

import json
from pathlib import Path

from ...data.examples import SequentialExample
from ...data.prompts import PUBMEDQA_VALUES, pubmedqa_prompt
from ..metrics import extract_label
from . import Task, register_task

TEST_SPLIT = "pubmedqa/test_ground_truth.json"


def _select(examples: list[SequentialExample], data_dir: Path) -> list[SequentialExample]:
    split = data_dir / TEST_SPLIT
    if not split.is_file():
        return examples  # a data folder without the split file: evaluate what is there
    test_ids = set(json.loads(split.read_text()))
    return [e for e in examples if e.id in test_ids]


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    prediction = extract_label(output, PUBMEDQA_VALUES, "Final answer:")
    return {"prediction": prediction, "accuracy": float(prediction == example.answer)}


TASK = register_task(
    Task(
        "pubmedqa",
        "pubmedqa/ori_pqal.json",
        "pubmedqa",
        _score,
        max_new_tokens=48,
        select=_select,
        prompt=pubmedqa_prompt,
        description="PubMedQA PQA-L test split: yes / no / maybe",
    )
)
