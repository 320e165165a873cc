"""Training: config strictness, collation, loss normalisation, optimizer groups, LoRA
trainability, overfitting, exact resume after a kill, two processes == one, save/load/export.

Everything runs on a tiny random Llama (no download) with a word-level tokenizer saved beside
it, so the base loads by path exactly as a real one does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import TINY_SILENCE, TINY_VOCAB, make_tiny_base
from multistream import MultiStreamLM, StreamGrid, StreamSchema
from multistream.data.collate import GridCollator
from multistream.data.io import write_grids
from multistream.masks import IGNORE_INDEX, next_row_targets
from multistream.training import (
    METRICS_FILE,
    MultiStreamTrainer,
    TrainConfig,
    TrainConfigError,
    build_model,
    export_merged,
    optimizer_param_groups,
    parse_overrides,
    sequential_example,
    train,
)

EOS = 2
SCHEMA = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE)


def _tiny_tokenizer():
    """Word-level tokenizer over the tiny vocabulary: ``"t5 t6"`` <-> ``[5, 6]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Special tokens get names that are no prefix of others: added tokens are matched inside words.
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, TINY_VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _grids(n: int, seed: int = 0) -> list[StreamGrid]:
    """Wait-k-like grids: the user streams n tokens, the assistant echoes each token + 1 two
    rows later and ends with EOS; lengths vary so batches need padding."""
    gen = torch.Generator().manual_seed(seed)
    grids = []
    for i in range(n):
        user = torch.randint(10, 90, (4 + i % 3,), generator=gen).tolist()
        answer = [TINY_SILENCE, TINY_SILENCE] + [t + 1 for t in user] + [EOS]
        grids.append(StreamGrid.from_columns({"user": user, "assistant": answer}, SCHEMA))
    return grids


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny base model directory (with tokenizer) and a grid file written with that tokenizer."""
    root = tmp_path_factory.mktemp("training")
    make_tiny_base("llama").save_pretrained(root / "tiny")
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(root / "tiny")
    write_grids(root / "grids.jsonl", _grids(8), tokenizer)
    return root


def _config(workdir: Path, out: str, **overrides) -> TrainConfig:
    values = dict(
        model=str(workdir / "tiny"),
        train_file=str(workdir / "grids.jsonl"),
        output_dir=str(workdir / out),
        max_steps=12,
        learning_rate=3e-3,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=4,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        warmup_steps=2,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


def _losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


# -- config ---------------------------------------------------------------------------------


def test_unknown_key_fails_with_the_key_named(workdir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_file: {workdir / 'grids.jsonl'}\nlearning_rat: 1e-4\n")
    with pytest.raises(TrainConfigError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        TrainConfig.from_yaml(recipe)


def test_yaml_numbers_and_booleans(workdir, tmp_path):
    recipe = tmp_path / "r.yaml"
    # PyYAML reads 1e-4 as a string and `no` as False: the first is converted, the second refused.
    recipe.write_text(f"train_file: {workdir / 'grids.jsonl'}\nlearning_rate: 1e-4\nuse_cpu: true\n")
    assert TrainConfig.from_yaml(recipe).learning_rate == pytest.approx(1e-4)
    recipe.write_text(f"train_file: {workdir / 'grids.jsonl'}\neval_strategy: no\n")
    with pytest.raises(TrainConfigError, match="eval_strategy got the boolean False"):
        TrainConfig.from_yaml(recipe)
    cfg = TrainConfig.from_yaml(recipe, parse_overrides(["eval_strategy=no", "max_steps=3"]))
    assert cfg.eval_strategy == "no" and cfg.max_steps == 3


def test_missing_train_file_names_the_field():
    with pytest.raises(TrainConfigError, match="train_file"):
        TrainConfig.from_dict({"use_cpu": True})


# -- data and loss --------------------------------------------------------------------------


def test_collator_pads_labels_with_ignore_and_packs_segments():
    a = {"input_ids": torch.tensor([[5, 3], [6, 3], [3, 7]])}
    b = {"input_ids": torch.tensor([[8, 3], [3, 9]]), "labels": torch.tensor([[8, 3], [IGNORE_INDEX, 9]])}
    batch = GridCollator(pad_id=3)([a, b])
    assert batch["input_ids"].shape == (2, 3, 2)
    assert batch["labels"][1].tolist() == [[8, 3], [IGNORE_INDEX, 9], [IGNORE_INDEX, IGNORE_INDEX]]
    packed = GridCollator(pad_id=3, packing=True)([a, b])
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert packed["labels"].shape == (1, 5, 2)


def test_loss_is_normalised_by_supervised_cells(workdir):
    """The Trainer's normaliser counts next-row targets of generated streams, not HF's
    ``labels != -100`` (which would count the user stream and the first row too)."""
    cfg = _config(workdir, "norm")
    model = MultiStreamLM.from_base(make_tiny_base("llama"), SCHEMA)
    trainer = MultiStreamTrainer(model=model, args=cfg, data_collator=GridCollator(pad_id=TINY_SILENCE))
    batch = GridCollator(pad_id=TINY_SILENCE)(_grids(3))
    count = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    targets = next_row_targets(batch["labels"], model._generated, batch["attention_mask"])
    assert int(count) == int((targets != IGNORE_INDEX).sum()) == int(batch["attention_mask"].sum() - 3)
    assert int(count) < int((batch["labels"] != IGNORE_INDEX).sum())
    # With that count the loss is the mean cross-entropy over supervised cells.
    out = model(**batch, num_items_in_batch=count)
    ce = torch.nn.functional.cross_entropy(
        out.logits[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX]
    )
    torch.testing.assert_close(out.loss, ce)


def test_sequential_example_is_chat_form_with_prompt_masked():
    grid = _grids(1)[0]
    example = sequential_example(grid)
    user = [t for t in grid.column("user").tolist() if t != TINY_SILENCE]
    answer = [t for t in grid.column("assistant").tolist() if t != TINY_SILENCE]
    assert example["input_ids"][:, 0].tolist() == user + answer
    assert example["labels"][:, 0].tolist() == [IGNORE_INDEX] * len(user) + answer


def test_trailing_silence_and_input_end_dropout(workdir):
    """Every grid gains silent rows after its end; about half lose the input's end token."""
    from multistream.training import build_examples

    tokenizer = _tiny_tokenizer()
    grids = _grids(8)
    for g in grids:  # close each input with the end token, as the converters do
        n = int((g.column("user") != TINY_SILENCE).sum())
        g.ids = torch.cat([g.ids, torch.full((1, 2), TINY_SILENCE)])
        g.ids[n, 0] = EOS
    write_grids(workdir / "ended.jsonl", grids, tokenizer)
    cfg = _config(workdir, "augment", train_file=str(workdir / "ended.jsonl"))
    cfg.trailing_silence_rows, cfg.input_end_dropout = 3, 0.5
    examples, _, _ = build_examples(cfg, tokenizer)
    for g, e in zip(grids, examples, strict=True):
        assert e["input_ids"].shape[0] == g.num_rows + 3
        assert (e["input_ids"][-3:] == TINY_SILENCE).all()
        assert torch.equal(e["input_ids"][: g.num_rows, 1], g.ids[:, 1])  # the assistant is untouched
    dropped = sum(int((e["input_ids"][:, 0] == EOS).sum()) == 0 for e in examples)
    assert 0 < dropped < len(examples)


