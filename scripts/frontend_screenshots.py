"""Make the screenshots of docs/frontends.md: the web page and the terminal chat, live.

Usage::

    python scripts/frontend_screenshots.py                      # the demo model
    python scripts/frontend_screenshots.py --model smollm2-135m --schema user,assistant

It serves the model on a free loopback port, drives Debian's Chromium with Playwright (types a
question at a person's pace), and renders the terminal chat after the same keys through rich's
SVG export, which Chromium turns into a PNG. Needs ``chromium`` and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path


def page_screenshot(model, tokenizer, name: str, question: str, out: Path, browser) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from multistream.sampling import SamplingConfig
    from multistream.server.live import LiveConfig
    from multistream.server.local import serve_in_thread
    from multistream.server.scheduler import SchedulerConfig
    from multistream.server.serve import build_app

    config = LiveConfig(
        model_name=name,
        max_rows=120,
        sampling=SamplingConfig(silence_penalty=2.0),  # as multistream serve
        scheduler=SchedulerConfig(row_interval_s=0.1),
    )
    with serve_in_thread(build_app(model, tokenizer, config)) as base_url:
        page = browser.new_page()
        page.set_viewport_size({"width": 1200, "height": 640})
        page.goto(base_url + "/")
        page.wait_for_selector("#status.live")
        page.click("#input")
        page.keyboard.type(question, delay=110)
        page.keyboard.press("Enter")
        # Until the answer ends (silence or max_rows), or 60 s at most.
        done = "document.querySelector('#status').textContent.startsWith('stopped')"
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(done, timeout=60_000)
        time.sleep(2)
        page.screenshot(path=str(out))
        page.close()


def chat_screenshot(model, tokenizer, name: str, question: str, out: Path, browser) -> None:
    from rich.console import Console

    from multistream.engine import SessionConfig
    from multistream.tui import ChatApp, render_chat

    app = ChatApp(
        model,
        tokenizer,
        SessionConfig.from_kwargs(max_rows=120, silence_penalty=2.0),
        row_interval_s=0,
        title=name,
    )
    for key in question:
        app.key(key)
        app.tick()  # about one row per key: a typist at ~10 characters per second
    app.key("\r")
    for _ in range(200):
        if app.tick() is None and app.session.stop is not None:
            break
    console = Console(record=True, file=io.StringIO(), width=110, height=24, force_terminal=True)
    console.print(render_chat(app, console))
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "chat.svg"
        svg.write_text(console.export_svg(title="multistream chat"))
        page = browser.new_page()
        page.set_viewport_size({"width": 1400, "height": 800})
        page.goto(svg.as_uri())
        page.locator("svg").screenshot(path=str(out))
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo")
    parser.add_argument("--schema", default=None)
    parser.add_argument("--name", default=None, help="model name to show (default: the --model name)")
    parser.add_argument("--question", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared CPU)")
    args = parser.parse_args()
    import torch
    from playwright.sync_api import sync_playwright

    from multistream.loading import resolve_multistream
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from headless_browser import HEADLESS_CHROMIUM_FLAGS

    torch.set_num_threads(args.threads)
    model, tokenizer = resolve_multistream(args.model, args.schema)
    name = args.name or Path(args.model).name
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, args=list(HEADLESS_CHROMIUM_FLAGS), headless=True
        )
        page_screenshot(model, tokenizer, name, args.question, args.out / "frontend-page.png", browser)
        chat_screenshot(model, tokenizer, name, args.question, args.out / "frontend-chat.png", browser)
        browser.close()
    print(f"wrote {args.out / 'frontend-page.png'} and {args.out / 'frontend-chat.png'}")


if __name__ == "__main__":
    main()
