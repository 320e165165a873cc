"""``multistream chat``: the terminal view, driven by keys against a real tiny engine.

Two levels: :class:`ChatApp` with a recording console (a stub terminal), and the real command
in a tmux pane (a real terminal with cbreak input), read back with ``capture-pane``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from frontend_helpers import WordTokenizer, one_torch_thread, save_tiny_bpe_model, tiny_multistream
from multistream.engine import SessionConfig
from multistream.tui import KEYS, ChatApp, render_chat, run_chat

TOK = WordTokenizer()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def make_app(max_rows: int = 64) -> ChatApp:
    config = SessionConfig(max_rows=max_rows, stop_silent_rows=4)
    return ChatApp(tiny_multistream(), TOK, config, row_interval_s=0.0, title="tiny")


def press(app: ChatApp, keys: str, rows_per_key: int = 0) -> None:
    for key in keys:
        app.key(key)
        for _ in range(rows_per_key):
            app.tick()


def screen(app: ChatApp, width: int = 120, height: int = 24) -> str:
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=False, color_system=None)
    console.print(render_chat(app, console))
    return console.file.getvalue()


def test_typing_feeds_words_while_streams_keep_writing():
    app = make_app()
    press(app, "what is the ", rows_per_key=1)
    # Words are fed as they are completed; generated streams write meanwhile.
    assert app.session.texts()["user"].split() == TOK.decode(TOK.encode("what is the")).split()
    assert app.state.texts["assistant"] or app.state.texts["think"]
    assert not app.state.closed
    press(app, "capital\r")
    assert app.state.closed
    for _ in range(80):
        if app.tick() is None and app.session.stop is not None:
            break
    assert app.session.stop in ("silence", "max_rows")
    assert app.session.texts()["user"] == TOK.decode(TOK.encode("what is the capital"))
    text = screen(app)
    for name in ("user", "think", "assistant"):
        assert name in text  # one column per stream
    assert "> what is the capital" in text


def test_keys_pause_toggle_thinking_stop_and_reset():
    app = make_app()
    press(app, "hello ", rows_per_key=1)
    rows = app.state.rows
    app.key(KEYS["pause"])
    assert app.tick() is None and app.state.rows == rows and "PAUSED" in screen(app)
    app.key(KEYS["pause"])
    assert app.tick() is None  # resumed, but no word is queued: rows follow the typing
    press(app, "world ")
    assert app.tick() is not None
    app.key(KEYS["think"])
    assert "think" not in screen(app).split("\n")[1] and "thinking hidden" in screen(app)
    app.key(KEYS["think"])
    assert "think" in screen(app).split("\n")[1]
    app.key(KEYS["stop"])
    assert app.session.stop == "client" and app.tick() is None
    app.key(KEYS["reset"])
    assert app.session is None and app.state.typed == ""
    press(app, "again ", rows_per_key=1)  # typing starts a new session
    assert app.session.stop is None and app.state.rows > 0


def test_rows_follow_typing_unless_told_otherwise():
    app = make_app()
    press(app, "one two ")
    assert [app.tick() is not None for _ in range(4)] == [True, True, False, False]
    free = ChatApp(
        tiny_multistream(), TOK, SessionConfig(max_rows=8), row_interval_s=0.0, wait_for_input=False
    )
    press(free, "one ")
    assert all(free.tick() is not None for _ in range(4))


def test_backspace_edits_only_the_unfed_word():
    app = make_app()
    press(app, "one tw\x7f\x7f\x7f\x7f")
    assert app.state.typed == "one "  # "one " was fed: it stays


def test_run_chat_loop_with_injected_keys():
    app = make_app(max_rows=30)
    script = iter(["h", "i", " ", "y", "o", "u", "\r", *[""] * 40, KEYS["quit"][1]])

    def read_keys(timeout_s: float) -> str:
        return next(script, KEYS["quit"][0])

    console = Console(file=io.StringIO(), width=100, height=20, force_terminal=True)
    run_chat(app, console, read_keys)
    assert app.quit and app.state.closed
    assert app.session.texts()["user"] == TOK.decode(TOK.encode("hi you"))
    assert "assistant" in console.file.getvalue()


def test_typing_during_an_answer_is_a_follow_up_in_the_same_session():
    app = ChatApp(
        tiny_multistream(), TOK, SessionConfig(max_rows=200, stop_silent_rows=0), row_interval_s=0.0
    )
    press(app, "what is the capital\r")
    session = app.session
    for _ in range(6):
        assert app.tick() is not None  # the answer streams
    answer_so_far = dict(app.state.texts)
    press(app, "and of spain ", rows_per_key=1)
    # The same session reads the follow-up: nothing was thrown away.
    assert app.session is session and session.stop is None
    assert session.texts()["user"] == TOK.decode(TOK.encode("what is the capital and of spain"))
    for name in ("think", "assistant"):
        assert app.state.texts[name].startswith(answer_so_far[name])
    assert app.state.turns == 2 and not app.state.closed
    press(app, "\r")
    assert app.state.closed
    text = screen(app)
    assert "turn 2" in text and "> and of spain" in text


def test_a_new_question_after_an_answer_keeps_the_conversation_on_screen():
    app = make_app(max_rows=12)
    press(app, "first question\r")
    for _ in range(40):
        if app.tick() is None and app.session.stop is not None:
            break
    first = app.session
    assert first.stop is not None
    press(app, "second ", rows_per_key=1)
    assert app.session is not first and len(app.state.history) == 1
    assert app.state.history[0]["user"].split() == first.texts()["user"].split()
    text = screen(app, height=40)
    user_column = TOK.decode(TOK.encode("first question")).strip()
    assert user_column.split()[0] in text and "───" in text  # the earlier turn, then a rule
    app.key(KEYS["reset"])
    assert app.state.history == []


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def _wait_for_pane(session: str, predicate, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    pane = ""
    while time.monotonic() < deadline:
        pane = _tmux("capture-pane", "-p", "-t", session)
        if predicate(pane):
            return pane
        time.sleep(0.3)
    raise AssertionError(f"the pane did not show what was expected within {timeout_s} s:\n{pane}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_chat_command_in_tmux(tmp_path):
    model_dir = tmp_path / "tiny"
    save_tiny_bpe_model(model_dir)
    session = f"mschat{tmp_path.name[-8:]}".replace(".", "")
    command = (
        f"{Path(sys.executable).parent / 'multistream'} chat --model {model_dir} --row-interval-ms 50 "
        "--max-rows 400 --stop-silent-rows 0 --threads 1"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "110", "-y", "24", command)
    try:
        _wait_for_pane(session, lambda p: "Ctrl-Q quit" in p)
        _tmux("send-keys", "-t", session, "-l", "hello there how are ")
        pane = _wait_for_pane(session, lambda p: "hello" in p.split("> ")[0] and "rows" in p)
        assert "assistant" in pane and "user" in pane
        _tmux("send-keys", "-t", session, "-l", "you")
        _tmux("send-keys", "-t", session, "Enter")
        pane = _wait_for_pane(session, lambda p: "question complete" in p or "stopped" in p)
        (tmp_path / "pane.txt").write_text(pane)
        # Typing while the answer streams is a follow-up in the same session (issue 14 item 4):
        # the first question stays in the user column, the rows go on, the turn counter counts.
        rows_before = int(pane.split("rows ")[1].split()[0])
        _tmux("send-keys", "-t", session, "-l", "and then ")
        # One capture can catch the screen mid-redraw: wait for a whole frame that shows it all.
        pane = _wait_for_pane(
            session,
            lambda p: "turn 2" in p and "follow-up" in p and "hello" in p.split("> ")[0] and "and then" in p,
        )
        pane = _wait_for_pane(session, lambda p: int(p.split("rows ")[1].split()[0]) > rows_before)
        _tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive = (
                subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
            )
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, "multistream chat did not quit on Ctrl-Q"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_sessions_start_from_the_presets_start_rows():
    model = tiny_multistream()
    silence = model.schema.require_silence_id()
    header = [[silence, 11, 12], [silence, 13, 14]]  # user silent; think and assistant speak
    app = ChatApp(model, TOK, SessionConfig(max_rows=20), row_interval_s=0.0, start_rows=header)
    press(app, "hello ", rows_per_key=1)
    assert app.session.state.num_prefill == 2
    assert [list(r) for r in app.session.state.rows[:2]] == header
