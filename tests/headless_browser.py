"""How the browser tests (and ``scripts/frontend_screenshots.py``) start Debian's Chromium.

Test tooling, not library code: no network beyond loopback, no sandbox for containers, nothing
written outside the profile directory.
"""

from __future__ import annotations

__all__ = ["HEADLESS_CHROMIUM_FLAGS"]

HEADLESS_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
