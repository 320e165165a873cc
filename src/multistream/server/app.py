"""A FastAPI app serving a base model over the OpenAI chat API (``multistream serve-openai``).

Run it with ``python -m multistream.server.app --model smollm2-135m --port 8000`` or
``multistream serve-openai``; then any OpenAI client works with ``base_url=http://HOST:PORT/v1``.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI

from .openai_routes import ChatBackend, HFChatBackend, openai_router
from .security import SecurityConfig, secure, uvicorn_config

__all__ = ["create_app", "main"]


def create_app(
    backend: ChatBackend | None = None,
    *,
    model: str = "smollm2-135m",
    max_tokens: int = 256,
    security: SecurityConfig | None = None,
) -> FastAPI:
    """The app: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models`` and ``/health``.

    Args:
        backend: the model to serve; default: :class:`HFChatBackend` over ``model``.
        model: an embedded model name or local HF directory (used when ``backend`` is None).
        max_tokens: default completion limit per request.
        security: when given, the Host/Origin/content-type guard goes in front (a caller that
            adds routes applies :func:`~.security.secure` itself, last).

    Returns:
        the FastAPI app (serve it with uvicorn).
    """
    if backend is None:
        from ..loading import load_base

        base, tokenizer = load_base(model)
        backend = HFChatBackend(base, tokenizer, name=model, max_tokens_default=max_tokens)
    app = FastAPI(title="multistream OpenAI-compatible server")
    app.include_router(openai_router(backend))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.name}

    return app if security is None else secure(app, security)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--model``, ``--host`` (default loopback), ``--port``, ``--max-tokens``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m multistream.server.app", description=__doc__)
    parser.add_argument("--model", default="smollm2-135m", help="embedded model name or local HF directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=256, help="default completion limit")
    parser.add_argument(
        "--allow-origin", action="append", default=[], help="web origin allowed to use the API (repeatable)"
    )
    args = parser.parse_args(argv)
    security = SecurityConfig(host=args.host, allow_origins=tuple(args.allow_origin))
    app = create_app(model=args.model, max_tokens=args.max_tokens, security=security)
    print(
        f"multistream serve-openai: model {args.model} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)",
        flush=True,
    )
    uvicorn.Server(uvicorn_config(app, args.host, args.port)).run()


if __name__ == "__main__":
    main()
