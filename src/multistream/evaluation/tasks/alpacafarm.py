"""AlpacaFarm evaluation set (the 805 instructions of StruQ/SecAlign's clean test set): short
open-ended instructions, the kind of input the Alpaca-tuned demo model was trained on. There is
no single right answer; the score is the token F1 against the dataset's reference output, a
rough utility proxy. Its main use is latency on in-distribution prompts
(``multistream eval latency --task alpacafarm``).
"""

from __future__ import annotations

from ...data.examples import SequentialExample
from ..metrics import squad_f1
from . import Task, register_task


def _score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
    return {
        "prediction": output.strip(),
        "f1": squad_f1(output, [example.assistant]) if output.strip() else 0.0,
    }


TASK = register_task(
    Task(
        "alpacafarm",
        "prompt_injection/davinci_003_outputs.json",
        "struq",
        _score,
        primary="f1",
        max_new_tokens=64,
        description="AlpacaFarm instructions (805): token F1 against the reference, a utility proxy",
    )
)
