"""What keeps a local server from being driven by other web pages and slow or greedy clients.

A server bound to loopback is still reachable from every web page the user opens: a page may
open a WebSocket to ``ws://localhost:8000``, post a "simple" cross-origin request, or rebind its
own DNS name to 127.0.0.1. :class:`RequestGuard` (an ASGI middleware, outermost) refuses:

* a ``Host`` header that names neither the bound host nor a loopback name (DNS rebinding): 400;
* an ``Origin`` header that is neither the server's own origin nor one given with
  ``--allow-origin``: 403 (a WebSocket upgrade is refused before it is accepted, so no session
  starts);
* a request body on a JSON route that is not ``application/json``: 415 (browsers send
  ``text/plain`` cross-origin posts without a preflight).

:class:`HeaderTimeoutH11Protocol` closes connections that do not finish their request headers
in time (uvicorn arms its timer only after a first response), and :func:`uvicorn_config` is
the one place the servers get their uvicorn settings. docs/frontends.md describes the model.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "LOOPBACK_NAMES",
    "HeaderTimeoutH11Protocol",
    "RequestGuard",
    "SecurityConfig",
    "normalise_origin",
    "secure",
    "uvicorn_config",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Seconds a client has to send its request headers, and to start its next keep-alive request.
HEADER_TIMEOUT_S = 5
# Connections and running requests at once; beyond it uvicorn answers 503.
LIMIT_CONCURRENCY = 256
# Largest WebSocket frame uvicorn accepts (the protocol's own limit, max_message_chars, is lower).
WS_MAX_SIZE = 1 << 20


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a trailing slash or a default port.

    Raises:
        ValueError: ``origin`` is not an http(s) origin.

    Example:
        >>> normalise_origin("HTTP://Example.com:80/")
        'http://example.com'
    """
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{origin!r} is not an origin; write it as scheme://host[:port], e.g. http://localhost:3000"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{origin!r} is not an origin: leave out the path, e.g. {parts.scheme}://{parts.netloc}"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    port = parts.port
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


@dataclass
class SecurityConfig:
    """Who may talk to the server.

    Args:
        host: the interface the server binds; a Host header must name it or a loopback name.
            When bound to every interface (``0.0.0.0``), IP literals are accepted too (DNS
            rebinding needs a name).
        allow_origins: extra web origins (``scheme://host[:port]``) whose pages may use the API;
            CORS is answered for them only. The server's own origin is always allowed.
    """

    host: str = "127.0.0.1"
    allow_origins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.allow_origins = tuple(normalise_origin(o) for o in self.allow_origins)

    @property
    def allowed_hostnames(self) -> frozenset[str]:
        names = set(LOOPBACK_NAMES)
        if self.host not in _WILDCARD_HOSTS:
            names.add(self.host.strip("[]").lower())
        names.update((urlsplit(o).hostname or "").lower() for o in self.allow_origins)
        return frozenset(names)

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a Host header (``name[:port]``) names this server."""
        if not host_header:
            return False
        name = urlsplit(f"//{host_header.strip()}").hostname
        if name is None:
            return False
        name = name.lower()
        if name in self.allowed_hostnames:
            return True
        if self.host in _WILDCARD_HOSTS:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False

    def origin_allowed(self, origin: str, host_header: str | None, scheme: str) -> bool:
        """Whether a page from ``origin`` may use the server reached as ``host_header``."""
        try:
            given = normalise_origin(origin)
        except ValueError:
            return False  # "null" (sandboxed frames, file://) and anything unparsable
        if given in self.allow_origins:
            return True
        if not host_header:
            return False
        own_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        try:
            return given == normalise_origin(f"{own_scheme}://{host_header.strip()}")
        except ValueError:
            return False


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    """ASGI middleware applying :class:`SecurityConfig` before anything else sees a request.

    Args:
        app: the wrapped ASGI app.
        config: the allowed host and origins.
        json_paths: path prefixes whose POST bodies must be JSON.
    """

    def __init__(
        self, app: Any, config: SecurityConfig, json_paths: Iterable[str] = ("/v1/", "/api/")
    ) -> None:
        self.app = app
        self.config = config
        self.json_paths = tuple(json_paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        problem: tuple[int, str] | None = None
        if not self.config.host_allowed(host):
            problem = (
                400,
                f"Host header {host!r} does not name this server; use http://127.0.0.1 or "
                "http://localhost (or the address it was started with --host)",
            )
        else:
            origin = _header(scope, b"origin")
            if origin is not None and not self.config.origin_allowed(
                origin, host, scope.get("scheme", "http")
            ):
                problem = (
                    403,
                    f"requests from the web origin {origin!r} are refused; start the server with "
                    f"--allow-origin {origin} to allow that page",
                )
            elif kind == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
                ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
                if scope["path"].startswith(self.json_paths) and ctype != "application/json":
                    problem = (
                        415,
                        f"the request body must be JSON: send 'Content-Type: application/json' "
                        f"(got {ctype or 'none'!r})",
                    )
        if problem is None:
            await self.app(scope, receive, send)
        elif kind == "websocket":
            # Closing before accepting makes uvicorn answer the upgrade with 403: no session.
            await send({"type": "websocket.close", "code": 1008, "reason": problem[1][:120]})
        else:
            await _send_error(send, *problem)


async def _send_error(send: Any, status: int, message: str) -> None:
    kind = {400: "invalid_request_error", 403: "permission_error", 415: "invalid_request_error"}[status]
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout: a client that opens a connection (or keeps
    one alive) and does not complete its request headers within ``timeout_keep_alive`` seconds
    is disconnected. uvicorn cancels its own timer on any byte received, so a client sending
    one header line at a time kept a connection, and a worker slot, forever."""

    _header_timer: Any = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.timeout_keep_alive, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> Any:
    """The uvicorn settings of every multistream server: header and keep-alive timeouts,
    a connection limit, a frame size limit and WebSocket pings (dead peers are dropped)."""
    import uvicorn

    settings: dict[str, Any] = {
        "http": HeaderTimeoutH11Protocol,
        "timeout_keep_alive": HEADER_TIMEOUT_S,
        "limit_concurrency": LIMIT_CONCURRENCY,
        "ws_max_size": WS_MAX_SIZE,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "log_level": "warning",
        **options,
    }
    return uvicorn.Config(app, host=host, port=port, **settings)


def secure(app: Any, config: SecurityConfig) -> Any:
    """Put the guard in front of ``app`` (call it last, so it runs first), with CORS answered
    for ``config.allow_origins`` only; returns ``app``."""
    if config.allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestGuard, config=config)
    return app
