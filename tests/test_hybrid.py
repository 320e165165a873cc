"""Column mode for the linear-attention (Gated DeltaNet) layers of a hybrid Qwen3.5 model:
exactness on a tiny random ``qwen3_5_text`` model, decoding through the engine, and the
authors' Stream-27B format."""

from __future__ import annotations

import pytest
import torch

from authors_helpers import STREAMS, save_authors_model, tiny_qwen35_config
from multistream.engine import generate
from multistream.hybrid import attach_column_mode, linear_attention_modules
from multistream.model import MultiStreamConfig, MultiStreamLM
from multistream.schema import StreamSchema
from test_engine import WordTokenizer

SILENCE = 3
VOCAB = 96


def _base(seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        tiny_qwen35_config(vocab_size=VOCAB, pad_token_id=0, eos_token_id=2, attn_implementation="sdpa")
    ).eval()


def _model(spec: str = "user,think,assistant", seed: int = 0) -> MultiStreamLM:
    schema = StreamSchema(StreamSchema.parse(spec).streams, silence_id=SILENCE)
    model = MultiStreamLM(_base(seed), MultiStreamConfig(schema=schema)).eval()
    with torch.no_grad():
        model.stream_embedding.weight.normal_(0, 0.5)
    return model


def _grid(rows: int, streams: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (1, rows, streams), generator=torch.Generator().manual_seed(seed))


def test_the_tiny_model_is_a_real_hybrid():
    model = _model()
    assert model.column_mode is not None
    assert len(linear_attention_modules(model.base_model)) == 3  # 3 DeltaNet + 1 softmax layer
    assert model.get_base_model().config.layer_types.count("full_attention") == 1


def test_one_stream_equals_the_base():
    base = _base(1)
    schema = StreamSchema(StreamSchema.parse("assistant").streams, silence_id=SILENCE)
    model = MultiStreamLM(base, MultiStreamConfig(schema=schema)).eval()  # zero stream embedding
    ids = _grid(9, 1, seed=1)
    with torch.no_grad():
        ours = model(ids).logits[0, :, 0]
        model.column_mode.remove()
        stock = base(input_ids=ids[..., 0]).logits[0]
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


def _layer_outputs(model: MultiStreamLM, ids: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    layers = model.get_base_model().model.layers
    handles = [
        layer.register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone())) for layer in layers
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _leaks(model: MultiStreamLM, rows: int = 6) -> list[str]:
    """Change one cell (r, c) and list every layer output that moved where it must not: any cell
    of an earlier row, or another cell of the same row."""
    C = model.num_streams
    ids = _grid(rows, C, seed=2)
    before = _layer_outputs(model, ids)
    leaks = []
    for r, c in [(0, 0), (2, 1), (3, 2), (rows - 1, 0)]:
        changed = ids.clone()
        changed[0, r, c] = (changed[0, r, c] + 7) % VOCAB
        after = _layer_outputs(model, changed)
        for layer, (a, b) in enumerate(zip(before, after, strict=True)):
            moved = (a - b).abs().amax(-1)[0].view(rows, C) > 0  # [R, C]
            forbidden = torch.zeros(rows, C, dtype=torch.bool)
            forbidden[:r] = True
            forbidden[r] = True
            forbidden[r, c] = False
            if bool((moved & forbidden).any()):
                leaks.append(
                    f"layer {layer} ({model.get_base_model().config.layer_types[layer]}), cell {(r, c)}"
                )
    return leaks


def test_a_column_mode_layer_equals_the_stock_layer_run_on_each_column_alone():
    model = _model()
    layer = model.column_mode.modules[0]
    R, C, D = 5, 3, 32
    x = torch.randn(1, R * C, D, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = layer(hidden_states=x)  # [1, R·C, D], hooks regroup by column
        model.column_mode.remove()
        columns = [layer(hidden_states=x[:, c::C]) for c in range(C)]  # stock layer, one stream at a time
    expected = torch.stack(columns, 2).reshape(1, R * C, D)  # back to row-major
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_no_same_row_leakage_through_any_layer():
    model = _model()
    assert _leaks(model) == []


def test_the_leak_test_catches_a_plain_deltanet():
    # Without column mode the DeltaNet layers mix a row's cells: the check above must see it.
    model = _model()
    model.column_mode.remove()
    leaks = _leaks(model)
    assert any("layer 0 (linear_attention)" in leak for leak in leaks)


def test_cached_decoding_equals_the_full_forward():
    model = _model()
    ids = _grid(8, 3, seed=3)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :3], use_cache=True)
        parts, cache = [out.logits], out.cache
        for r in range(3, 8):
            out = model(ids[:, r : r + 1], cache=cache, use_cache=True)
            parts.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_a_batch_equals_its_items():
    model = _model()
    ids = torch.cat([_grid(5, 3, seed=4), _grid(5, 3, seed=5)])
    with torch.no_grad():
        batch = model(ids).logits
        one = torch.cat([model(ids[i : i + 1]).logits for i in range(2)])
    torch.testing.assert_close(batch, one, atol=1e-5, rtol=0)


def test_the_engine_decodes_a_hybrid_exactly():
    model = _model()
    result = generate(model, WordTokenizer(), {"user": [10, 11, 12]}, max_rows=8, stop_silent_rows=0)
    grid = result.grid.ids
    with torch.no_grad():
        full = model(grid[None]).logits[0]
    # Greedy: every generated cell is the argmax of the full forward over the finished grid.
    assert torch.equal(full[:-1].argmax(-1)[:, 1:], grid[1:, 1:])


def test_training_gradients_reach_every_linear_layer():
    model = _model()
    model.train()
    ids = _grid(4, 3, seed=6)
    model(ids, labels=ids).loss.backward()
    for module in linear_attention_modules(model.base_model):
        assert module.in_proj_qkv.weight.grad is not None and module.in_proj_qkv.weight.grad.abs().sum() > 0


def test_attaching_twice_reuses_and_a_different_width_fails():
    model = _model()
    base = model.get_base_model()
    assert attach_column_mode(base, 3) is model.column_mode
    with pytest.raises(ValueError, match="already in column mode for 3 streams"):
        attach_column_mode(base, 4)


def test_rows_must_be_whole():
    model = _model()
    with pytest.raises(ValueError, match="whole rows"):
        model.column_mode.modules[0](hidden_states=torch.zeros(1, 4, 32))


# -- the authors' Stream-27B format ----------------------------------------------------------------


def test_an_authors_qwen35_directory_loads_decodes_and_exports_bit_exact(tmp_path):
    from multistream.authors import export_authors, load_authors
    from multistream.authors.convert import _read_tensors, _weight_files
    from multistream.presets import DecodingPresets

    state, _ = save_authors_model(tmp_path / "stream-27b-tiny", arch="qwen3_5_text", shards=2)
    model, tok = load_authors(tmp_path / "stream-27b-tiny")
    assert model.column_mode is not None and model.schema.names == list(STREAMS)
    assert _leaks(model, rows=4) == []
    presets = DecodingPresets.load(model).merged(max_rows=4, temperature=0.0)
    header = presets.start_rows(model.schema, tok)
    result = generate(
        model, tok, {"User": "hi there"}, prefill=torch.tensor(header), **presets.session_kwargs()
    )
    assert result.grid.ids[: len(header)].tolist() == header
    out = export_authors(model, tok, tmp_path / "theirs")
    files = _weight_files(out)
    exported = _read_tensors(files, list(files))
    assert set(exported) == set(state) and all(torch.equal(exported[k], state[k]) for k in state)
