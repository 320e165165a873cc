"""The web page in a real browser: typing streams in, and the answer starts before typing ends.

Playwright (Python package) drives Debian's ``chromium`` (never a downloaded browser). When
Chromium is missing the test tries ``apt-get install chromium`` once; it skips only if that
fails, and then says so loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest

from frontend_helpers import WordTokenizer, one_torch_thread, serve_in_thread, tiny_multistream
from headless_browser import HEADLESS_CHROMIUM_FLAGS
from multistream.server.live import LiveConfig
from multistream.server.scheduler import SchedulerConfig
from multistream.server.serve import build_app

QUESTION = "what is the capital of france and why is it there"
INSTALL_TIMEOUT_S = 900


def _skip_loudly(reason: str) -> None:
    banner = f"\n{'!' * 78}\nBROWSER TEST SKIPPED: {reason}\n{'!' * 78}\n"
    sys.stderr.write(banner)
    warnings.warn(f"browser test skipped: {reason}", stacklevel=2)
    pytest.skip(f"BROWSER TEST SKIPPED: {reason}")


def _find_chromium() -> str | None:
    explicit = os.environ.get("MULTISTREAM_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_chromium() -> str | None:
    """Try Debian's package once (root and apt-get only); returns the binary or None."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=INSTALL_TIMEOUT_S, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], check=True, timeout=INSTALL_TIMEOUT_S, env=env
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return _find_chromium()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium() or _install_chromium()
    if path is None:
        _skip_loudly("Chromium is not installed and `apt-get install chromium` failed; CI must install it")
    return path


@pytest.fixture(scope="module")
def server_url():
    # Rows every 60 ms and a typist at ~8 characters/s: the answer has time to start mid-question.
    config = LiveConfig(model_name="tiny", max_rows=400, scheduler=SchedulerConfig(row_interval_s=0.06))
    with one_torch_thread(), serve_in_thread(build_app(tiny_multistream(), WordTokenizer(), config)) as url:
        yield url


def test_answer_appears_in_the_output_lane_while_typing(chromium, server_url, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=chromium,
            args=list(HEADLESS_CHROMIUM_FLAGS),
            headless=True,
            viewport={"width": 1200, "height": 760},
        )
        try:
            page = context.new_page()
            failed: list[str] = []  # every request of the page must succeed (no 404 on first load)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server_url + "/")
            page.wait_for_selector("#status.live", timeout=30_000)
            lanes = page.locator(".lane").evaluate_all("els => els.map(e => e.dataset.stream)")
            assert lanes == ["user", "think", "assistant", "baseline"]
            output = page.locator('.lane[data-stream="assistant"] .text')
            page.click("#input")
            words = QUESTION.split()
            first_output_word = None
            for i, word in enumerate(words):
                page.keyboard.type(word + " ", delay=120)
                if first_output_word is None and output.inner_text().strip():
                    first_output_word = i
            assert first_output_word is not None and first_output_word < len(words) - 1, (
                f"no output before the last word was typed (first output after word {first_output_word})"
            )
            # What was typed reached the input stream, word by word, in order.
            page.wait_for_function(
                f"document.querySelector('.lane[data-stream=\"user\"] .text').textContent.split(' w').length >= {len(words)}",
                timeout=20_000,
            )
            user_text = page.locator('.lane[data-stream="user"] .text').inner_text()
            assert user_text == user_text.lstrip()  # no stray leading space
            page.keyboard.press("Enter")
            page.wait_for_selector('.lane[data-stream="baseline"] .text span', timeout=20_000)
            assert page.locator("#timeline .tcol").count() > len(words)
            # Readable timeline: a legend, stream labels, a row axis, the input-closed marker.
            assert page.locator("#legend .swatch").count() >= 5
            labels = page.locator("#timeline-labels div").all_inner_texts()
            assert labels == ["user", "think", "assistant", "baseline", "row"]
            assert page.locator("#timeline .axis", has_text="10").count() == 1
            page.wait_for_selector("#timeline .tcol.marker", timeout=20_000)
            # Stop the session: the baseline goes on, and its timeline track keeps up with it.
            page.keyboard.press("Escape")
            page.wait_for_selector("#status:has-text('stopped')", timeout=20_000)
            page.wait_for_timeout(1500)
            lane, track = page.evaluate(
                """() => [document.querySelector('.lane[data-stream="baseline"] .text').textContent,
                          [...document.querySelectorAll('#timeline .cell.baseline')].map(c => c.title).join('')]"""
            )
            assert lane.strip() == track.strip() and lane.strip()
            # A second question keeps the first turn in the lanes, below a rule.
            page.keyboard.type("and another one ", delay=60)
            page.wait_for_function(
                "document.querySelectorAll('.lane[data-stream=\"user\"] .turn-rule').length === 1",
                timeout=20_000,
            )
            assert (
                page.locator('.lane[data-stream="user"] .text')
                .inner_text()
                .startswith(user_text.strip()[:20])
            )
            assert failed == [], failed
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 0
            print(f"screenshot: {screenshot}")
        finally:
            context.close()


def test_typing_during_the_answer_is_a_follow_up_in_the_same_session(chromium, server_url, tmp_path):
    """Issue 14 item 4 in the page: words typed while the answer streams are fed into the running
    session (``feed`` with ``reopen``), no new session opens, and the lanes keep both turns."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("the playwright Python package is not installed (pip install playwright)")
    import json

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, args=list(HEADLESS_CHROMIUM_FLAGS),
            headless=True, viewport={"width": 1200, "height": 760},
        )  # fmt: skip
        try:
            page = context.new_page()
            sent: list[dict] = []
            received: list[dict] = []

            def watch(ws) -> None:
                ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
                ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

            page.on("websocket", watch)
            page.goto(server_url + "/")
            page.wait_for_selector("#status.live", timeout=30_000)
            page.click("#input")
            page.keyboard.type("what is the capital ", delay=40)
            page.keyboard.press("Enter")
            page.wait_for_selector("#status:has-text('answering')", timeout=20_000)
            page.wait_for_timeout(400)  # the answer streams
            page.keyboard.type("and of spain ", delay=40)
            page.wait_for_selector("#status:has-text('follow-up')", timeout=20_000)
            user_lane = page.locator('.lane[data-stream="user"] .text')
            page.wait_for_function(
                # WordTokenizer cells read " w<id>": both turns' 7 words reach the user lane.
                "(document.querySelector('.lane[data-stream=\"user\"] .text').textContent.match(/w\\d+/g) || []).length >= 7",
                timeout=20_000,
            )
            # The first word of the follow-up reopens the input; the next ones are plain feeds.
            feeds = [m for m in sent if m.get("type") == "feed"]
            reopened = [i for i, m in enumerate(feeds) if m.get("reopen")]
            assert len(reopened) == 1
            assert "".join(m["text"] for m in feeds[reopened[0] :]).split() == ["and", "of", "spain"]
            assert [m["type"] for m in sent].count("open") == 1  # the same session
            assert not [e for e in received if e["type"] in ("error", "stopped")], received[-3:]
            assert page.locator('.lane[data-stream="user"] .turn-rule').count() == 1  # two turns
            assert user_lane.inner_text().strip()
        finally:
            context.close()
