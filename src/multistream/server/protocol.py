"""The live session protocol: typed, versioned JSON messages over one WebSocket.

Every message is one JSON object with a ``type`` field. This module is the only definition of
the messages; the server, the web page (``static/app.js``), the terminal client and the load test
all follow it, and ``docs/frontends.md`` documents it with examples.

A conversation, client (``>``) and server (``<``)::

    > {"type": "open", "version": 1, "sampling": {"temperature": 0.7}}
    < {"type": "ready", "version": 1, "session": "s1", "streams": [...], "limits": {...}, ...}
    > {"type": "feed", "stream": "user", "text": "What is"}
    < {"type": "row", "session": "s1", "row": 0, "text": {"user": " What", "assistant": null}, ...}
    > {"type": "close", "stream": "user"}
    < {"type": "row", ...}
    > {"type": "feed", "stream": "user", "text": "and why?", "reopen": true}   (a follow-up)
    < {"type": "row", ...}
    < {"type": "stopped", "session": "s1", "reason": "silence", "rows": 31, "texts": {...}}

A bad message gets an ``error`` event and the connection stays usable; after ``stopped`` the
client may ``open`` a new session on the same connection.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "MAX_SEED",
    "PROTOCOL_VERSION",
    "BaselineEnd",
    "BaselineMessage",
    "BaselineToken",
    "ClientMessage",
    "CloseMessage",
    "ErrorCode",
    "ErrorEvent",
    "FeedMessage",
    "OpenMessage",
    "ProtocolError",
    "ReadyEvent",
    "RowEvent",
    "SamplingSettings",
    "ServerEvent",
    "StopMessage",
    "StoppedEvent",
    "StreamInfo",
    "encode_event",
    "parse_client_message",
]

# Bumped on any incompatible change; a client that sends another version gets an error event.
PROTOCOL_VERSION = 1
# Largest seed: torch generators take 64-bit seeds, and session i of a batch uses seed + i.
MAX_SEED = 2**63 - 1

ErrorCode = Literal[
    "bad_json",  # the frame is not a JSON object
    "bad_message",  # unknown type, missing or invalid field (``field`` names it)
    "unsupported_version",  # open.version differs from PROTOCOL_VERSION
    "not_open",  # feed/close/stop before open
    "already_open",  # open while a session runs; stop it first
    "limit",  # a server limit was hit (sessions, rows, input size); the message names it
    "unauthorized",  # missing or wrong bearer token
    "engine",  # the engine refused the request (e.g. feeding a closed stream)
]


class _Message(BaseModel):
    # Unknown fields are errors: a misspelt option must not be silently ignored. NaN and
    # infinity (Python's json accepts them) are refused like any other out-of-range number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# -- client -> server -----------------------------------------------------------------------------


class SamplingSettings(_Message):
    """Sampling options of a session; fields left out take the server's defaults.

    Args:
        temperature: 0 = greedy.
        top_k: 0 = off.
        top_p: 1.0 = off.
        silence_penalty: logit subtracted from the output streams' silence token once the
            inputs are closed.
        think_silence_penalty: the same for thinking streams.
        seed: random seed of the session (None: random).
    """

    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    silence_penalty: float | None = Field(default=None, ge=0.0, le=100.0)
    think_silence_penalty: float | None = Field(default=None, ge=0.0, le=100.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class OpenMessage(_Message):
    """Start a session.

    Args:
        version: the protocol version the client speaks (must equal :data:`PROTOCOL_VERSION`).
        model: the model the client expects; None accepts the served one. A different name is an
            error rather than a silent substitution.
        sampling: sampling settings.
        clock: ``lockstep`` (each row takes the next queued input token) or ``realtime``.
        max_rows: stop after this many rows; None = the server's limit.
        wait_for_input: while an input stream is open and nothing is queued, decode no row:
            rows follow the typing, as in training grids where every row of a question holds a
            token. False: rows run at the server's pace and missing input is silence (for models
            trained with gaps, e.g. with the ``realtime`` clock).
    """

    type: Literal["open"] = "open"
    version: int = PROTOCOL_VERSION
    model: str | None = None
    sampling: SamplingSettings = SamplingSettings()
    clock: Literal["lockstep", "realtime"] = "lockstep"
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000)
    wait_for_input: bool = True


class FeedMessage(_Message):
    """Queue text for an input stream; whole words (the engine encodes ``" " + word``).

    Args:
        stream: the input stream.
        text: the words.
        reopen: the stream was closed (``close``) and this text is a follow-up: open it again
            first, so the running session reads the text as new user input in the context of
            everything so far, during the answer (the session must not have stopped). Left
            out (false), feeding a closed stream is an ``engine`` error, as in version 1.
    """

    type: Literal["feed"] = "feed"
    stream: str
    text: str
    reopen: bool = False


class CloseMessage(_Message):
    """Mark an input stream (None: all) finished; the answer then winds down and stops."""

    type: Literal["close"] = "close"
    stream: str | None = None


class StopMessage(_Message):
    """End the session now; the server answers with ``stopped`` (reason ``client``)."""

    type: Literal["stop"] = "stop"


class BaselineMessage(_Message):
    """Answer ``text`` sequentially with the base model, for comparison (one token per row time).

    Args:
        text: the whole question (a sequential model cannot start before it has all of it).
        max_tokens: stop after this many tokens; None = the server's row limit.
    """

    type: Literal["baseline"] = "baseline"
    text: str
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


ClientMessage = Annotated[
    OpenMessage | FeedMessage | CloseMessage | StopMessage | BaselineMessage,
    Field(discriminator="type"),
]
_CLIENT_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_CLIENT_TYPES = ("open", "feed", "close", "stop", "baseline")


# -- server -> client -----------------------------------------------------------------------------


class StreamInfo(_Message):
    name: str
    role: Literal["input", "output", "think"]


class ReadyEvent(_Message):
    """The session is open; rows follow.

    Args:
        session: id of the session (every later event of it carries it).
        model: name of the served model.
        streams: the model's streams in column order.
        limits: the server's limits (``max_rows``, ``max_input_chars``, ``max_sessions``).
        row_interval_ms: the pace of rows (0 = as fast as the model goes).
        settings: the effective sampling settings and session options.
    """

    type: Literal["ready"] = "ready"
    version: int = PROTOCOL_VERSION
    session: str
    model: str
    streams: list[StreamInfo]
    limits: dict[str, int]
    row_interval_ms: float
    settings: dict[str, Any]


class RowEvent(_Message):
    """One decoded row.

    Args:
        session: the session id.
        row: index of the row in the session.
        text: cell text per stream, None for silence.
        t_ms: milliseconds since the session opened, when the row was sent.
    """

    type: Literal["row"] = "row"
    session: str
    row: int
    text: dict[str, str | None]
    t_ms: float


class BaselineToken(_Message):
    type: Literal["baseline_token"] = "baseline_token"
    index: int
    text: str
    t_ms: float


class BaselineEnd(_Message):
    type: Literal["baseline_end"] = "baseline_end"
    reason: Literal["eos", "max_tokens", "cancelled", "error"]
    tokens: int
    text: str


class StoppedEvent(_Message):
    """The session ended.

    Args:
        reason: ``max_rows``, ``silence``, ``end_token`` (engine stop rules), ``client`` (stop
            message or disconnect) or ``error``.
        rows: rows produced.
        texts: full text per stream (silence removed).
    """

    type: Literal["stopped"] = "stopped"
    session: str
    reason: str
    rows: int
    texts: dict[str, str]


class ErrorEvent(_Message):
    """A request failed; unless ``fatal``, the connection and its session stay usable.

    Args:
        code: machine-readable kind (:data:`ErrorCode`).
        message: what was expected, what was got and the fix.
        field: the offending field, when one is to blame.
        fatal: the server closes the connection after this event.
        retry_after_s: for a full server, seconds to wait before trying again.
    """

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    field: str | None = None
    fatal: bool = False
    retry_after_s: float | None = None


ServerEvent = ReadyEvent | RowEvent | BaselineToken | BaselineEnd | StoppedEvent | ErrorEvent


class ProtocolError(ValueError):
    """A client message is invalid; :meth:`event` is the error event to send back."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.retry_after_s: float | None = None

    def event(self) -> ErrorEvent:
        return ErrorEvent(
            code=self.code, message=str(self), field=self.field, retry_after_s=self.retry_after_s
        )


