"""``multistream chat``: a terminal view with one live column per stream.

What you type goes into the input stream word by word while the generated streams keep
writing. It is a client of the engine API (:class:`~multistream.engine.Session`: ``feed``,
``close``, ``step``); it never decodes on its own. Plain ANSI output through ``rich`` and keys
read from the terminal in cbreak mode, so it works over SSH and inside tmux.

Typing while an answer streams is a follow-up: the words go into the running session as new
user input (the model keeps everything it read and wrote), and the screen keeps the whole
conversation: earlier turns stay above the current one in every column.

Keys: type to ask (each completed word is fed at once), ``Enter`` closes the question,
``Ctrl-P`` pauses / resumes, ``Ctrl-R`` resets, ``Ctrl-T`` shows / hides thinking streams,
``Esc`` stops the answer, ``Ctrl-C`` or ``Ctrl-Q`` quits.

The state lives in :class:`ChatState` and the screen is a pure function of it
(:func:`render_chat`), so tests drive :class:`ChatApp` with keys and a recording console.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .engine import Row, Session, SessionConfig, SessionStopped
from .schema import Role
from .text import answer_end_tokens, visible_text

__all__ = ["KEYS", "ChatApp", "ChatState", "render_chat", "run_chat"]

# Control keys as the terminal sends them.
KEYS = {
    "pause": "\x10",  # Ctrl-P
    "reset": "\x12",  # Ctrl-R
    "think": "\x14",  # Ctrl-T
    "stop": "\x1b",  # Esc
    "quit": ("\x03", "\x11"),  # Ctrl-C, Ctrl-Q
    "enter": ("\r", "\n"),
    "backspace": ("\x7f", "\x08"),
}
_ROLE_STYLE = {Role.INPUT: "cyan", Role.OUTPUT: "green", Role.THINK: "magenta"}


@dataclass
class ChatState:
    """Everything the screen shows.

    Args:
        texts: text so far per stream (silence removed).
        typed: the text of the current question as typed.
        fed_chars: how much of ``typed`` was fed already (whole words only).
        closed: the question was completed with Enter.
        paused: rows are not being stepped.
        show_think: thinking streams are visible.
        rows: rows of the current session.
        status: one line about what is happening.
        history: texts per stream of the earlier sessions of this conversation, oldest first.
        turns: questions asked so far (follow-ups typed during an answer count too).
    """

    texts: dict[str, str] = field(default_factory=dict)
    typed: str = ""
    fed_chars: int = 0
    closed: bool = False
    paused: bool = False
    show_think: bool = True
    rows: int = 0
    status: str = "type a question; words stream in as you type"
    history: list[dict[str, str]] = field(default_factory=list)
    turns: int = 0


class ChatApp:
    """The chat loop's logic: keys in, engine calls, state out.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer.
        config: session settings (sampling, ``max_rows``, stop rules).
        row_interval_s: least time between two rows (the pace of the display).
        title: shown in the header (the model name).
        wait_for_input: decode no row while the question is open and no typed word is queued
            (rows follow the typing, as in training grids); False: rows run at their pace.
        start_rows: rows every session starts from (a warm start of the model's decoding
            presets, :meth:`~multistream.presets.DecodingPresets.start_rows`); None = none.

    Example:
        >>> app = ChatApp(model, tok, SessionConfig(max_rows=64))   # doctest: +SKIP
        >>> for key in "Hi there\\r": app.key(key)                  # doctest: +SKIP
        >>> app.tick(); render_chat(app)                            # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: SessionConfig | None = None,
        row_interval_s: float = 0.1,
        title: str = "multistream",
        wait_for_input: bool = True,
        start_rows: list[list[int]] | None = None,
    ) -> None:
        self.model = model
        self.start_rows = start_rows
        self.tokenizer = tokenizer
        self.config = config or SessionConfig()
        if not self.config.end_tokens:
            # Answers end at the tokenizer's eos, as in training data and evaluation.
            self.config = replace(self.config, end_tokens=answer_end_tokens(model.schema, tokenizer))
        self.end_tokens = {n: int(t) for n, t in self.config.end_tokens.items() if isinstance(t, int)}
        self.row_interval_s = row_interval_s
        self.wait_for_input = wait_for_input
        self.title = title
        self.schema = model.schema
        inputs = [s.name for s in self.schema.streams if s.role is Role.INPUT]
        if not inputs:
            raise ValueError(f"the model's streams {self.schema.names} have no input stream to type into")
        # Layout B models have a system block too: the user types into "user".
        self.input_stream = "user" if "user" in inputs else inputs[0]
        self.state = ChatState()
        self.session: Session | None = None
        self.quit = False
        self._due = 0.0

    # -- keys --------------------------------------------------------------------------------

    def key(self, key: str) -> None:
        """Handle one key (a character or a control code)."""
        if key in KEYS["quit"]:
            self.quit = True
        elif key == KEYS["pause"]:
            self.state.paused = not self.state.paused
            self.state.status = "paused (Ctrl-P resumes)" if self.state.paused else "resumed"
        elif key == KEYS["reset"]:
            self.reset()
        elif key == KEYS["think"]:
            self.state.show_think = not self.state.show_think
        elif key == KEYS["stop"]:
            if self.session is not None and self.session.stop is None:
                self.session.cancel("client")
                self.state.status = "stopped (Esc); type to ask again"
        elif key in KEYS["enter"]:
            self._complete()
        elif key in KEYS["backspace"]:
            # Fed words cannot be taken back; only the unfed tail is editable.
            if len(self.state.typed) > self.state.fed_chars:
                self.state.typed = self.state.typed[:-1]
        elif key.isprintable():
            self._type(key)

    def _type(self, char: str) -> None:
        if self.session is None or self.session.stop is not None:
            self._new_session()
        elif self.state.closed and not self._follow_up():
            self._new_session()  # this session cannot take a follow-up (Layout B): a new one
        s = self.state
        s.typed += char
        if char.isspace():
            words = s.typed[s.fed_chars :]
            if words.strip():
                self.session.feed(self.input_stream, words)
            s.fed_chars = len(s.typed)

    def _complete(self) -> None:
        s = self.state
        if self.session is None or s.closed or self.session.stop is not None:
            return
        rest = s.typed[s.fed_chars :]
        if rest.strip():
            self.session.feed(self.input_stream, rest)
        s.fed_chars = len(s.typed)
        self.session.close(self.input_stream)
        s.closed = True
        s.status = "question complete; answering"

    def _new_session(self) -> None:
        old = self.state
        history = list(old.history)
        if self.session is not None and any(t.strip() for t in old.texts.values()):
            history.append(dict(old.texts))  # the finished session stays on screen
        self.session = Session(self.model, self.tokenizer, self.config)
        if self.start_rows:
            self.session.prefill(self.start_rows)
        self.state = ChatState(
            texts={n: "" for n in self.schema.names}, show_think=old.show_think, status="live",
            history=history, turns=old.turns + 1,
        )  # fmt: skip
        self._due = 0.0

    def _follow_up(self) -> bool:
        """Typing after Enter while the answer still streams: reopen the question in the same
        session (:meth:`~multistream.engine.Session.reopen`), so the new words are read as more
        user input in context, and the answer goes on from what it has written (nothing is
        thrown away). False when the session cannot reopen its input (a Layout B model)."""
        try:
            self.session.reopen(self.input_stream, resume=False)
        except (ValueError, SessionStopped):
            return False
        s = self.state
        s.closed = False
        s.turns += 1
        # The new question starts a new line in the input column and the prompt.
        s.texts[self.input_stream] = s.texts.get(self.input_stream, "").rstrip() + "\n"
        s.typed, s.fed_chars = "", 0
        s.status = "follow-up: your words join the running answer"
        return True

    def reset(self) -> None:
        """Drop the session and the conversation, and clear the screen (the next key starts a
        new one)."""
        show_think = self.state.show_think
        self.session = None
        self.state = ChatState(show_think=show_think, status="reset; type a new question")

    # -- rows --------------------------------------------------------------------------------

    def due_in(self, now: float) -> float | None:
        """Seconds until the next row is due, None while no row will come."""
        if self.session is None or self.session.stop is not None or self.state.paused:
            return None
        if self.wait_for_input and self.session.awaiting_input:
            return None
        return max(0.0, self._due - now)

    def tick(self, now: float | None = None) -> Row | None:
        """Step one row if one is due; returns it."""
        now = time.monotonic() if now is None else now
        wait = self.due_in(now)
        if wait is None or wait > 0:
            return None
        self._due = now + self.row_interval_s
        row = self.session.step()
        s = self.state
        s.rows = row.index + 1
        for name, piece in visible_text(row, self.end_tokens).items():
            if piece is not None:
                s.texts[name] = s.texts.get(name, "") + piece
        if row.stop is not None:
            s.status = f"stopped ({row.stop}) after {s.rows} rows; type to ask again"
        return row


