"""``multistream serve`` and ``multistream chat`` from the command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from frontend_helpers import save_tiny_bpe_model
from multistream.cli import app

MULTISTREAM = str(Path(sys.executable).parent / "multistream")


def test_chat_needs_a_terminal():
    result = CliRunner().invoke(app, ["chat", "--model", "demo"], input="hello\n")
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2
    assert "interactive terminal" in output and "multistream generate" in output


def test_serve_with_an_unknown_model_says_what_to_do():
    result = CliRunner().invoke(app, ["serve", "--model", "no-such-model", "--port", "1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "no-such-model" in output and "--schema" in output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_prints_its_url_and_answers(tmp_path):
    from multistream.presets import DecodingPresets

    model_dir = tmp_path / "tiny"
    save_tiny_bpe_model(model_dir)
    # The model's saved presets are the server's defaults (one set for every command).
    DecodingPresets(silence_penalty=3.0, stop_silent_rows=6).save(model_dir)
    port = _free_port()
    command = [MULTISTREAM, "serve", "--model", str(model_dir), "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Loader progress bars come first; the URL line follows (bounded: 200 lines).
        lines = (process.stdout.readline() for _ in range(200))
        url_line = next((line for line in lines if "http://" in line or not line), "")
        assert f"open http://localhost:{port}/" in url_line
        assert f"model tiny on 127.0.0.1:{port}" in url_line  # the startup line names all three
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as response:
                    info = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.3)
        assert info["model"] == "tiny" and [s["name"] for s in info["streams"]] == ["user", "assistant"]
        assert info["sampling"]["silence_penalty"] == 3.0 and info["row_interval_ms"] == 100.0
        assert info["limits"]["idle_timeout_s"] == 60 and info["limits"]["max_sessions_per_client"] == 4
        # The command's server applies the security model: foreign Host and Origin are refused.
        for headers, status in (({"Host": "rebind.example"}, 400), ({"Origin": "https://evil.example"}, 403)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/info", headers=headers)
            try:
                urllib.request.urlopen(request, timeout=5)
                raise AssertionError(f"{headers} was not refused")
            except urllib.error.HTTPError as e:
                assert e.code == status
    finally:
        process.terminate()
        process.wait(timeout=20)
