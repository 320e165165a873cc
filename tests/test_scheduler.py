"""The decode scheduler's continuous batching: late sessions join the running batch."""

from __future__ import annotations

import threading

import torch

from multistream.engine import Session, SessionConfig
from multistream.server.scheduler import DecodeScheduler, SchedulerConfig
from test_engine import TOK, tiny_model


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.stopped = threading.Event()
        self.reason: str | None = None

    def on_start(self, live) -> None:
        pass

    def on_row(self, live, row) -> None:
        self.rows.append(row.ids)

    def on_stop(self, live, reason, error) -> None:
        self.reason = reason
        self.stopped.set()


def test_late_session_joins_the_running_batch_and_decodes_as_alone():
    torch.set_num_threads(1)
    model = tiny_model()
    cfg = SessionConfig(max_rows=12, stop_silent_rows=0)
    scheduler = DecodeScheduler(model, TOK, SchedulerConfig(row_interval_s=0.01, gather_s=0.0)).start()
    try:
        first = Recorder()
        live = scheduler.open(cfg, first, wait_for_input=False).result(timeout=30)
        live.feed("user", "alpha beta gamma")
        live.close()
        while len(first.rows) < 3:  # the first batch is running
            first.stopped.wait(0.01)
        late = Recorder()
        joined = scheduler.open(cfg, late, wait_for_input=False).result(timeout=30)
        joined.feed("user", "one two")
        joined.close()
        assert late.stopped.wait(60) and first.stopped.wait(60)
        assert live.engine_session.batch is joined.engine_session.batch  # one batch, no new one
        assert late.reason == "max_rows" and len(late.rows) == 12
    finally:
        scheduler.shutdown()
    alone = Session(model, TOK, cfg)
    alone.feed("user", "one two")
    alone.close()
    assert late.rows == [row.ids for row in alone]
    # Both left: their slots were freed for the next sessions.
    assert live.engine_session.batch.sessions == []
