"""The public Python API: names at the package root (issue 10 item 7) and the compatibility
modules that keep first-round imports working (``multistream.models``, ``multistream.training``)."""

from __future__ import annotations

import subprocess
import sys

import multistream
from test_engine import TOK, tiny_model


def test_root_exports_the_session_api_lazily():
    from multistream import engine, sampling

    for name in ("Session", "SessionConfig", "generate"):
        assert name in multistream.__all__
        assert getattr(multistream, name) is getattr(engine, name)
    assert multistream.SamplingConfig is sampling.SamplingConfig
    # Every advertised name resolves; importing the package alone stays light (no torch).
    assert all(hasattr(multistream, name) for name in multistream.__all__)
    code = "import sys, multistream; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_root_generate_and_session_decode_the_same_rows():
    model = tiny_model()
    config = multistream.SessionConfig(
        sampling=multistream.SamplingConfig(temperature=0.0), max_rows=6, stop_silent_rows=0
    )
    result = multistream.generate(model, TOK, {"user": "a b c"}, config=config)
    session = multistream.Session(model, TOK, config)
    session.feed("user", "a b c")
    session.close("user")
    rows = [session.step() for _ in range(6)]
    assert result.grid.num_rows == 6
    assert [list(r.ids) for r in rows] == result.grid.ids.tolist()


def test_models_module_is_the_loading_module_under_its_old_name():
    from multistream import loading, models

    assert set(models.__all__) == set(loading.__all__)
    for name in loading.__all__:
        assert getattr(models, name) is getattr(loading, name)


def test_training_package_keeps_every_first_round_name():
    import multistream.training as training

    first_round = {
        "FINAL_DIR", "LAYOUTS", "METRICS_FILE", "MultiStreamTrainer", "TrainConfig", "TrainConfigError",
        "build_examples", "build_model", "export_merged", "optimizer_param_groups", "sequential_example",
        "train", "parse_overrides", "load_checkpoint_weights", "load_base_for_training", "sequential_schema",
        "JsonlMetricsCallback", "SEQUENTIAL_STREAM",
    }  # fmt: skip
    assert first_round <= set(training.__all__)
    assert all(hasattr(training, name) for name in training.__all__)
    assert training.LAYOUTS == ("multistream", "sequential")  # the old name of FORMS
