"""Fine-tuning the authors' models on their data: import both, train, reload; the trained
stream embedding is kept (not restarted from zero)."""

from __future__ import annotations

import pytest
import torch

from authors_helpers import SILENCE_ID, STREAMS, save_authors_model, write_authors_data
from multistream.authors import import_authors, load_authors
from multistream.authors.data import read_authors_data
from multistream.data.io import write_grids
from multistream.model import MultiStreamLM
from multistream.training import TrainConfig, TrainConfigError, train


def _grids(tok, n: int = 6):
    grids = []
    for k in range(n):
        words = ["hello", "there", "what", "is", "it"][: 2 + k % 3]
        user = [t for w in words for t in tok.encode(" " + w, add_special_tokens=False)]
        rows = [[SILENCE_ID] * len(STREAMS) for _ in range(len(user) + 4)]
        for r, t in enumerate(user):
            rows[r][0] = t
            rows[r + 1][2] = t  # Analytical echoes the user one row later
        rows[len(user) + 1][1] = tok.encode(" ok", add_special_tokens=False)[0]
        grids.append(rows)
    return grids


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    state, _ = save_authors_model(root / "stream-tiny")
    _model, tok = load_authors(root / "stream-tiny")
    jsonl, _ = write_authors_data(root / "data", _grids(tok))
    write_grids(root / "grids.jsonl", read_authors_data(jsonl, tok), tok)
    ours = import_authors(root / "stream-tiny", root / "ours")
    return root, state, ours


def _config(root, model, out, **overrides):
    values = dict(
        model=str(model), train_file=str(root / "grids.jsonl"), output_dir=str(root / out), max_steps=3,
        learning_rate=1e-2, per_device_train_batch_size=2, logging_steps=1, save_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.mark.parametrize("source", ["ours", "stream-tiny"])
def test_full_fine_tuning_keeps_and_trains_the_stream_embedding(setup, source):
    root, state, _ = setup
    final = train(_config(root, root / source, f"full-{source}"))
    model = MultiStreamLM.from_pretrained(final)
    start = state["model.channel_embedding.weight"].float()
    trained = model.stream_embedding.weight
    assert model.schema.names == list(STREAMS)
    assert not torch.equal(trained, start)  # trained ...
    assert (trained - start).abs().max() < 0.5 * start.abs().max()  # ... from theirs, not from zero
    assert model.decoding_presets is not None and model.decoding_presets.start == "warm"
    assert MultiStreamLM.load_tokenizer(final).encode(" -", add_special_tokens=False) == [SILENCE_ID]


def test_lora_fine_tuning_from_an_imported_model(setup):
    root, state, ours = setup
    final = train(_config(root, ours, "lora", lora=True, lora_target_modules=["q_proj", "v_proj"]))
    model = MultiStreamLM.from_pretrained(final)
    assert model.config.base_model == str((ours / "base").resolve())
    assert not torch.equal(model.stream_embedding.weight, state["model.channel_embedding.weight"].float())
    with pytest.raises(TrainConfigError, match="multistream import"):
        train(_config(root, root / "stream-tiny", "lora-raw", lora=True))


def test_data_with_other_streams_is_refused(setup, tmp_path):
    from multistream.grid import StreamGrid
    from multistream.schema import StreamSchema

    root, _, ours = setup
    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=SILENCE_ID)
    tok = MultiStreamLM.load_tokenizer(ours)
    write_grids(tmp_path / "g.jsonl", [StreamGrid(torch.full((4, 2), SILENCE_ID), schema)], tok)
    with pytest.raises(TrainConfigError, match="differ from the model's"):
        train(_config(root, ours, "bad", train_file=str(tmp_path / "g.jsonl")))
