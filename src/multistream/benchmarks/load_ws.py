"""Load test of the live WebSocket protocol: N concurrent sessions on one server, loopback only.

For each N (default 1, 4, 16) it opens N sessions at once, feeds each a different question,
closes the input and reads rows until the session stops or ``--max-rows`` rows arrived. It
checks that no session sees another's rows (session ids and the echoed input stream) and
reports, per N, the time between consecutive rows of a session (p50/p95; rows are unpaced,
``row_interval_s = 0``, so this is the decode time of one batched row) and the aggregate rows/s
over all sessions.

Bounded: at most ``--max-rows`` rows per session and ``--timeout-s`` seconds per N; the server
binds 127.0.0.1 and ``--url`` accepts only loopback addresses.

Usage::

    python -m multistream.benchmarks.load_ws                          # SmolLM2-135M wrapped, in-process server
    python -m multistream.benchmarks.load_ws --model demo --sessions 1,4,16 --json out.json
    python -m multistream.benchmarks.load_ws --url ws://127.0.0.1:8000/v1/live   # a running multistream serve
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlparse

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Name three primary colours.",
    "Why is the sky blue during the day?",
    "What is seven times eight?",
    "Who wrote the play Hamlet?",
    "What does a thermometer measure?",
    "Give me a synonym for happy.",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _session(url: str, index: int, max_rows: int, stream: str) -> dict[str, Any]:
    """One client: open, feed, close, read rows; returns its rows' arrival times and checks."""
    from websockets.asyncio.client import connect

    question = QUESTIONS[index % len(QUESTIONS)] + f" (session {index})"
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "open", "max_rows": max_rows}))
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            raise RuntimeError(f"session {index}: expected ready, got {ready}")
        await ws.send(json.dumps({"type": "feed", "stream": stream, "text": question}))
        await ws.send(json.dumps({"type": "close"}))
        arrivals, foreign, fed = [], 0, []
        while True:
            event = json.loads(await ws.recv())
            if event.get("session") not in (None, ready["session"]):
                foreign += 1
            if event["type"] == "row":
                arrivals.append(time.perf_counter())
                fed.append(event["text"][stream] or "")
            elif event["type"] == "stopped":
                break
            elif event["type"] == "error":
                raise RuntimeError(f"session {index}: {event}")
    echoed = " ".join("".join(fed).split())
    return {
        "session": ready["session"],
        "arrivals": arrivals,
        "foreign_events": foreign,
        # The input stream carries this session's question in order (cut short by max_rows).
        "own_input": bool(echoed) and " ".join(question.split()).startswith(echoed),
    }


async def _run_level(url: str, n: int, max_rows: int, stream: str, timeout_s: float) -> dict[str, Any]:
    start = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(_session(url, i, max_rows, stream) for i in range(n))), timeout_s
    )
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    rows = sum(len(r["arrivals"]) for r in results)
    first = min(r["arrivals"][0] for r in results if r["arrivals"])
    last = max(r["arrivals"][-1] for r in results if r["arrivals"])
    return {
        "sessions": n,
        "rows": rows,
        "row_ms_p50": round(1000 * statistics.median(gaps), 1),
        "row_ms_p95": round(1000 * _percentile(gaps, 0.95), 1),
        "rows_per_s": round(rows / (last - first), 1) if last > first else None,
        "time_to_first_row_ms": round(1000 * (first - start), 1),
        "wall_s": round(time.perf_counter() - start, 2),
        "distinct_sessions": len({r["session"] for r in results}) == n,
        "cross_talk_events": sum(r["foreign_events"] for r in results),
        "every_session_got_its_own_input": all(r["own_input"] for r in results),
    }


@contextlib.contextmanager
def _local_server(model: str, schema: str | None, max_sessions: int, threads: int | None):
    """Serve ``model`` in this process on a free loopback port; yields the WebSocket URL."""
    import torch

    from multistream.models import resolve_multistream
    from multistream.server.live import LiveConfig
    from multistream.server.local import serve_in_thread
    from multistream.server.scheduler import SchedulerConfig
    from multistream.server.serve import build_app

    if threads is not None:
        torch.set_num_threads(threads)
    lm, tokenizer = resolve_multistream(model, schema)
    config = LiveConfig(
        model_name=model,
        max_rows=4096,
        scheduler=SchedulerConfig(
            max_sessions=max_sessions, max_batch=max_sessions, row_interval_s=0.0, gather_s=0.2
        ),
        # Every load-test session comes from this one loopback client.
        max_sessions_per_client=max_sessions,
    )
    with serve_in_thread(build_app(lm, tokenizer, config)) as base_url:
        yield base_url.replace("http://", "ws://") + "/v1/live"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="model to serve in-process (default: SmolLM2-135M)"
    )
    parser.add_argument("--schema", default=None, help="streams for a base model (default: user,assistant)")
    parser.add_argument(
        "--url",
        default=None,
        help="use a running server's ws://127.0.0.1:PORT/v1/live instead (start it with "
        "--max-sessions-per-client at least the largest N: all sessions come from one client)",
    )
    parser.add_argument("--sessions", default="1,4,16", help="comma-separated N values")
    parser.add_argument("--max-rows", type=int, default=48, help="rows per session (bound)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="time limit per N (bound)")
    parser.add_argument("--stream", default="user", help="the input stream to feed")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for the in-process server"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.sessions.split(",")]
    if args.url is not None and urlparse(args.url).hostname not in LOOPBACK:
        parser.error(f"--url {args.url}: only loopback servers (127.0.0.1, localhost) may be load-tested")
    from multistream.models import EMBEDDED_MODELS

    if args.schema is None and args.model in EMBEDDED_MODELS:
        args.schema = "user,assistant"  # a bare base model needs streams; saved models bring theirs
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(
            _local_server(args.model, args.schema, max(levels), args.threads)
        )
        asyncio.run(_run_level(url, 1, 4, args.stream, args.timeout_s))  # warm-up: first forwards are slow
        results = [
            asyncio.run(_run_level(url, n, args.max_rows, args.stream, args.timeout_s)) for n in levels
        ]
    import torch

    report = {
        "benchmark": "load_ws",
        "model": args.model if args.url is None else args.url,
        "max_rows_per_session": args.max_rows,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch_threads": torch.get_num_threads(),
        },
        "levels": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    failed = [r for r in results if r["cross_talk_events"] or not r["every_session_got_its_own_input"]]
    if failed:
        raise SystemExit(f"cross-talk detected: {failed}")
    return report


if __name__ == "__main__":
    main()
