"""What a server offers live: the model, its decode scheduler, default settings and limits.

:class:`LiveService` turns validated protocol requests into engine objects (a
:class:`~multistream.engine.SessionConfig`, a sequential baseline) and enforces the limits with
errors that name the limit and how to raise it. The WebSocket glue (:mod:`.session`) and the
OpenAI-compatible route both go through it, so both share one scheduler and one batch queue.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine import SessionConfig
from ..sampling import SamplingConfig
from ..text import answer_end_tokens, visible_text
from .baseline import SequentialDecoder, format_prompt
from .protocol import OpenMessage, ProtocolError, ReadyEvent, SamplingSettings, StreamInfo
from .scheduler import DecodeScheduler, SchedulerConfig

__all__ = ["RETRY_AFTER_S", "LiveConfig", "LiveService", "answer_end_tokens", "visible_text"]

# What a client refused for capacity is told to wait (``Retry-After``): about one short answer.
RETRY_AFTER_S = 5


@dataclass
class LiveConfig:
    """Limits and defaults of live sessions.

    Args:
        model_name: the name clients see (and may ask for in ``open.model``).
        max_rows: most rows one session may produce (``open.max_rows`` above it is an error).
        max_input_chars: most characters of text one session may feed, over all its messages.
        max_message_chars: largest single client frame.
        sampling: default sampling settings (a client overrides them field by field).
        stop_silent_rows: engine stop rule: end once every generated stream was silent this
            many rows after the inputs closed.
        scheduler: batching, pacing and ``max_sessions``.
        idle_timeout_s: a live session that got no input and produced no row for this long
            ends with reason ``idle`` and frees its slot (0 = never).
        max_sessions_per_client: live sessions and baselines one client address may hold at
            once, so one page or script cannot take every slot.
        start_rows: token ids ``[rows][C]`` every session starts from (the warm start of the
            model's decoding presets, ``DecodingPresets.start_rows``); None = one silent row.
        skip_silence: hide silence keys from attention (the presets' ``skip_silence``).
    """

    model_name: str = "multistream"
    max_rows: int = 512
    max_input_chars: int = 4000
    max_message_chars: int = 16_000
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_silent_rows: int = 4
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    idle_timeout_s: float = 60.0
    max_sessions_per_client: int = 4
    start_rows: list[list[int]] | None = None
    skip_silence: bool = False

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_input_chars", "max_message_chars", "max_sessions_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"LiveConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.idle_timeout_s >= 0:
            raise ValueError(f"LiveConfig.idle_timeout_s must be >= 0 (0 = off), got {self.idle_timeout_s}")


def _protocol_sampling(sampling: SamplingConfig) -> dict[str, Any]:
    """The fields of :class:`~.protocol.SamplingSettings`, read from an engine config."""
    return {name: getattr(sampling, name) for name in SamplingSettings.model_fields}


class LiveService:
    """The model served live.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer.
        config: limits and defaults.

    Example:
        >>> service = LiveService(model, tok, LiveConfig(model_name="demo")).start()  # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any, config: LiveConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or LiveConfig()
        self.schema = model.schema
        self.end_tokens = answer_end_tokens(self.schema, tokenizer)
        self.scheduler = DecodeScheduler(model, tokenizer, self.config.scheduler, self.config.start_rows)
        self._clients: Counter[str] = Counter()
        self._clients_lock = threading.Lock()

    def start(self) -> LiveService:
        self.scheduler.start()
        return self

    def shutdown(self) -> None:
        self.scheduler.shutdown()

    # -- descriptions ------------------------------------------------------------------------

    @property
    def streams(self) -> list[StreamInfo]:
        return [StreamInfo(name=s.name, role=s.role.value) for s in self.schema.streams]

    @property
    def limits(self) -> dict[str, int]:
        c = self.config
        return {
            "max_rows": c.max_rows,
            "max_input_chars": c.max_input_chars,
            "max_message_chars": c.max_message_chars,
            "max_sessions": c.scheduler.max_sessions,
            "max_sessions_per_client": c.max_sessions_per_client,
            "idle_timeout_s": int(c.idle_timeout_s),
        }

    def defaults(self) -> dict[str, Any]:
        """Default sampling settings as the protocol names them."""
        return _protocol_sampling(self.config.sampling)

    def info(self) -> dict[str, Any]:
        """What ``GET /api/info`` returns: model, streams, defaults, limits, pace, load."""
        return {
            "model": self.config.model_name,
            "streams": [s.model_dump() for s in self.streams],
            "sampling": self.defaults(),
            "limits": self.limits,
            "row_interval_ms": self.config.scheduler.row_interval_s * 1000,
            "live_sessions": self.scheduler.live_sessions,
        }

    # -- per-client slots ---------------------------------------------------------------------

    def claim_client_slot(self, client: str) -> None:
        """Count one more live session or baseline of ``client`` (its address).

        Raises:
            ProtocolError: ``limit``, when the client holds ``max_sessions_per_client`` already.
        """
        with self._clients_lock:
            if self._clients[client] >= self.config.max_sessions_per_client:
                raise ProtocolError(
                    "limit",
                    f"this client already runs {self._clients[client]} live sessions and baselines "
                    f"(max_sessions_per_client = {self.config.max_sessions_per_client}); stop one first, "
                    "or start the server with a larger --max-sessions-per-client",
                )
            self._clients[client] += 1

    def client_slots(self, client: str) -> int:
        """Live sessions and baselines ``client`` holds now."""
        with self._clients_lock:
            return self._clients[client]

    def release_client_slot(self, client: str) -> None:
        """Undo one :meth:`claim_client_slot`."""
        with self._clients_lock:
            self._clients[client] -= 1
            if self._clients[client] <= 0:
                del self._clients[client]

    # -- requests ----------------------------------------------------------------------------

    def session_config(self, message: OpenMessage) -> SessionConfig:
        """The engine settings of an ``open`` message, checked against the limits.

        Raises:
            ProtocolError: a wrong model name, version or a limit exceeded.
        """
        if message.model is not None and message.model != self.config.model_name:
            raise ProtocolError(
                "bad_message",
                f"this server serves model {self.config.model_name!r}, not {message.model!r}; "
                "leave open.model out or ask for the served name",
                "model",
            )
        max_rows = message.max_rows or self.config.max_rows
        if max_rows > self.config.max_rows:
            raise ProtocolError(
                "limit",
                f"open.max_rows = {max_rows} exceeds the server's limit of {self.config.max_rows} rows; "
                "ask for fewer or start the server with a larger --max-rows",
                "max_rows",
            )
        overrides = message.sampling.model_dump(exclude_none=True)
        try:
            sampling = replace(self.config.sampling, **overrides)
        except ValueError as e:
            raise ProtocolError("bad_message", f"sampling: {e}", "sampling") from None
        return SessionConfig(
            sampling=sampling,
            clock=message.clock,
            max_rows=max_rows,
            stop_silent_rows=self.config.stop_silent_rows,
            end_tokens=dict(self.end_tokens),
            skip_silence=self.config.skip_silence,
        )

    def session_config_defaults(self) -> SessionConfig:
        """The engine settings of a session opened with no options."""
        return self.session_config(OpenMessage())

    def ready_event(self, session_id: str, config: SessionConfig, wait_for_input: bool) -> ReadyEvent:
        settings = {
            **_protocol_sampling(config.sampling),
            "clock": config.clock,
            "max_rows": config.max_rows,
            "wait_for_input": wait_for_input,
            # Rows prefilled before the first input (a warm start): row events count on from here.
            "start_rows": len(self.config.start_rows or ()),
        }
        return ReadyEvent(
            session=session_id,
            model=self.config.model_name,
            streams=self.streams,
            limits=self.limits,
            row_interval_ms=self.config.scheduler.row_interval_s * 1000,
            settings=settings,
        )

    def check_input(self, stream: str, text: str, used_chars: int) -> None:
        """Raise a ``ProtocolError`` unless ``stream`` is an input stream and ``text`` fits the
        per-session input budget (``used_chars`` already fed)."""
        names = [s.name for s in self.schema.streams if not s.generated]
        if stream not in names:
            raise ProtocolError(
                "bad_message",
                f"feed.stream {stream!r} is not an input stream; input streams: {names}",
                "stream",
            )
        if used_chars + len(text) > self.config.max_input_chars:
            raise ProtocolError(
                "limit",
                f"this session would feed {used_chars + len(text)} characters, over the limit of "
                f"{self.config.max_input_chars} (max_input_chars); open a new session or start the "
                "server with a larger --max-input-chars",
                "text",
            )

    def baseline_decoder(self, text: str, max_tokens: int | None, config: SessionConfig) -> SequentialDecoder:
        """A sequential decoder answering ``text`` with the base model (same sampling)."""
        limit = max_tokens or config.max_rows
        if limit > self.config.max_rows:
            raise ProtocolError(
                "limit",
                f"baseline.max_tokens = {limit} exceeds the server's limit of {self.config.max_rows}",
                "max_tokens",
            )
        if not text.strip():
            raise ProtocolError("bad_message", "baseline.text is empty; send the whole question", "text")
        prompt = format_prompt(self.tokenizer, [{"role": "user", "content": text}])
        s = config.sampling
        return SequentialDecoder(
            self.model, self.tokenizer, prompt, limit, temperature=s.temperature, seed=s.seed
        )