def parse_client_message(
    raw: str | bytes,
) -> OpenMessage | FeedMessage | CloseMessage | StopMessage | BaselineMessage:
    """Parse and validate one client frame.

    Args:
        raw: the frame's text.

    Returns:
        The typed message.

    Raises:
        ProtocolError: ``bad_json`` or ``bad_message`` naming the field and the fix.

    Example:
        >>> parse_client_message('{"type": "feed", "stream": "user", "text": "Hi"}').text
        'Hi'
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ProtocolError(
            "bad_json", "a message must be one flat JSON object; this one nests too deep"
        ) from None
    except ValueError as e:
        raise ProtocolError(
            "bad_json", f"a message must be one JSON object; could not parse it ({e})"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", f"a message must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _CLIENT_TYPES:
        raise ProtocolError(
            "bad_message",
            f"unknown message type {kind!r}; expected one of {', '.join(_CLIENT_TYPES)}",
            "type",
        )
    try:
        return _CLIENT_ADAPTER.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        # pydantic puts the union tag first in the location; the field path follows it.
        loc = [str(p) for p in first["loc"] if p != kind]
        field = ".".join(loc) or None
        raise ProtocolError(
            "bad_message",
            f"{kind}: field {field or '(message)'}: {first['msg']} (got {first.get('input')!r})",
            field,
        ) from None


def encode_event(event: ServerEvent) -> str:
    """The JSON text of a server event (compact; ``None`` kept, it means silence)."""
    return event.model_dump_json()
