"""One WebSocket connection: client messages in, session events out (glue only).

A connection runs at most one live session at a time (after ``stopped`` it may ``open``
another) plus at most one sequential baseline. Rows are produced on the decode worker thread
and handed to this connection's event loop through a queue; a single sender task writes them,
so events of a session leave in order and never reach another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from ..engine import Row, SessionStopped
from .live import RETRY_AFTER_S, LiveService, visible_text
from .protocol import (
    PROTOCOL_VERSION,
    BaselineEnd,
    BaselineMessage,
    BaselineToken,
    CloseMessage,
    ErrorEvent,
    FeedMessage,
    OpenMessage,
    ProtocolError,
    RowEvent,
    ServerEvent,
    StopMessage,
    StoppedEvent,
    encode_event,
    parse_client_message,
)
from .scheduler import LiveSession, SessionLimitError

__all__ = ["STOP_IDLE", "SessionConnection", "serve_connection"]

_CLOSED = object()  # sentinel that ends the sender task
# Stop reason of a session ended for idling (no input and no row for ``idle_timeout_s``).
STOP_IDLE = "idle"


class SessionConnection:
    """Serves the session protocol on one accepted WebSocket.

    Args:
        websocket: an accepted FastAPI/Starlette WebSocket.
        service: the :class:`~multistream.server.live.LiveService` that decodes.
    """

    def __init__(self, websocket: WebSocket, service: LiveService) -> None:
        self.websocket = websocket
        self.service = service
        # The per-client cap counts by address: one page or script cannot take every slot.
        self.client = websocket.client.host if websocket.client else "unknown"
        self.last_activity = time.monotonic()  # last input, open or row (idle timeout)
        self.idle_stopped: LiveSession | None = None
        self.slots = 0  # per-client slots this connection holds
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.live: LiveSession | None = None
        self.config = service.session_config_defaults()
        self.opened_at = time.monotonic()
        self.fed_chars = 0
        self.baseline: Any = None
        self.texts: dict[str, str] = {}  # visible text per stream of the current session

    # -- thread-safe event hand-off ---------------------------------------------------------

    def _emit(self, event: ServerEvent | object) -> None:
        self._emit_call(self.events.put_nowait, event)

    def _emit_call(self, function: Any, *args: Any) -> None:
        # Called from the worker thread; once the connection's loop is closed nobody is left
        # to tell, so the call is dropped.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(function, *args)

    def _t_ms(self, since: float) -> float:
        return round((time.monotonic() - since) * 1000, 1)

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read messages until the client disconnects; then end what it left running."""
        sender = asyncio.create_task(self._send_events())
        watchdog = asyncio.create_task(self._watch_idle())
        try:
            while True:
                frame = await self.websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                try:
                    if frame.get("text") is None:
                        raise ProtocolError("bad_json", "send messages as text frames of JSON, not binary")
                    await self._handle(frame["text"])
                except ProtocolError as e:
                    await self.events.put(e.event())
                except Exception as e:  # a bug must cost this message, never the connection
                    message = f"the server could not handle this message ({type(e).__name__}: {e})"
                    await self.events.put(ErrorEvent(code="engine", message=message))
        except WebSocketDisconnect:
            pass
        finally:
            watchdog.cancel()
            if self.live is not None:
                self.live.cancel()
            if self.baseline is not None:
                self.baseline.cancel()
            await self.events.put(_CLOSED)
            await sender

    async def _watch_idle(self) -> None:
        """End the session once it had no input and no row for ``idle_timeout_s``."""
        timeout = self.service.config.idle_timeout_s
        if timeout <= 0:
            return
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            live = self.live
            idle = time.monotonic() - self.last_activity >= timeout
            if live is not None and self.idle_stopped is not live and idle:
                self.idle_stopped = live
                live.cancel()

    async def _send_events(self) -> None:
        while (event := await self.events.get()) is not _CLOSED:
            try:
                await self.websocket.send_text(encode_event(event))
            except (WebSocketDisconnect, RuntimeError):
                return  # the client left; run() ends the session

    async def _handle(self, raw: str) -> None:
        if len(raw) > self.service.config.max_message_chars:
            raise ProtocolError(
                "limit",
                f"message of {len(raw)} characters exceeds max_message_chars = "
                f"{self.service.config.max_message_chars}; send text in smaller pieces",
            )
        message = parse_client_message(raw)
        if isinstance(message, OpenMessage):
            await self._open(message)
        elif isinstance(message, BaselineMessage):
            self._start_baseline(message)
        elif self.live is None:
            raise ProtocolError("not_open", f"{message.type}: no session is open; send an open message first")
        elif isinstance(message, (FeedMessage, CloseMessage)) and self.live.engine_session.stop is not None:
            # It stopped; its "stopped" event is on the way (or was just sent).
            raise ProtocolError(
                "not_open",
                f"{message.type}: the session has stopped; send an open message to start a new one",
            )
        elif isinstance(message, FeedMessage):
            self.last_activity = time.monotonic()
            self.service.check_input(message.stream, message.text, self.fed_chars)
            self.fed_chars += len(message.text)
            if message.reopen:
                # A follow-up: reopen waits for a row in progress, so off the event loop.
                await asyncio.to_thread(self._engine_call, self.live.reopen, message.stream)
            self._engine_call(self.live.feed, message.stream, message.text)
        elif isinstance(message, CloseMessage):
            self.last_activity = time.monotonic()
            if message.stream is not None:
                self.service.check_input(message.stream, "", 0)
            self._engine_call(self.live.close, message.stream)
        elif isinstance(message, StopMessage):
            self.live.cancel()

    def _engine_call(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except (ValueError, SessionStopped) as e:  # e.g. feeding a closed stream; it says why
            raise ProtocolError("engine", str(e)) from None

    # -- session -----------------------------------------------------------------------------

    async def _open(self, message: OpenMessage) -> None:
        if message.version != PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported_version",
                f"open.version = {message.version}, but this server speaks protocol version {PROTOCOL_VERSION}",
                "version",
            )
        config = self.service.session_config(message)
        if self.live is not None:
            raise ProtocolError(
                "already_open", "a session is already open; send stop and wait for stopped first"
            )
        self._claim_slot()
        try:
            future = self.service.scheduler.open(config, self, wait_for_input=message.wait_for_input)
        except SessionLimitError as e:
            self._release_slot()
            raise _capacity_error(e) from None
        self.config = config
        self.opened_at = self.last_activity = time.monotonic()
        self.fed_chars = 0
        # on_start (worker thread) sets self.live before any row; waiting here keeps the next
        # message from racing the opening.
        try:
            await asyncio.wrap_future(future)
        except Exception as e:  # the engine refused the settings: the connection stays usable
            self._release_slot()
            raise ProtocolError("engine", f"the session could not start: {type(e).__name__}: {e}") from None

    def _claim_slot(self) -> None:
        self.service.claim_client_slot(self.client)
        self.slots += 1

    def _release_slot(self) -> None:
        # Runs on the event loop only (worker callbacks hop here), so the count needs no lock.
        if self.slots > 0:
            self.slots -= 1
            self.service.release_client_slot(self.client)

    # SessionListener: called on the decode worker thread.

    def on_start(self, live: LiveSession) -> None:
        self.last_activity = time.monotonic()  # the idle clock starts when the session does
        self.live = live
        self.texts = {stream.name: "" for stream in self.service.streams}
        self._emit(self.service.ready_event(live.id, self.config, live.wait_for_input))

    def on_row(self, live: LiveSession, row: Row) -> None:
        text = visible_text(row, self.service.end_tokens)
        for name, piece in text.items():
            self.texts[name] += piece or ""
        self.last_activity = time.monotonic()
        self._emit(RowEvent(session=live.id, row=row.index, text=text, t_ms=self._t_ms(self.opened_at)))

    def on_stop(self, live: LiveSession, reason: str, error: str | None) -> None:
        if self.idle_stopped is live:
            reason = STOP_IDLE
        if error is not None:
            self._emit(ErrorEvent(code="engine", message=error))
        # The texts are what the rows showed (silence and end tokens left out).
        stopped = StoppedEvent(session=live.id, reason=reason, rows=live.rows, texts=dict(self.texts))
        # One loop callback clears the session and then queues "stopped": a client that reads
        # "stopped" and at once sends open (or feed) finds the session gone, never half gone.
        self._emit_call(self._stopped, live, stopped)

    def _stopped(self, live: LiveSession, event: StoppedEvent) -> None:
        self._clear_live(live)
        self.events.put_nowait(event)

    def _clear_live(self, live: LiveSession) -> None:
        self._release_slot()
        if self.live is live:
            self.live = None

    # -- baseline ----------------------------------------------------------------------------

    def _start_baseline(self, message: BaselineMessage) -> None:
        if self.baseline is not None and self.baseline.decoder.reason is None:
            self.baseline.cancel()
        decoder = self.service.baseline_decoder(message.text, message.max_tokens, self.config)
        started = time.monotonic()

        def on_token(index: int, text: str) -> None:
            self._emit(BaselineToken(index=index, text=text, t_ms=self._t_ms(started)))

        def on_end(reason: str, tokens: int, text: str) -> None:
            self._emit(BaselineEnd(reason=reason, tokens=tokens, text=text))
            self._emit_call(self._release_slot)

        self._claim_slot()
        try:
            self.baseline = self.service.scheduler.run_baseline(decoder, on_token, on_end)
        except SessionLimitError as e:
            self._release_slot()
            raise _capacity_error(e) from None


def _capacity_error(error: SessionLimitError) -> ProtocolError:
    """The server is full: a ``limit`` error that says when to try again."""
    problem = ProtocolError("limit", f"{error} (retry after {RETRY_AFTER_S} s)")
    problem.retry_after_s = RETRY_AFTER_S
    return problem


async def serve_connection(websocket: WebSocket, service: LiveService, reject: str | None = None) -> None:
    """Accept ``websocket`` and serve it; with ``reject`` set, send that fatal error and close.

    Args:
        websocket: the incoming WebSocket.
        service: the live service.
        reject: an authorisation failure message, or None.
    """
    # Origin and Host were checked before the upgrade (security.RequestGuard).
    await websocket.accept()
    if reject is not None:
        await websocket.send_text(encode_event(ErrorEvent(code="unauthorized", message=reject, fatal=True)))
        await websocket.close(code=1008)
        return
    await SessionConnection(websocket, service).run()
