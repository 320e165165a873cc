"""Training with Layout B (and LongCE) and with Layout A's dropped silence cells: the recipe
fields reach the collator and the loss, and resume stays bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import TINY_SILENCE, make_tiny_base
from multistream import MultiStreamLM
from multistream.data.io import tokenizer_fingerprint, write_grids
from multistream.training import MultiStreamTrainer, TrainConfig, TrainConfigError, train
from test_training import _grids, _tiny_tokenizer


def _blocks_records(n: int, tokenizer) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        user = torch.randint(10, 80, (4 + i % 3,), generator=gen).tolist()
        system, user_ids = [1, 5, 6, 2], [1, 7, *user, 2]
        heads = [[1, 8, 9, *[t + 1 for t in user], 2], [1, 8, 4, *[t + 2 for t in user[:2]], 2]]
        blocks = [("system", system), ("user", user_ids), ("assistant", heads[0]), ("assistant", heads[1])]
        out.append(
            {
                "format": "multistream.blocks",
                "version": 1,
                "blocks": [
                    {"role": r, "text": [{"text": " ".join(f"t{t}" for t in ids)}]} for r, ids in blocks
                ],
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "token_ids": [ids for _, ids in blocks],
                "targets_from": [3, 3],
            }
        )
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout-training")
    make_tiny_base("llama").save_pretrained(root / "tiny")
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(root / "tiny")
    with open(root / "blocks.jsonl", "w") as f:
        for record in _blocks_records(8, tokenizer):
            f.write(json.dumps(record) + "\n")
    grids = _grids(8)
    write_grids(root / "grids.jsonl", grids, tokenizer)
    return root


def _config(workdir: Path, out: str, **overrides) -> TrainConfig:
    values = dict(
        model=str(workdir / "tiny"),
        train_file=str(workdir / "blocks.jsonl"),
        layout="blocks",
        output_dir=str(workdir / out),
        max_steps=8,
        learning_rate=3e-3,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=4,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


class _Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt


# Sec 5-like schedule squeezed into 8 steps, so some steps draw LongCE and some do not.
LONGCE = {
    "gamma": 2.0,
    "positive_only": True,
    "balance": "head",
    "probability": 0.5,
    "start_step": 0,
    "ramp_steps": 2,
}


@pytest.mark.parametrize("packing", [False, True])
def test_blocks_training_with_longce_resumes_bit_exactly(workdir, monkeypatch, packing):
    extra = dict(longce=LONGCE, packing=packing)
    reference = MultiStreamLM.from_pretrained(train(_config(workdir, f"once-{packing}", **extra)))
    assert reference.config.layout == "blocks" and reference.num_streams == 4
    init = MultiStreamTrainer.__init__

    def killed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(_Kill())

    monkeypatch.setattr(MultiStreamTrainer, "__init__", killed_init)
    with pytest.raises(KeyboardInterrupt):
        train(_config(workdir, f"killed-{packing}", **extra))
    monkeypatch.setattr(MultiStreamTrainer, "__init__", init)
    resumed = MultiStreamLM.from_pretrained(
        train(_config(workdir, f"killed-{packing}", **extra), resume_from_checkpoint=True)
    )
    ref, res = reference.state_dict(), resumed.state_dict()
    for name in ref:
        torch.testing.assert_close(res[name], ref[name], rtol=0, atol=0, msg=name)


def test_blocks_sequential_twin_and_loss_goes_down(workdir):
    final = train(_config(workdir, "blocks-lr", max_steps=12, save_strategy="no"))
    losses = [json.loads(x) for x in (Path(final).parent / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    assert losses[-1] < losses[0]
    twin = MultiStreamLM.from_pretrained(
        train(_config(workdir, "twin", form="sequential", max_steps=2, save_strategy="no"))
    )
    assert twin.config.layout == "grid" and twin.num_streams == 1


def test_grid_with_hidden_silence_trains_on_dropped_cells_and_records_it(workdir):
    final = train(
        _config(
            workdir,
            "grid-hidden",
            layout="grid",
            train_file=str(workdir / "grids.jsonl"),
            layout_options={"hide_silence": True},
            max_steps=3,
            save_strategy="no",
        )
    )
    model = MultiStreamLM.from_pretrained(final)
    assert model.config.hides_silence and model.schema.silence_id == TINY_SILENCE


def test_recipe_errors_name_the_fix(workdir):
    with pytest.raises(TrainConfigError, match="longce needs layout: blocks"):
        _config(workdir, "x", layout="grid", longce={"gamma": 2.0})
    with pytest.raises(TrainConfigError, match="layout_options"):
        _config(workdir, "x", layout_options={"colour": 1})
    with pytest.raises(TrainConfigError, match="missing.jsonl does not exist"):
        train(_config(workdir, "x", train_file=str(workdir / "missing.jsonl")))


def test_sparse_logits_trains_the_same_losses(workdir):
    """LM-head logits only where a target exists: the same loss curve (to fp32 rounding)."""

    def losses(out: str, **extra) -> list[float]:
        final = train(_config(workdir, out, max_steps=3, save_strategy="no", **extra))
        records = [json.loads(x) for x in (Path(final).parent / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    for layout in ("blocks", "grid"):
        extra = {} if layout == "blocks" else {"layout": "grid", "train_file": str(workdir / "grids.jsonl")}
        dense = losses(f"dense-{layout}", **extra)
        sparse = losses(f"sparse-{layout}", sparse_logits=True, **extra)
        assert sparse == pytest.approx(dense, rel=1e-4)
