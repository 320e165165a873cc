"""Bad grid files and bad conversion inputs get one clear error naming the file (and line) and
what to do, never a traceback (issue 14, items 11 and 12)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from multistream.cli import app
from multistream.data.io import GridFileError, read_grids, write_grids
from multistream.grid import Segment, StreamGrid
from multistream.schema import StreamSchema

runner = CliRunner()
GSM8K_LINE = json.dumps(
    {"question": "Tom has 3 apples and buys 2 more. How many now?", "answer": "3+2=5\n#### 5"}
)


def one_line(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


@pytest.fixture
def grid_file(tmp_path, smol_tokenizer):
    """A valid grid file with two records; tests corrupt its second line."""
    schema = StreamSchema.parse("user,assistant").with_tokenizer(smol_tokenizer)
    grid = StreamGrid.from_segments(
        {"user": [Segment(0, "Hi there friend")], "assistant": [Segment(2, " Hello")]}, schema, smol_tokenizer
    )
    path = tmp_path / "g.jsonl"
    write_grids(path, [grid, grid], smol_tokenizer)
    return path


def corrupt(path, change) -> None:
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    change(record)
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


# -- item 11: grid files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: r["token_ids"]["assistant"].__setitem__(0, 10**6), "outside the tokenizer's vocabulary"),
        (lambda r: r["token_ids"]["user"].__setitem__(1, -7), "negative id -7"),
        (
            lambda r: r["token_ids"].__setitem__("user", [str(t) for t in r["token_ids"]["user"]]),
            "whole numbers",
        ),
        (lambda r: r["token_ids"]["user"].__setitem__(0, 1.5), "whole numbers"),
        (lambda r: r["token_ids"]["user"].__setitem__(0, True), "whole numbers"),
        (lambda r: r["token_ids"]["user"].__setitem__(0, [1, 2]), "whole numbers"),
        (lambda r: r["token_ids"].__setitem__("user", "12 13"), "must be a list"),
    ],
)
def test_bad_token_ids_name_file_and_line(grid_file, smol_tokenizer, change, expected):
    corrupt(grid_file, change)
    with pytest.raises(GridFileError) as info:
        read_grids(grid_file, tokenizer=smol_tokenizer)  # what training does before step 0
    assert f"{grid_file}:2" in str(info.value) and expected in str(info.value)
    result = runner.invoke(app, ["inspect", str(grid_file), "--index", "1"])
    assert result.exit_code == 2 and f"{grid_file}:2" in one_line(result) and expected in one_line(result)
    # The good first record still reads.
    assert runner.invoke(app, ["inspect", str(grid_file), "--index", "0"]).exit_code == 0


def test_text_only_grid_can_be_inspected_with_a_tokenizer(grid_file):
    corrupt(grid_file, lambda r: (r.pop("token_ids"), r.pop("tokenizer")))
    result = runner.invoke(app, ["inspect", str(grid_file), "--index", "1", "--tokenizer", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    assert "friend" in result.output and "Hello" in result.output


def test_binary_grid_file_names_the_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and f"{path}:1" in one_line(result) and "UTF-8" in one_line(result)


# -- item 12: conversion --------------------------------------------------------------------------


def convert(src, out, *extra):
    args = ["convert", "--input", str(src), "--format", "gsm8k", "--out", str(out), "--limit", "4", *extra]
    return runner.invoke(app, args)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_binary_input_is_a_clear_error(tmp_path, skip_bad):
    src = tmp_path / "data.jsonl"
    src.write_bytes(os.urandom(2048) + b"\x00" * 16)
    result = convert(src, tmp_path / "out.jsonl", *(["--skip-bad"] if skip_bad else []))
    assert result.exit_code == 2 and "binary file" in one_line(result)
    assert not (tmp_path / "out.jsonl").exists()


def test_non_utf8_lines_name_the_line(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_bytes(GSM8K_LINE.encode() + b"\n\xff\xfe broken latin-1 \xe9\n")
    result = convert(src, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and f"{src}:2" in one_line(result) and "UTF-8" in one_line(result)
    skipped = convert(src, tmp_path / "out.jsonl", "--skip-bad")
    assert skipped.exit_code == 0 and "records skipped as malformed" in skipped.output


def test_out_naming_a_directory_is_a_clear_error(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text(GSM8K_LINE + "\n")
    result = convert(src, tmp_path)
    assert result.exit_code == 2 and "is a directory" in one_line(result)
    with pytest.raises(GridFileError, match="is a directory"):
        write_grids(tmp_path, [], None)


def test_empty_input_fails_and_writes_nothing(tmp_path):
    src = tmp_path / "empty.jsonl"
    for content in ("", "\n\n"):
        src.write_text(content)
        result = convert(src, tmp_path / "out.jsonl")
        assert result.exit_code == 2 and "no examples" in one_line(result)
        assert not (tmp_path / "out.jsonl").exists()


def test_output_follows_the_umask(tmp_path, smol_tokenizer):
    src = tmp_path / "data.jsonl"
    src.write_text(GSM8K_LINE + "\n")
    previous = os.umask(0o027)
    try:
        assert convert(src, tmp_path / "out.jsonl").exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o640


WRITER = """
import sys, time
from multistream.data.io import write_grids
from multistream.grid import StreamGrid
from multistream.loading import load_tokenizer
from multistream.schema import StreamSchema
tok = load_tokenizer("smollm2-135m")
schema = StreamSchema.parse("user,assistant").with_tokenizer(tok)
def grids():
    yield StreamGrid.silent_grid(schema, 3)
    print("writing", flush=True)
    time.sleep(120)  # killed here, with the temporary file open
write_grids(sys.argv[1], grids(), tok)
"""


def test_kill_9_leaves_no_temp_file_that_later_runs_keep(tmp_path, smol_tokenizer):
    out = tmp_path / "out.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        temps = list(tmp_path.glob(".out.jsonl.*.tmp"))
        assert [t.name for t in temps] == [f".out.jsonl.{writer.pid}.tmp"]  # recognisable by name
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert not out.exists() and temps[0].exists()  # the kill left it behind
    # The next write removes the dead process's leftover, and leaves a live writer's file alone.
    schema = StreamSchema.parse("user,assistant").with_tokenizer(smol_tokenizer)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".out.jsonl.{other.pid}.tmp"
        busy.write_text("in progress")
        assert write_grids(out, [StreamGrid.silent_grid(schema, 2)], smol_tokenizer) == 1
        assert not temps[0].exists() and busy.exists()
    finally:
        other.kill()
        other.wait(timeout=30)
    assert read_grids(out).grids[0].num_rows == 2


def test_convert_shows_a_progress_bar_on_a_terminal(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join([GSM8K_LINE] * 30) + "\n")
    args = ["convert", "--input", str(src), "--format", "gsm8k", "--out", str(tmp_path / "out.jsonl")]
    result = runner.invoke(app, args, env={"FORCE_COLOR": "1", "COLUMNS": "100"})  # rich: a terminal
    assert result.exit_code == 0, result.output
    assert "convert" in result.stderr and "30/30" in result.stderr
