"""Bad training input gets one clear error naming the field or file (issue 14 item 13), and
``--resume`` skips a damaged checkpoint, names it, and continues from the previous whole one."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_base
from multistream import MultiStreamLM
from multistream.cli import app
from multistream.data.io import write_grids
from multistream.training import TrainConfig, TrainConfigError, train
from multistream.training.checkpoints import CheckpointWarning, checkpoint_problem, choose_resume_checkpoint
from test_training import _config, _grids, _tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The training tests' tiny base model (with tokenizer) and grid file."""
    root = tmp_path_factory.mktemp("bad-training")
    make_tiny_base("llama").save_pretrained(root / "tiny")
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(root / "tiny")
    write_grids(root / "grids.jsonl", _grids(8), tokenizer)
    return root


def _recipe(tmp_path: Path, workdir: Path, extra: str) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {workdir / 'tiny'}\ntrain_file: {workdir / 'grids.jsonl'}\noutput_dir: {tmp_path / 'out'}\n"
        f"use_cpu: true\n{extra}"
    )
    return recipe


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lora: flase", "lora must be true or false, got 'flase'"),
        ("lora: 1", "lora must be true or false, got 1"),
        ("max_steps: -3", "max_steps must be a positive number of optimizer steps, or -1"),
        ("max_steps: 0", "max_steps must be a positive number"),
        ("lora_r: 0", "lora_r must be > 0, got 0"),
        ("learning_rate: -1e-4", "learning_rate must be > 0"),
        ("lora_dropout: 1.5", r"lora_dropout must be in \[0, 1\)"),
    ],
)
def test_out_of_type_or_range_values_are_refused_naming_file_and_field(workdir, tmp_path, line, message):
    recipe = _recipe(tmp_path, workdir, line + "\n")
    with pytest.raises(TrainConfigError, match=f"^{recipe}: {message}"):
        TrainConfig.from_yaml(recipe)


def test_boolean_words_still_work(workdir, tmp_path):
    recipe = _recipe(tmp_path, workdir, "lora: true\n")
    assert TrainConfig.from_yaml(recipe, {"lora": "no"}).lora is False  # --set lora=no keeps "no" as text
    assert TrainConfig.from_yaml(recipe).lora is True
    assert TrainConfig.from_yaml(recipe, {"lora": "On"}).lora is True


def test_missing_train_file_is_named_before_the_model_loads(workdir, tmp_path, monkeypatch):
    import multistream.training.recipe as recipe_module

    def no_model(*_):
        raise AssertionError("the model must not load when the data file is missing")

    monkeypatch.setattr(recipe_module, "load_base_for_training", no_model)
    config = _config(workdir, "missing", train_file=str(tmp_path / "runs" / "nothing.jsonl"))
    with pytest.raises(
        TrainConfigError, match=r"train_file: .*nothing\.jsonl does not exist; write it first"
    ):
        train(config)
    config = _config(workdir, "missing", eval_file="not/there.jsonl")
    with pytest.raises(TrainConfigError, match=r"eval_file: not/there\.jsonl does not exist \(relative to"):
        train(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("model: gpt-17\n", "model: base model 'gpt-17' is neither an embedded model"),
        ("", "train_file: .*absent.jsonl does not exist"),
    ],
    ids=["unknown-model", "missing-train-file"],
)
def test_cli_train_fails_with_one_clear_line(workdir, tmp_path, extra, message):
    recipe = _recipe(tmp_path, workdir, extra)
    args = ["train", str(recipe)]
    if not extra:
        args += ["--set", f"train_file={tmp_path / 'absent.jsonl'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    import re

    assert re.search(message, " ".join(result.output.split())), result.output


# -- resume ---------------------------------------------------------------------------------

EXTRA = dict(lora=True, lora_r=4, lora_dropout=0.1, per_device_train_batch_size=2, max_steps=8, save_steps=4)


@pytest.fixture(scope="module")
def runs(workdir):
    """An uninterrupted LoRA run (checkpoints 4 and 8) and its final weights."""
    config = _config(workdir, "whole", **EXTRA)
    final = train(config)
    return Path(config.output_dir), MultiStreamLM.from_pretrained(final).state_dict()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "adapter": lambda c: _truncate(c / "adapter" / "adapter_model.safetensors"),
    "trainer_state": lambda c: (c / "trainer_state.json").write_text("{ not json"),
    "optimizer": lambda c: _truncate(c / "optimizer.pt"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_checkpoint_and_names_it(runs, tmp_path, damage):
    whole, _ = runs
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    assert checkpoint_problem(run / "checkpoint-8") is None
    DAMAGE[damage](run / "checkpoint-8")
    assert checkpoint_problem(run / "checkpoint-8") is not None
    with pytest.warns(CheckpointWarning, match=r"checkpoint-8 \(.*\)\. Resuming from .*checkpoint-4"):
        assert choose_resume_checkpoint(run, True) == str(run / "checkpoint-4")
    with pytest.raises(TrainConfigError, match=r"cannot resume from .*checkpoint-8: "):
        choose_resume_checkpoint(run, str(run / "checkpoint-8"))
    DAMAGE[damage](run / "checkpoint-4")
    with pytest.raises(TrainConfigError, match=r"no whole checkpoint .*checkpoint-8 .*checkpoint-4"):
        choose_resume_checkpoint(run, True)


def test_resume_past_a_truncated_optimizer_ends_with_the_uninterrupted_weights(workdir, runs, tmp_path):
    whole, reference = runs
    config = _config(workdir, "resumed", **EXTRA)
    shutil.copytree(whole, config.output_dir)
    shutil.rmtree(Path(config.output_dir) / "final")
    DAMAGE["optimizer"](Path(config.output_dir) / "checkpoint-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = train(config, resume_from_checkpoint=True)  # continues from checkpoint-4
    assert any(issubclass(w.category, CheckpointWarning) and "checkpoint-8" in str(w.message) for w in caught)
    resumed = MultiStreamLM.from_pretrained(final).state_dict()
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0, msg=name)
    assert checkpoint_problem(Path(config.output_dir) / "checkpoint-8") is None  # rewritten whole
