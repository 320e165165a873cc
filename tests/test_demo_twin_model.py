"""`demo-twin`: the sequential twin of `demo` (issue 12; trained as `demo-distill-twin`), shipped
so anyone can rerun the comparison with ``multistream eval ... --baseline demo-twin``.

Same base, same distilled examples, same trainer, LoRA and steps as `demo`, but in
one-stream chat form (``form: sequential``): its stream embedding is zero, so its base LM with the adapter
is the whole model, an ordinary causal LM.
"""

from __future__ import annotations

import pytest

from multistream.data.examples import SequentialExample
from multistream.evaluation.runners import SequentialRunner
from multistream.evaluation.systems import load_systems
from multistream.loading import MULTISTREAM_MODELS, resolve_multistream

pytestmark = pytest.mark.slow

TWIN = "demo-twin"


def test_twin_ships_small_adapter_only_and_loads_by_name():
    root = MULTISTREAM_MODELS[TWIN]()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20_000_000
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    model, _ = resolve_multistream(TWIN)
    assert model.num_streams == 1
    assert model.config.base_model == "smollm2-135m"
    assert float(model.stream_embedding.weight.detach().abs().max()) == 0.0


def test_twin_is_the_baseline_of_an_evaluation_and_answers_sequentially():
    systems = load_systems("demo", baseline=TWIN, max_new_tokens=32)
    assert systems.baseline_name == TWIN
    runner = systems.baseline
    assert isinstance(runner, SequentialRunner)
    example = SequentialExample(id="hamlet", source="test", user="Who wrote Hamlet?", assistant="")
    out = runner.run(example, input_rows=5)
    assert "Shakespeare" in out.text, out.text
