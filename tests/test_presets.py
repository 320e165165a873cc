"""Decoding presets: one set of defaults, saved with a model, old directories get the defaults."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_SILENCE, make_tiny_base
from multistream.engine import SessionConfig
from multistream.model import CONFIG_NAME, MultiStreamLM
from multistream.presets import PRESETS_NAME, DecodingPresets
from multistream.schema import SchemaError, StreamSchema

SCHEMA = StreamSchema(StreamSchema.parse("user,think,assistant").streams, silence_id=TINY_SILENCE)


def test_defaults_are_one_valid_set():
    presets = DecodingPresets()
    assert presets.start == "seed" and presets.seed_rows is None and presets.warm_start_rows is None
    options = presets.session_kwargs()
    config = SessionConfig.from_kwargs(**options)  # every key is a session or sampling field
    assert config.max_rows == presets.max_rows
    assert config.sampling.silence_penalty == presets.silence_penalty
    assert config.stop_silent_rows == presets.stop_silent_rows


def test_merged_keeps_none_and_rejects_unknown_names():
    base = DecodingPresets(temperature=0.8, top_k=20)
    merged = base.merged(temperature=None, top_k=5, skip_silence=True)
    assert (merged.temperature, merged.top_k, merged.skip_silence) == (0.8, 5, True)
    assert base.top_k == 20  # merged returns a copy
    with pytest.raises(TypeError, match="tempreature"):
        base.merged(tempreature=0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"start": "hot"}, "start"),
        ({"start": "warm"}, "warm_start_rows"),
        ({"warm_start_rows": []}, "empty"),
        ({"seed_rows": [[1.5, None, None]]}, "cell"),
        ({"penalty_streams": "assistant"}, "penalty_streams"),
    ],
)
def test_bad_values_fail_with_the_field_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingPresets(**kwargs)


def test_save_load_round_trip(tmp_path):
    presets = DecodingPresets(
        temperature=0.6,
        start="warm",
        warm_start_rows=[[None, 5, "x"], [None, None, 7]],
        penalty_streams=["assistant"],
        stop_silent_rows=1,
    )
    path = presets.save(tmp_path)
    assert path.name == PRESETS_NAME
    assert json.loads(path.read_text())["warm_start_rows"] == [[None, 5, "x"], [None, None, 7]]
    assert DecodingPresets.load(tmp_path) == presets


def test_directory_without_presets_gets_defaults(tmp_path):
    assert DecodingPresets.load(tmp_path) == DecodingPresets()
    assert DecodingPresets.load(object()) == DecodingPresets()


def test_bad_file_names_the_file_and_field(tmp_path):
    (tmp_path / PRESETS_NAME).write_text(json.dumps({"temprature": 1}))
    with pytest.raises(ValueError, match=rf"{PRESETS_NAME}.*temprature"):
        DecodingPresets.load(tmp_path)
    (tmp_path / PRESETS_NAME).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        DecodingPresets.load(tmp_path)


def test_start_rows_resolve_against_the_schema():
    presets = DecodingPresets(start="warm", warm_start_rows=[[None, 5, 6], [None, None, 9]])
    assert presets.start_rows(SCHEMA, tokenizer=None) == [
        [TINY_SILENCE, 5, 6],
        [TINY_SILENCE, TINY_SILENCE, 9],
    ]
    assert DecodingPresets().start_rows(SCHEMA, None) is None
    with pytest.raises(SchemaError, match="input stream 'user' must be silent"):
        DecodingPresets(seed_rows=[[4, 5, 6]]).start_rows(SCHEMA, None)
    with pytest.raises(SchemaError, match="2 cells"):
        DecodingPresets(seed_rows=[[None, 5]]).start_rows(SCHEMA, None)
    with pytest.raises(SchemaError, match="role think"):
        DecodingPresets(penalty_streams=["think"]).check_schema(SCHEMA)


def test_presets_travel_with_a_saved_model(tmp_path):
    model = MultiStreamLM(make_tiny_base("qwen3"), _config()).eval()
    old = tmp_path / "old"
    model.save_pretrained(old)
    assert not (old / PRESETS_NAME).exists()
    assert MultiStreamLM.from_pretrained(old).decoding_presets == DecodingPresets()

    presets = DecodingPresets(temperature=0.6, seed_rows=[[None, 11, 12]], max_rows=7)
    model.decoding_presets = presets
    new = tmp_path / "new"
    model.save_pretrained(new)
    assert (new / CONFIG_NAME).is_file()
    loaded = MultiStreamLM.from_pretrained(new)
    assert DecodingPresets.load(loaded) == presets == DecodingPresets.load(new)


def test_generate_with_presets_uses_the_start_rows():
    from multistream.engine import generate

    model = MultiStreamLM(make_tiny_base("qwen3"), _config()).eval()
    presets = DecodingPresets(seed_rows=[[None, 11, 12]], max_rows=3, stop_silent_rows=0)
    rows = presets.start_rows(SCHEMA, None)
    result = generate(
        model, _NoText(), {"user": [20, 21]}, prefill=torch.tensor(rows), **presets.session_kwargs()
    )
    assert result.grid.ids[0].tolist() == [TINY_SILENCE, 11, 12]
    assert result.grid.ids[1:3, 0].tolist() == [20, 21]
    assert len(result.rows) == 3


class _NoText:
    """Token-id-only decoding needs no vocabulary: cells decode to their ids."""

    def decode(self, ids, **_):
        return " ".join(str(i) for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]


def _config():
    from multistream.model import MultiStreamConfig

    return MultiStreamConfig(schema=SCHEMA)


def test_penalty_streams_reach_the_engine():
    from multistream.engine import Session

    schema = StreamSchema(
        StreamSchema.parse("user,a:output,b:output,t:think").streams, silence_id=TINY_SILENCE
    )
    from multistream.model import MultiStreamConfig

    model = MultiStreamLM(make_tiny_base("qwen3"), MultiStreamConfig(schema=schema)).eval()
    options = DecodingPresets(silence_penalty=3.0, penalty_streams=["b"]).session_kwargs()
    session = Session(model, _NoText(), SessionConfig.from_kwargs(**options))
    assert session.batch._penalty.tolist() == [0.0, 0.0, 3.0, 0.0]
    everyone = Session(
        model, _NoText(), SessionConfig.from_kwargs(**DecodingPresets(silence_penalty=3.0).session_kwargs())
    )
    assert everyone.batch._penalty.tolist() == [0.0, 3.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="'t' is not an output stream"):
        Session(model, _NoText(), SessionConfig.from_kwargs(**{**options, "penalty_streams": ("t",)}))
