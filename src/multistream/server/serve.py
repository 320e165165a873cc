"""The ``multistream serve`` app: live sessions, the web page and the OpenAI route on one model.

It extends :func:`multistream.server.app.create_app` (the OpenAI-compatible router and
``/health``) with the multi-stream model as the chat backend, the live routes of
:mod:`.live_routes` and the optional bearer token. One :class:`~.live.LiveService` (one decode
worker) serves all of them, so WebSocket sessions and chat requests are batched together.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .app import create_app
from .auth import TokenCheck
from .chat_backend import MultiStreamChatBackend
from .live import LiveConfig, LiveService
from .live_routes import live_router, mount_static
from .security import SecurityConfig, secure

__all__ = ["build_app"]


def build_app(
    model: Any,
    tokenizer: Any,
    config: LiveConfig | None = None,
    token: str | None = None,
    security: SecurityConfig | None = None,
) -> FastAPI:
    """The whole server for a loaded multi-stream model.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` in eval mode.
        tokenizer: its tokenizer.
        config: limits, defaults and pacing (:class:`~.live.LiveConfig`).
        token: a bearer token every API call must carry; None = open (loopback use).
        security: the bound host and the extra allowed web origins (default: loopback, none);
            see :mod:`.security`.

    Returns:
        The FastAPI app; its decode worker starts with the app and stops with it.

    Example:
        >>> import uvicorn; uvicorn.run(build_app(model, tok), host="127.0.0.1")   # doctest: +SKIP
    """
    service = LiveService(model, tokenizer, config)
    app = create_app(MultiStreamChatBackend(service))
    auth = TokenCheck(token)
    app.include_router(live_router(service, auth))
    mount_static(app)
    auth.guard_http(app)
    app.router.on_startup.append(service.start)
    app.router.on_shutdown.append(service.shutdown)
    app.state.live = service
    return secure(app, security or SecurityConfig())