def _tail(text: str, width: int, height: int, console: Console) -> Text:
    """The last ``height`` wrapped lines of ``text`` at ``width`` columns."""
    lines = Text(text).wrap(console, max(width, 1))
    return Text("\n").join(lines[-height:]) if height > 0 else Text()


def render_chat(app: ChatApp, console: Console | None = None) -> RenderableType:
    """The screen for the app's current state: header, one column per stream, input line.

    Args:
        app: the chat app.
        console: used to measure the terminal (default: a new ``Console``).

    Returns:
        A renderable filling the console.
    """
    console = console or Console()
    width, height = console.size
    s = app.state
    visible = [st for st in app.schema.streams if s.show_think or st.role is not Role.THINK]
    body_height = max(height - 6, 3)
    column_width = max(width // max(len(visible), 1) - 4, 8)
    table = Table.grid(expand=True, padding=(0, 1))
    for _ in visible:
        table.add_column(ratio=1)
    panels = []
    for st in visible:
        # Earlier sessions of the conversation first, each ended by a rule.
        earlier = [turn.get(st.name, "").strip() for turn in s.history]
        text = "".join(f"{t}\n───\n" for t in earlier) + s.texts.get(st.name, "").lstrip()
        panels.append(
            Panel(
                _tail(text, column_width, body_height - 2, console),
                title=f"[bold {_ROLE_STYLE[st.role]}]{st.name}[/] [dim]{st.role.value}[/]",
                border_style=_ROLE_STYLE[st.role],
                height=body_height,
            )
        )
    table.add_row(*panels)
    flags = (
        [f"turn {max(s.turns, 1)}", f"rows {s.rows}"]
        + (["PAUSED"] if s.paused else [])
        + ([] if s.show_think else ["thinking hidden"])
    )
    header = Text.assemble(
        (f" {app.title} ", "bold reverse"), "  ", (s.status, "yellow"), "  ", (" · ".join(flags), "dim")
    )
    prompt = Text.assemble(
        ("> ", "bold cyan"),
        (s.typed[: s.fed_chars], "cyan"),
        (s.typed[s.fed_chars :], "bold"),
        ("▌", "blink"),
    )
    help_line = Text(
        "Enter: question done · Ctrl-P pause · Ctrl-R reset · Ctrl-T thinking · Esc stop · Ctrl-Q quit",
        style="dim",
    )
    layout = Layout()
    layout.split_column(
        Layout(header, size=1),
        Layout(table, size=body_height),
        Layout(Group(prompt, help_line), size=3),
    )
    return layout


@contextmanager
def _cbreak(stream: Any) -> Iterator[None]:
    """Read keys one by one without echo (restored on exit, also after an error)."""
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        # Also deliver Ctrl-C, Ctrl-Q, Ctrl-P, Ctrl-R, Ctrl-T as keys, not signals or flow control.
        attrs = termios.tcgetattr(fd)
        attrs[0] &= ~(termios.IXON | termios.ICRNL)
        attrs[3] &= ~termios.ISIG
        termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_terminal(fd: int, timeout_s: float) -> str:
    """Keys typed within ``timeout_s`` (several at once when typed fast, UTF-8 decoded);
    escape sequences (arrow and function keys) are dropped: only a lone Esc is a key."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return ""
    chunk = os.read(fd, 64).decode(errors="replace")
    return "" if chunk.startswith("\x1b") and len(chunk) > 1 else chunk


def run_chat(
    app: ChatApp, console: Console | None = None, read_keys: Callable[[float], str] | None = None
) -> None:
    """Run the chat on the terminal until the user quits.

    Args:
        app: the chat logic.
        console: where to draw (default: the terminal).
        read_keys: waits up to the given seconds and returns the keys typed (maybe none);
            default: the terminal's stdin in cbreak mode.
    """
    from rich.live import Live

    console = console or Console()
    guard: Any = nullcontext()
    if read_keys is None:
        if not sys.stdin.isatty():
            raise RuntimeError(
                "multistream chat needs an interactive terminal; for pipes use multistream generate"
            )
        fd = sys.stdin.fileno()
        guard = _cbreak(sys.stdin)

        def read_keys(timeout_s: float) -> str:
            return _read_terminal(fd, timeout_s)

    with guard, Live(render_chat(app, console), console=console, screen=True, auto_refresh=False) as live:
        while not app.quit:
            wait = app.due_in(time.monotonic())
            for key in read_keys(0.5 if wait is None else wait):
                app.key(key)
            app.tick()
            live.update(render_chat(app, console), refresh=True)
