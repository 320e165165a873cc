import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from multistream.cli import app
from multistream.data.io import write_grids
from multistream.grid import Segment, StreamGrid
from multistream.schema import StreamSchema

runner = CliRunner()


def test_help_is_fast_and_lists_commands():
    # The CLI must not import torch just to print help (heavy imports live in commands).
    code = "import sys, multistream.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "inspect" in result.output


def test_inspect_shows_rows_and_streams(tmp_path, smol_tokenizer):
    schema = StreamSchema.parse("user,assistant").with_tokenizer(smol_tokenizer)
    grid = StreamGrid.from_segments(
        {"user": [Segment(0, "Hi there friend")], "assistant": [Segment(2, " Hello")]}, schema, smol_tokenizer
    )
    write_grids(tmp_path / "g.jsonl", [grid, grid], smol_tokenizer)
    result = runner.invoke(app, ["inspect", str(tmp_path / "g.jsonl"), "--index", "1"])
    assert result.exit_code == 0, result.output
    assert "user" in result.output and "assistant" in result.output
    assert "Hello" in result.output and "friend" in result.output
    missing = runner.invoke(app, ["inspect", str(tmp_path / "g.jsonl"), "--index", "5"])
    assert missing.exit_code == 2
    assert "holds 2 record(s)" in missing.output
    assert torch.is_tensor(grid.ids)


# -- issue 14: help, version, quiet stderr, empty input, end tokens, summary keys ---------------


def test_help_at_80_columns_keeps_option_names():
    import os

    multistream = str(Path(sys.executable).parent / "multistream")
    env = {**os.environ, "COLUMNS": "80"}
    for command in (["generate", "--help"], ["serve", "-h"], ["chat", "-h"]):
        result = subprocess.run([multistream, *command], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout
        assert max(len(line) for line in result.stdout.splitlines()) <= 80
    generate_help = subprocess.run([multistream, "generate", "-h"], capture_output=True, text=True, env=env)
    assert "--stop-silent-rows" in generate_help.stdout and "--silence-penalty" in generate_help.stdout


def test_version_and_short_help():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and version("multistream") in result.output
    assert runner.invoke(app, ["-h"]).exit_code == 0
    assert "--input" in runner.invoke(app, ["generate", "-h"]).output


def test_empty_input_is_rejected_with_a_clear_message():
    for text in ("", "   "):
        result = runner.invoke(app, ["generate", "--model", "demo", "--input", f"user={text}"])
        assert result.exit_code == 2
        assert "empty" in " ".join(result.output.split())


def _eos_tokenizer_and_model():
    """The tiny model and a word tokenizer whose eos is the token the greedy model writes
    most often in its answer, so the answer reliably reaches its end token."""
    from collections import Counter

    from frontend_helpers import WordTokenizer, tiny_multistream
    from multistream.engine import generate

    model = tiny_multistream()
    assistant = model.schema.index("assistant")
    probe = generate(model, WordTokenizer(), {"user": "hello there"}, max_rows=10, stop_silent_rows=0)
    eos = Counter(row[assistant] for row in probe.grid.ids.tolist()).most_common(1)[0][0]

    class EosTokenizer(WordTokenizer):
        eos_token_id = eos

    return model, EosTokenizer(), eos


def test_generate_hides_end_tokens_stops_and_reports_timings(monkeypatch):
    import json

    import multistream.models

    model, tokenizer, eos = _eos_tokenizer_and_model()
    monkeypatch.setattr(
        multistream.models, "resolve_multistream", lambda name, schema=None: (model, tokenizer)
    )
    args = ["generate", "--model", "tiny", "--input", "user=hello there", "--max-rows", "30", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    end_text = tokenizer.decode([eos])
    assert all(row["text"]["assistant"] != end_text for row in rows)
    assert summary["stop"] == "end_token"
    assert summary["streams"]["assistant"] == "".join(row["text"]["assistant"] or "" for row in rows)
    assert summary["wall_s"] > 0
    assert (
        summary["first_visible_output_s"] is None
        or 0 < summary["first_visible_output_s"] <= summary["wall_s"]
    )
    # The table hides it too.
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0 and "stop: end_token" in table.output
    assert f"w{eos}" not in table.output  # neither in a cell nor in the texts below the table


def test_generate_takes_its_defaults_from_the_model_presets(monkeypatch):
    import multistream.engine
    import multistream.models
    from multistream.presets import DecodingPresets

    model, tokenizer, _ = _eos_tokenizer_and_model()
    model.decoding_presets = DecodingPresets(silence_penalty=3.5, stop_silent_rows=7, max_rows=9)
    monkeypatch.setattr(
        multistream.models, "resolve_multistream", lambda name, schema=None: (model, tokenizer)
    )
    seen = []
    real = multistream.engine.generate

    def spy(*args, config, **kwargs):
        seen.append(config)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(multistream.engine, "generate", spy)
    args = ["generate", "--model", "tiny", "--input", "user=hello there", "--json"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--silence-penalty", "0.5"]).exit_code == 0
    first, second = seen
    assert (first.sampling.silence_penalty, first.stop_silent_rows, first.max_rows) == (3.5, 7, 9)
    assert (
        second.sampling.silence_penalty == 0.5 and second.stop_silent_rows == 7
    )  # one flag overrides one value


@pytest.mark.slow  # a fresh process imports torch and transformers (~12 s on a busy CPU)
def test_stderr_stays_quiet_unless_verbose(tmp_path):
    import json

    from frontend_helpers import save_tiny_bpe_model

    save_tiny_bpe_model(tmp_path / "tiny")
    multistream = str(Path(sys.executable).parent / "multistream")
    command = [multistream, "generate", "--model", str(tmp_path / "tiny"), "--input", "user=hello there"]
    result = subprocess.run(
        [*command, "--max-rows", "3", "--json", "--threads", "1"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no weight-loading bar, no library warnings
    assert json.loads(result.stdout.splitlines()[-1])["summary"]["rows"] >= 3