def test_sequential_example_uses_the_chat_template():
    tokenizer = _tiny_tokenizer()
    # A two-token user header and a one-token assistant header around the user's text.
    tokenizer.chat_template = (
        "{% for m in messages %}t4 t5 {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}t6 {% endif %}"
    )
    grid = _grids(1)[0]
    grid.ids[int((grid.column("user") != TINY_SILENCE).sum()), 0] = EOS  # a converted grid's input end
    example = sequential_example(grid, tokenizer)
    user = [t for t in grid.column("user").tolist() if t not in (TINY_SILENCE, EOS)]
    answer = [t for t in grid.column("assistant").tolist() if t != TINY_SILENCE]
    prompt = [4, 5, *user, EOS, 6]
    assert example["input_ids"][:, 0].tolist() == prompt + answer
    assert example["labels"][:, 0].tolist() == [IGNORE_INDEX] * len(prompt) + answer


# -- model and optimizer --------------------------------------------------------------------


def test_lora_trains_exactly_the_adapter_and_stream_embedding(workdir):
    cfg = _config(workdir, "lora-params", lora=True, lora_r=4)
    model = build_model(cfg, SCHEMA, make_tiny_base("llama"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n} | {
        "stream_embedding.weight"
    }
    assert trainable == expected
    # all-linear: every attention and MLP projection of both layers, never the LM head.
    assert len([n for n in trainable if "lora_A" in n]) == 2 * 7
    assert not any("lm_head" in n or "embed_tokens" in n for n in trainable)
    groups = {g["name"]: g for g in optimizer_param_groups(model, cfg)}
    assert set(groups) == {"backbone", "stream_embedding"}


def test_full_tuning_groups_follow_spec(workdir):
    cfg = _config(workdir, "groups", weight_decay=0.1, lr_stream_embedding=1e-2, lr_head=5e-3)
    model = build_model(cfg, SCHEMA, make_tiny_base("llama"))
    groups = {g["name"]: g for g in optimizer_param_groups(model, cfg)}
    assert [p is model.stream_embedding.weight for p in groups["stream_embedding"]["params"]] == [True]
    assert groups["stream_embedding"]["lr"] == 1e-2 and groups["stream_embedding"]["weight_decay"] == 0
    assert groups["head"]["lr"] == 5e-3 and groups["embeddings"]["weight_decay"] == 0
    assert groups["backbone"]["weight_decay"] == 0.1 and groups["backbone_no_decay"]["weight_decay"] == 0
    assert all(p.dim() == 1 for p in groups["backbone_no_decay"]["params"])  # norms
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len([p for p in model.parameters() if p.requires_grad])


# -- training runs --------------------------------------------------------------------------


def test_tiny_model_overfits_a_handful_of_grids(workdir):
    cfg = _config(workdir, "overfit", max_steps=120, learning_rate=1e-2, save_strategy="no", logging_steps=20)
    train(cfg)
    first, last = _losses(workdir / "overfit")[0][1], _losses(workdir / "overfit")[-1][1]
    assert first > 2.0 and last < 0.3, (first, last)


class _Kill(TrainerCallback):
    """Stands in for a kill -9 right after step ``at`` (the checkpoint of that step is saved)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_after_kill_equals_uninterrupted(workdir, monkeypatch, lora):
    """Same seed; tolerance 0 (CPU fp32 is deterministic): a run killed after its step-8
    checkpoint and resumed ends with exactly the weights of an uninterrupted run."""
    extra = dict(lora=lora, lora_r=4, lora_dropout=0.1, per_device_train_batch_size=2)
    reference = MultiStreamLM.from_pretrained(train(_config(workdir, f"once-{lora}", **extra)))

    init = MultiStreamTrainer.__init__

    def killed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(_Kill(at=8))

    monkeypatch.setattr(MultiStreamTrainer, "__init__", killed_init)
    with pytest.raises(KeyboardInterrupt):
        train(_config(workdir, f"killed-{lora}", **extra))
    monkeypatch.setattr(MultiStreamTrainer, "__init__", init)
    resumed = MultiStreamLM.from_pretrained(
        train(_config(workdir, f"killed-{lora}", **extra), resume_from_checkpoint=True)
    )
    ref, res = reference.state_dict(), resumed.state_dict()
    assert ref.keys() == res.keys()
    for name in ref:
        torch.testing.assert_close(res[name], ref[name], rtol=0, atol=0, msg=name)


def test_two_processes_match_one(workdir, tmp_path):
    """Two CPU processes under accelerate, batch 2 each, give the loss curve of one process with
    batch 4 (the same global batches: sequential sampling). Tolerance: 1e-5 relative (measured
    ~1e-7), for the different padding lengths and the all-reduce order.

    ``accelerate launch --cpu`` starts a single process in accelerate 1.15 (its CPU launcher
    spawns several only through mpirun); ``--multi_gpu`` is the torchrun launcher, and with
    ``use_cpu: true`` the processes train on CPU over gloo.
    """
    common = dict(
        model=str(workdir / "tiny"),
        train_file=str(workdir / "grids.jsonl"),
        max_steps=6,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        train_sampling_strategy="sequential",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    one = TrainConfig.from_dict(
        {**common, "output_dir": str(tmp_path / "one"), "per_device_train_batch_size": 4}
    )
    train(one)
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        json.dumps({**common, "output_dir": str(tmp_path / "two"), "per_device_train_batch_size": 2})
    )  # JSON is YAML
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(
        [*launch, "-m", "multistream.cli", "train", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    curve_one, curve_two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in curve_two] == [s for s, _ in curve_one] == list(range(1, 7))
    for (_, a), (_, b) in zip(curve_one, curve_two, strict=True):
        assert b == pytest.approx(a, rel=1e-5)


def test_lora_save_load_roundtrip_and_export(workdir):
    cfg = _config(workdir, "roundtrip", lora=True, lora_r=4, max_steps=4, save_strategy="no")
    final = train(cfg)
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter",
        "multistream_config.json",
        "stream_embedding.safetensors",
    ]  # no base weights: the config references the base model
    loaded = MultiStreamLM.from_pretrained(final)
    assert float(loaded.stream_embedding.weight.detach().abs().sum()) > 0  # trained, not the zero init
    batch = GridCollator(pad_id=TINY_SILENCE)(_grids(2, seed=1))
    batch.pop("labels")
    with torch.no_grad():
        logits = loaded(**batch).logits
        again = MultiStreamLM.from_pretrained(final)(**batch).logits
        torch.testing.assert_close(again, logits, rtol=0, atol=0)
        merged_dir = export_merged(final, workdir / "merged")
        merged = MultiStreamLM.from_pretrained(merged_dir)
        assert not (merged_dir / "adapter").exists()
        torch.testing.assert_close(merged(**batch).logits, logits, rtol=1e-4, atol=1e-4)


def test_float16_save_loads_back_into_float32(workdir):
    final = train(
        _config(workdir, "half", lora=True, lora_r=4, max_steps=2, save_strategy="no", save_dtype="float16")
    )
    loaded = MultiStreamLM.from_pretrained(final)
    assert loaded.stream_embedding.weight.dtype == torch.float32
    lora = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_sequential_baseline_trains_with_the_same_trainer(workdir):
    final = train(_config(workdir, "sequential", form="sequential", max_steps=3, save_strategy="no"))
    model = MultiStreamLM.from_pretrained(final)
    assert model.schema.names == ["chat"]
    assert float(model.stream_embedding.weight.detach().abs().sum()) == 0  # frozen: an ordinary causal LM


def test_old_layout_key_selects_the_form_with_a_warning(workdir):
    with pytest.warns(FutureWarning, match="form: sequential"):
        config = _config(workdir, "old", layout="sequential")
    assert (config.form, config.layout) == ("sequential", "grid")
    with pytest.warns(FutureWarning):
        assert _config(workdir, "old", layout="multistream").form == "multistream"
    with pytest.raises(TrainConfigError, match="contradicts form 'sequential'"):
        _config(workdir, "old", layout="multistream", form="sequential")


def test_form_and_layout_are_checked(workdir):
    config = _config(workdir, "new")
    assert (config.form, config.layout, config.layout_options) == ("multistream", "grid", {})
    with pytest.raises(TrainConfigError, match="form 'parallel' is unknown"):
        _config(workdir, "new", form="parallel")
    with pytest.raises(TrainConfigError, match="layout 'diagonal' is unknown; choose one of grid, blocks"):
        _config(workdir, "new", layout="diagonal")
    with pytest.raises(TrainConfigError, match="layout_options must be a mapping"):
        _config(workdir, "new", layout_options=[1, 2])
