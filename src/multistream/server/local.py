"""Running the server inside a Python process.

For notebooks, benchmarks, screenshots and tests: :func:`serve_in_thread` runs an app with
uvicorn on a free loopback port in a background thread. (How the tests start a headless browser
is test tooling and lives in ``tests/headless_browser.py``.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(app: Any, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) until the block ends.

    Args:
        app: an ASGI app, e.g. from :func:`multistream.server.serve.build_app`.
        start_timeout_s: how long to wait for the server to listen.

    Returns:
        A context manager yielding the base URL, ``http://127.0.0.1:PORT``.

    Example:
        >>> with serve_in_thread(build_app(model, tok)) as url:   # doctest: +SKIP
        ...     print(url)
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="multistream-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start within {start_timeout_s} s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
