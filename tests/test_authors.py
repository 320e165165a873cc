"""The paper authors' released format: import, direct load, loud failures, start modes, export
round trip and their data files, on tiny fixtures saved exactly as their release is."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from authors_helpers import (
    SILENCE_ID,
    STREAMS,
    build_tokenizer,
    golden_logits,
    save_authors_model,
    write_authors_data,
    write_safetensors,
)
from multistream.authors import (
    WARM_START_HEADER,
    AuthorsFormatError,
    authors_presets,
    export_authors,
    import_authors,
    is_authors_dir,
    load_authors,
)
from multistream.authors.convert import _read_tensors, _weight_files
from multistream.cli import app
from multistream.engine import Session, generate
from multistream.loading import BaseModelError, resolve_multistream
from multistream.model import BASE_DIR, MultiStreamLM
from multistream.presets import DecodingPresets
from multistream.schema import Role


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors") / "stream-tiny"
    state, _ = save_authors_model(root, auto_map=True, shards=1)
    return root, state


def _grid(seed: int = 0, rows: int = 5) -> torch.Tensor:
    g = torch.randint(0, SILENCE_ID, (rows, len(STREAMS)), generator=torch.Generator().manual_seed(seed))
    g[2:, 0] = SILENCE_ID  # some silence, as in real grids
    return g


@pytest.mark.parametrize("shards, auto_map", [(1, False), (1, True), (3, False), (3, True)])
def test_golden_reference_equals_the_imported_model(tmp_path, shards, auto_map):
    state, _ = save_authors_model(tmp_path / "m", seed=shards, auto_map=auto_map, shards=shards)
    assert is_authors_dir(tmp_path / "m")
    model, _tok = load_authors(tmp_path / "m")
    grid = _grid(shards)
    with torch.no_grad():
        ours = model(grid[None]).logits[0]
    torch.testing.assert_close(ours, golden_logits(state, grid), atol=1e-5, rtol=0)
    # The stream embedding is theirs, not zeros, and the roles are explicit.
    assert torch.equal(model.stream_embedding.weight, state["model.channel_embedding.weight"].float())
    assert model.schema.names == list(STREAMS) and model.schema.silence_id == SILENCE_ID
    assert [s.role for s in model.schema.streams] == [Role.INPUT, Role.OUTPUT] + [Role.THINK] * 8
    assert model.decoding_presets == authors_presets("warm")


def test_resolve_multistream_loads_an_authors_directory_directly(authors_dir):
    root, state = authors_dir
    model, tok = resolve_multistream(root)
    assert torch.equal(model.stream_embedding.weight, state["model.channel_embedding.weight"].float())
    assert tok.encode(" -", add_special_tokens=False) == [SILENCE_ID]


def test_loading_it_the_wrong_way_fails_loudly(authors_dir):
    root, _ = authors_dir
    # The old bug: a schema made it load as a base model with a zero stream embedding.
    with pytest.raises(BaseModelError, match="authors' format.*drop --schema"):
        resolve_multistream(root, schema="user,assistant")
    with pytest.raises(BaseModelError, match="would drop its stream embedding"):
        MultiStreamLM.from_base(root, _any_schema())
    with pytest.raises(FileNotFoundError, match="multistream import"):
        MultiStreamLM.from_pretrained(root)


def _any_schema():
    from multistream.schema import StreamSchema

    return StreamSchema.parse("user,assistant")


def _broken_copy(src, dst, edit_config=None, edit_state=None):
    shutil.copytree(src, dst)
    if edit_config:
        record = json.loads((dst / "config.json").read_text())
        edit_config(record)
        (dst / "config.json").write_text(json.dumps(record))
    if edit_state:
        files = _weight_files(dst)
        state = _read_tensors(files, list(files))
        edit_state(state)
        for f in set(files.values()):
            f.unlink()
        write_safetensors(dst, state, 1)


@pytest.mark.parametrize(
    "edit_config, edit_state, message",
    [
        (
            None,
            lambda s: s.__setitem__("model.layers.0.self_attn.role_gate.weight", torch.zeros(4)),
            "role_gate",
        ),
        (None, lambda s: s["model.layers.1.self_attn.gate_in_norm.weight"].mul_(2), "not all ones"),
        (None, lambda s: s.pop("model.channel_embedding.weight"), "lack model.channel_embedding"),
        (None, lambda s: s.pop("model.layers.0.mlp.up_proj.weight"), "missing_keys"),
        (lambda r: r.update(role_gating_enabled=True), None, "role_gating_enabled"),
        (lambda r: r.update(num_channels=5), None, "num_channels is 5"),
        (lambda r: r.update(channel_embedding_method="concat"), None, "additive"),
    ],
)
def test_unknown_or_missing_weights_and_unsupported_settings_fail(
    authors_dir, tmp_path, edit_config, edit_state, message
):
    root, _ = authors_dir
    _broken_copy(root, tmp_path / "bad", edit_config, edit_state)
    with pytest.raises(AuthorsFormatError, match=message):
        load_authors(tmp_path / "bad")


def test_a_stripped_config_is_still_detected_by_its_weights(authors_dir, tmp_path):
    root, _ = authors_dir

    def strip(record):
        for key in [
            k
            for k in record
            if k.startswith(("num_channels", "channel_embedding", "role_gating", "deltanet", "medusa"))
        ]:
            del record[key]

    _broken_copy(root, tmp_path / "stripped", edit_config=strip)
    assert is_authors_dir(tmp_path / "stripped")
    with pytest.raises(BaseModelError, match="authors' format"):
        resolve_multistream(tmp_path / "stripped", schema="user,assistant")


def test_our_format_refuses_a_base_with_foreign_weights(authors_dir, tmp_path):
    root, _ = authors_dir
    out = import_authors(root, tmp_path / "ours")
    files = _weight_files(out / BASE_DIR)
    state = _read_tensors(files, list(files))
    state["model.channel_embedding.weight"] = torch.zeros(10, 32, dtype=torch.bfloat16)
    for f in set(files.values()):
        f.unlink()
    write_safetensors(out / BASE_DIR, state, 1)
    with pytest.raises(ValueError, match=r"unexpected_keys.*channel_embedding"):
        MultiStreamLM.from_pretrained(out)


def test_our_format_refuses_a_missing_or_foreign_stream_embedding(authors_dir, tmp_path):
    from safetensors.torch import save_file

    from multistream.model import STREAM_EMBEDDING_NAME

    root, _ = authors_dir
    out = import_authors(root, tmp_path / "ours")
    save_file({"weight": torch.zeros(10, 32), "extra": torch.zeros(1)}, str(out / STREAM_EMBEDDING_NAME))
    with pytest.raises(RuntimeError, match="extra"):
        MultiStreamLM.from_pretrained(out)
    (out / STREAM_EMBEDDING_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="stream embedding is lost"):
        MultiStreamLM.from_pretrained(out)


@pytest.mark.parametrize("start", ["seed", "warm"])
def test_both_start_modes_decode(authors_dir, start):
    root, _ = authors_dir
    model, tok = load_authors(root, start=start)
    presets = DecodingPresets.load(model).merged(max_rows=12, temperature=0.0)
    header = presets.start_rows(model.schema, tok)
    result = generate(
        model, tok, {"User": "hello world"}, prefill=torch.tensor(header), **presets.session_kwargs()
    )
    n = len(header)
    assert n == (11 if start == "warm" else 1)
    assert result.grid.ids[:n].tolist() == header
    if start == "warm":
        assert len(WARM_START_HEADER) == 11 and header[6][1] == tok.encode(" OK", add_special_tokens=False)[0]
    user = [t for w in ["hello", "world"] for t in tok.encode(" " + w, add_special_tokens=False)]
    assert result.grid.ids[n : n + len(user), 0].tolist() == user  # one user token per row after the start
    assert result.grid.num_rows > n
    # The silence penalty reaches Output only, never the eight thinking streams.
    session = Session(model, tok, presets_config(presets))
    penalty = session.batch._penalty.tolist()
    assert penalty[1] == presets.silence_penalty and not any(penalty[:1] + penalty[2:])


def presets_config(presets):
    from multistream.engine import SessionConfig

    return SessionConfig.from_kwargs(**presets.session_kwargs())


@pytest.mark.parametrize("max_shard_size", [None, 20_000])
def test_import_export_import_is_bit_exact(authors_dir, tmp_path, max_shard_size):
    root, state = authors_dir
    ours = import_authors(root, tmp_path / "ours")
    model = MultiStreamLM.from_pretrained(ours)
    assert model.decoding_presets == authors_presets("warm")
    out = export_authors(
        model, MultiStreamLM.load_tokenizer(ours), tmp_path / "theirs", max_shard_size=max_shard_size
    )
    assert (out / "model.safetensors.index.json").is_file() == (max_shard_size is not None)
    files = _weight_files(out)
    exported = _read_tensors(files, list(files))
    assert set(exported) == set(state)
    for key, tensor in state.items():
        assert exported[key].dtype == torch.bfloat16 and torch.equal(exported[key], tensor), key
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_channels"] == 10 and config["use_cache"] is False
    assert config["channel_embedding_method"] == "additive" and "auto_map" not in config
    again, _ = load_authors(out)
    grid = _grid(7)
    with torch.no_grad():
        assert torch.equal(again(grid[None]).logits, model(grid[None]).logits)


def test_export_refuses_a_model_with_another_schema(tmp_path):
    from conftest import make_tiny_base
    from multistream.schema import StreamSchema

    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=3)
    model = MultiStreamLM.from_base(make_tiny_base("qwen3"), schema)
    with pytest.raises(AuthorsFormatError, match="fixed schema"):
        export_authors(model, None, tmp_path / "x")


def test_cli_import_and_export(authors_dir, tmp_path):
    root, state = authors_dir
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(root), str(tmp_path / "ours"), "--start", "seed"])
    assert result.exit_code == 0, result.output
    assert DecodingPresets.load(tmp_path / "ours").start == "seed"
    result = runner.invoke(
        app, ["export", str(tmp_path / "ours"), str(tmp_path / "theirs"), "--format", "authors"]
    )
    assert result.exit_code == 0, result.output
    files = _weight_files(tmp_path / "theirs")
    assert torch.equal(
        _read_tensors(files, ["model.channel_embedding.weight"])["model.channel_embedding.weight"],
        state["model.channel_embedding.weight"],
    )
    result = runner.invoke(app, ["import", str(root), str(tmp_path / "ours")])
    assert result.exit_code == 2 and "not empty" in result.output


# -- data ------------------------------------------------------------------------------------------


def _data_grids(tok):
    grids = []
    for text in ("hello there world", "what is it", "so far so good"):
        user = [t for w in text.split() for t in tok.encode(" " + w, add_special_tokens=False)]
        rows = [[SILENCE_ID] * len(STREAMS) for _ in range(len(user) + 4)]
        for r, t in enumerate(user):
            rows[r][0] = t
        rows[len(user)][1] = tok.encode(" the", add_special_tokens=False)[0]
        rows[1][2] = tok.encode(" a", add_special_tokens=False)[0]
        grids.append(rows)
    return grids


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("data")
    build_tokenizer(root / "tok")
    tok = AutoTokenizer.from_pretrained(root / "tok")
    grids = _data_grids(tok)
    jsonl, parquet = write_authors_data(root / "stream-data", grids)
    return tok, grids, jsonl, parquet


def test_data_loads_into_grids_with_the_fingerprint_check(data_files):
    from multistream.authors.data import AuthorsDataReport, read_authors_data
    from multistream.data.io import tokenizer_fingerprint

    tok, grids, jsonl, parquet = data_files
    report = AuthorsDataReport()
    from_jsonl = read_authors_data(jsonl, tok, report=report, expected_fingerprint=tokenizer_fingerprint(tok))
    from_parquet = read_authors_data(parquet.parent.parent, tok)  # the dataset directory
    assert report.grids == 3 and report.checked_grids == 3
    for grid, a, b in zip(grids, from_jsonl, from_parquet, strict=True):
        assert a.ids.tolist() == grid and torch.equal(a.ids, b.ids)
        assert a.schema.names == list(STREAMS)
    assert from_jsonl[0].stream_texts(tok)["User"] == " hello there world"
    with pytest.raises(AuthorsFormatError, match="fingerprint"):
        read_authors_data(jsonl, tok, expected_fingerprint="sha256:0")


def test_data_with_another_tokenizer_fails(data_files, tmp_path):
    from transformers import AutoTokenizer

    from multistream.authors.data import read_authors_data

    _tok, _grids, jsonl, _ = data_files
    # Same silence id and size, but a different vocabulary order: the ids mean other text.
    build_tokenizer(tmp_path / "other")
    data = json.loads((tmp_path / "other" / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    names = [n for n, i in sorted(vocab.items(), key=lambda x: x[1]) if i < 256]
    shuffled = names[128:] + names[:128]
    for i, n in enumerate(shuffled):
        vocab[n] = i
    (tmp_path / "other" / "tokenizer.json").write_text(json.dumps(data))
    other = AutoTokenizer.from_pretrained(tmp_path / "other")
    assert other.encode(" -", add_special_tokens=False) == [SILENCE_ID]
    with pytest.raises(AuthorsFormatError, match="does not re-tokenise"):
        read_authors_data(jsonl, other)


def test_malformed_data_names_the_record(tmp_path, data_files):
    from multistream.authors.data import read_authors_data

    tok = data_files[0]
    bad = tmp_path / "dataset.jsonl"
    bad.write_text(json.dumps({"num_rows": 2, "token_ids": [[481, 481]] * 9}) + "\n")
    with pytest.raises(AuthorsFormatError, match=r"dataset.jsonl:1: 'token_ids' must hold 10 columns"):
        read_authors_data(bad, tok)


def test_cli_import_data_then_inspect(data_files, tmp_path):
    _tok, grids, jsonl, _ = data_files
    runner = CliRunner()
    tok_dir = jsonl.parent.parent / "tok"
    result = runner.invoke(
        app, ["import", str(jsonl), str(tmp_path / "grids.jsonl"), "--tokenizer", str(tok_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 grids" in result.output
    from multistream.data.io import read_grids

    back = read_grids(tmp_path / "grids.jsonl")
    assert [g.ids.tolist() for g in back.grids] == grids
    result = runner.invoke(app, ["import", str(jsonl), str(tmp_path / "g2.jsonl")])
    assert result.exit_code == 2 and "--tokenizer" in result.output
