"""The shipped `demo-think` model (issue 12): it thinks while it reads.

Held-out running sums (``running_sum`` task; no training item shares their number sequence),
decoded greedily in lockstep through the evaluation's own runner (one user token per row): the
think stream writes running totals while the numbers are still streaming in, the answer after
the input is right, and the session stops by itself soon after the input ends.
"""

from __future__ import annotations

import json

import pytest

from multistream.evaluation.runners import MultiStreamRunner
from multistream.evaluation.tasks import get_task, load_task_examples
from multistream.evaluation.tasks.running_sum import running_totals
from multistream.loading import MULTISTREAM_MODELS
from multistream.models import resolve_multistream

pytestmark = pytest.mark.slow

MODEL = "demo-think"


@pytest.fixture(scope="module")
def runner():
    model, tokenizer = resolve_multistream(MODEL)
    return MultiStreamRunner(model, tokenizer, max_new_tokens=24)


def test_registered_three_streams_adapter_only():
    assert MODEL in MULTISTREAM_MODELS and "demo-think-twin" in MULTISTREAM_MODELS
    model, _ = resolve_multistream(MODEL)
    assert [(s.name, s.role.value) for s in model.schema.streams] == [
        ("user", "input"),
        ("think", "think"),
        ("assistant", "output"),
    ]
    assert model.config.base_model == "smollm2-135m"
    root = MULTISTREAM_MODELS[MODEL]()
    adapter = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "smollm2-135m" and adapter["r"] <= 16
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 12_000_000


@pytest.mark.parametrize("index", [0, 1, 2])
def test_thinks_while_reading_and_answers(runner, index):
    example = load_task_examples("running_sum")[index]
    out = runner.run(example)
    end = out.input_tokens  # rows 0..end-1 hold the input
    think_rows = [
        r for r, row in enumerate(out.timeline) if row.get("think") is not None and row["think"].strip()
    ]
    # The think stream is not silent while the input streams: most running totals are written
    # before the input has ended (one digit or two per number read).
    early = [r for r in think_rows if r < end]
    assert len(early) >= len(example.meta["numbers"]) - 1, (out.streams, end)
    # Those early totals are the running sums of what has been read so far.
    totals = [int(t) for t in out.streams["think"].split() if t.isdigit()]
    expected = running_totals(example.meta["numbers"])
    assert totals[: len(expected) - 1] == expected[:-1], out.streams["think"]
    # The answer is right, and it ends a few rows after the input (no sequential rethinking).
    assert get_task("running_sum").score(out.text, example)["accuracy"] == 1.0, (example.user, out.streams)
    assert out.stop == "end_token" and out.end_row is not None and out.end_row - (end - 1) <= 8, out.end_row
