"""Loading with bad input gets one clear error naming the file and the fix (issue 14 item 14):
a saved model with a truncated adapter or stream embedding, and a model cache that cannot be
written (``MULTISTREAM_CACHE`` under a file, or somewhere unwritable)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_SILENCE, make_tiny_base
from multistream import MultiStreamLM, StreamSchema
from multistream.cli import app
from multistream.loading import BaseModelError, load_base, load_tokenizer, resolve_multistream
from multistream.training import export_merged

runner = CliRunner()


@pytest.fixture
def saved_lora_model(tmp_path) -> Path:
    """A saved 2-stream model with a LoRA adapter over a tiny base saved beside it."""
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "tiny"
    base = make_tiny_base("llama")
    base.save_pretrained(base_dir)
    base.config.multistream_base_reference = str(base_dir)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE)
    MultiStreamLM.from_base(peft, schema, base_model=str(base_dir)).save_pretrained(tmp_path / "model")
    MultiStreamLM.from_pretrained(tmp_path / "model")  # whole: loads
    return tmp_path / "model"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 16])


@pytest.mark.parametrize("damaged", ["adapter/adapter_model.safetensors", "stream_embedding.safetensors"])
def test_a_truncated_saved_model_names_the_file(saved_lora_model, tmp_path, damaged):
    _truncate(saved_lora_model / damaged)
    pattern = (
        rf"saved model .*model is damaged: .*{re.escape(damaged)} is truncated: [\d,]+ of [\d,]+ bytes\. Copy"
    )
    with pytest.raises(BaseModelError, match=pattern):
        resolve_multistream(saved_lora_model)
    with pytest.raises(BaseModelError, match=pattern):
        export_merged(saved_lora_model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    result = runner.invoke(
        app, ["export", str(saved_lora_model), str(tmp_path / "merged")], env={"COLUMNS": "1000"}
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{damaged} is truncated" in result.output


def test_cli_model_flag_with_a_truncated_adapter_fails_cleanly(saved_lora_model):
    _truncate(saved_lora_model / "adapter" / "adapter_model.safetensors")
    args = ["generate", "--model", str(saved_lora_model), "--input", "user=hello"]
    result = runner.invoke(app, args, env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "SafetensorError" not in result.output
    assert "adapter/adapter_model.safetensors is truncated" in result.output


def _unwritable_cache(tmp_path: Path) -> list[str]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    places = [str(a_file / "cache"), "/proc/multistream-cache"]  # /proc refuses mkdir, even for root
    if os.geteuid() != 0:  # permissions bind everyone but root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        places.append(str(locked / "cache"))
    return places


def test_an_unusable_cache_dir_says_to_set_multistream_cache(tmp_path, monkeypatch):
    for place in _unwritable_cache(tmp_path):
        monkeypatch.setenv("MULTISTREAM_CACHE", place)
        message = (
            rf"cannot write the model cache {re.escape(place)}/models: .*Set MULTISTREAM_CACHE to a writable"
        )
        with pytest.raises(BaseModelError, match=message):
            load_base("smollm2-135m")
        with pytest.raises(BaseModelError, match=message):
            load_tokenizer("smollm2-135m")
