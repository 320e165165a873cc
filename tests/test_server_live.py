"""The live WebSocket protocol end to end over a tiny model: round trip, errors, isolation, limits."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from frontend_helpers import WordTokenizer, one_torch_thread, tiny_multistream
from multistream.server import scheduler as scheduler_module
from multistream.server.live import LiveConfig
from multistream.server.protocol import PROTOCOL_VERSION, ProtocolError, parse_client_message
from multistream.server.scheduler import SchedulerConfig
from multistream.server.serve import build_app

TOK = WordTokenizer()
BASE = "http://127.0.0.1"


class LocalClient(TestClient):
    """A test client that names the server 127.0.0.1: its default Host, "testserver", is
    refused like any foreign name (DNS rebinding), also on the WebSocket."""

    def __init__(self, app, **options) -> None:
        super().__init__(app, base_url=BASE, **options)

    def websocket_connect(self, url: str, *args, **kwargs):
        return super().websocket_connect(f"ws://127.0.0.1{url}", *args, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


MAX_EVENTS = 200  # every read loop is bounded: a bug must fail the test, not hang it


@contextlib.contextmanager
def make_client(token: str | None = None, **config) -> Iterator[LocalClient]:
    scheduler = SchedulerConfig(
        row_interval_s=config.pop("row_interval_s", 0.0),
        gather_s=config.pop("gather_s", 0.05),
        max_sessions=config.pop("max_sessions", 8),
    )
    config.setdefault("max_rows", 12)
    live = LiveConfig(model_name="tiny", scheduler=scheduler, **config)
    # The context runs the app's startup and shutdown: the decode worker starts and stops.
    with LocalClient(build_app(tiny_multistream(), TOK, live, token=token)) as test_client:
        yield test_client


@pytest.fixture
def client():
    with make_client() as test_client:
        yield test_client


def send(ws, **message) -> None:
    ws.send_text(json.dumps(message))


def receive_until(ws, kind: str) -> list[dict]:
    """Events up to and including the first of type ``kind``."""
    events = []
    for _ in range(MAX_EVENTS):
        events.append(ws.receive_json())
        if events[-1]["type"] == kind:
            return events
    raise AssertionError(f"no {kind!r} event within {MAX_EVENTS} events: {events[-5:]}")


def user_cells(events: list[dict]) -> str:
    return "".join(e["text"]["user"] or "" for e in events if e["type"] == "row")


def test_round_trip_open_feed_close_stop(client):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", version=PROTOCOL_VERSION, sampling={"temperature": 0.0})
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["model"] == "tiny"
        assert [s["name"] for s in ready["streams"]] == ["user", "think", "assistant"]
        assert ready["settings"]["max_rows"] == 12
        send(ws, type="feed", stream="user", text="what is two plus two")
        send(ws, type="close", stream="user")
        events = receive_until(ws, "stopped")
    rows = [e for e in events if e["type"] == "row"]
    assert [r["row"] for r in rows] == list(range(len(rows)))
    assert all(r["session"] == ready["session"] for r in rows)
    assert user_cells(events) == TOK.decode(TOK.encode("what is two plus two"))
    stopped = events[-1]
    assert stopped["rows"] == len(rows) and stopped["reason"] in ("max_rows", "silence")
    assert stopped["texts"]["user"] == user_cells(events)


@pytest.mark.parametrize(
    "frame, code, field",
    [
        ("not json", "bad_json", None),
        ("[1, 2]", "bad_json", None),
        ('{"type": "shout"}', "bad_message", "type"),
        ('{"type": "feed", "text": "hi"}', "bad_message", "stream"),
        ('{"type": "feed", "stream": "user", "text": "hi", "colour": 1}', "bad_message", "colour"),
        ('{"type": "feed", "stream": "assistant", "text": "hi"}', "bad_message", "stream"),
        ('{"type": "feed", "stream": "nobody", "text": "hi"}', "bad_message", "stream"),
        ('{"type": "open", "sampling": {"temperature": -1}}', "bad_message", "sampling.temperature"),
        ('{"type": "open", "version": 99}', "unsupported_version", "version"),
        ('{"type": "open", "model": "other"}', "bad_message", "model"),
        ('{"type": "open", "max_rows": 100000}', "limit", "max_rows"),
    ],
)
def test_bad_message_gets_an_error_and_the_session_goes_on(client, frame, code, field):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", wait_for_input=False, max_rows=6)
        assert ws.receive_json()["type"] == "ready"
        send(ws, type="feed", stream="user", text="hello")
        ws.send_text(frame)
        events = receive_until(ws, "error")
        error = events[-1]
        assert (error["code"], error["field"], error["fatal"]) == (code, field, False)
        assert error["message"]
        # Still usable: more input is read, and the session ends normally.
        send(ws, type="feed", stream="user", text="again")
        events += receive_until(ws, "stopped")
    assert events[-1]["type"] == "stopped" and events[-1]["reason"] == "max_rows"


def test_binary_frames_get_an_error(client):
    with client.websocket_connect("/v1/live") as ws:
        ws.send_bytes(b'{"type": "stop"}')
        error = ws.receive_json()
        assert error["code"] == "bad_json" and "text frames" in error["message"]
        send(ws, type="open", wait_for_input=False, max_rows=1)
        assert ws.receive_json()["type"] == "ready"
        receive_until(ws, "stopped")


def test_requests_before_open_and_double_open(client):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="feed", stream="user", text="hi")
        assert ws.receive_json()["code"] == "not_open"
        send(ws, type="open", wait_for_input=False, max_rows=3)
        assert ws.receive_json()["type"] == "ready"
        send(ws, type="open")
        assert receive_until(ws, "error")[-1]["code"] == "already_open"
        receive_until(ws, "stopped")


def test_rows_wait_for_input_while_the_question_is_open(client):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", max_rows=10)
        assert ws.receive_json()["settings"]["wait_for_input"] is True
        send(ws, type="feed", stream="user", text="alpha beta")
        rows = [ws.receive_json() for _ in range(2)]
        assert [r["text"]["user"] for r in rows] == [TOK.decode([t]) for t in TOK.encode("alpha beta")]
        time.sleep(0.3)  # no input queued: no row may be decoded meanwhile
        send(ws, type="stop")
        stopped = receive_until(ws, "stopped")[-1]
    assert stopped["rows"] == 2 and stopped["reason"] == "client"


def test_stop_then_open_again(client):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", max_rows=12)
        first = ws.receive_json()["session"]
        send(ws, type="stop")
        stopped = receive_until(ws, "stopped")[-1]
        assert stopped["reason"] == "client" and stopped["session"] == first
        send(ws, type="open", wait_for_input=False, max_rows=2)
        ready = receive_until(ws, "ready")[-1]
        assert ready["session"] != first
        assert receive_until(ws, "stopped")[-1]["rows"] == 2


def test_input_size_limit_names_the_limit():
    with make_client(max_input_chars=10) as test_client, test_client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", wait_for_input=False, max_rows=4)
        ws.receive_json()
        send(ws, type="feed", stream="user", text="just fine")
        send(ws, type="feed", stream="user", text="this is too much")
        error = receive_until(ws, "error")[-1]
        assert error["code"] == "limit" and "max_input_chars" in error["message"]
        receive_until(ws, "stopped")


def test_session_limit_is_a_clear_error():
    with (
        make_client(max_sessions=1, row_interval_s=0.05, max_rows=40) as test_client,
        test_client.websocket_connect("/v1/live") as a,
        test_client.websocket_connect("/v1/live") as b,
    ):
        send(a, type="open")
        assert a.receive_json()["type"] == "ready"
        send(b, type="open")
        error = receive_until(b, "error")[-1]
        assert error["code"] == "limit" and "max_sessions" in error["message"]
        send(a, type="stop")
        receive_until(a, "stopped")
        send(b, type="open", wait_for_input=False, max_rows=2)  # the slot is free again
        assert receive_until(b, "stopped")[-1]["rows"] == 2


def test_concurrent_sessions_share_a_batch_and_never_see_each_others_rows(monkeypatch):
    batch_sizes = []
    real_batch = scheduler_module.SessionBatch

    def spy(model, tokenizer, size, config):
        batch_sizes.append(size)
        return real_batch(model, tokenizer, size, config)

    monkeypatch.setattr(scheduler_module, "SessionBatch", spy)
    texts = ["alpha beta gamma", "one two three four", "red green"]
    results: dict[int, list[dict]] = {}
    connected = threading.Barrier(len(texts), timeout=30)

    def client_session(i: int) -> None:
        with test_client.websocket_connect("/v1/live") as ws:
            connected.wait()  # open at about the same time, as concurrent users do
            send(ws, type="open", sampling={"temperature": 0.0})
            ready = ws.receive_json()
            send(ws, type="feed", stream="user", text=texts[i])
            send(ws, type="close")
            results[i] = [ready, *receive_until(ws, "stopped")]

    with make_client(gather_s=0.5, max_rows=10) as test_client:
        threads = [threading.Thread(target=client_session, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert sorted(results) == [0, 1, 2]
    assert batch_sizes == [3]  # opened together, decoded in one forward per row
    ids = {results[i][0]["session"] for i in results}
    assert len(ids) == 3
    for i, events in results.items():
        own = events[0]["session"]
        assert all(e["session"] == own for e in events if e["type"] in ("row", "stopped"))
        assert user_cells(events) == TOK.decode(TOK.encode(texts[i]))


def test_baseline_streams_tokens_then_ends(client):
    with client.websocket_connect("/v1/live") as ws:
        send(ws, type="baseline", text="what is two plus two", max_tokens=4)
        events = receive_until(ws, "baseline_end")
    tokens = [e for e in events if e["type"] == "baseline_token"]
    assert [t["index"] for t in tokens] == [0, 1, 2, 3]
    assert events[-1]["reason"] == "max_tokens" and events[-1]["text"] == "".join(t["text"] for t in tokens)


def test_bearer_token_guards_api_and_socket():
    with make_client(token="s3cret") as test_client:
        assert test_client.get("/api/info").status_code == 401
        assert test_client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            test_client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).json()["model"] == "tiny"
        )
        assert test_client.get("/").status_code == 200  # the page itself holds nothing
        with test_client.websocket_connect("/v1/live") as ws:
            error = ws.receive_json()
            assert (error["code"], error["fatal"]) == ("unauthorized", True)
        with test_client.websocket_connect("/v1/live?token=s3cret") as ws:
            send(ws, type="open", wait_for_input=False, max_rows=1)
            assert ws.receive_json()["type"] == "ready"
            receive_until(ws, "stopped")
        assert test_client.get("/health").status_code == 200


def test_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "multistream" in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert client.get(f"/{asset}").status_code == 200
    info = client.get("/api/info").json()
    assert info["limits"]["max_rows"] == 12 and info["sampling"]["temperature"] == 0.0


def test_protocol_version_is_shared_with_the_page():
    from multistream.server.live_routes import STATIC_DIR

    assert f"const PROTOCOL_VERSION = {PROTOCOL_VERSION};" in (STATIC_DIR / "app.js").read_text()


def test_parse_client_message_names_the_field():
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type": "open", "sampling": {"top_p": 0}}')
    assert info.value.field == "sampling.top_p" and "top_p" in str(info.value)
    assert parse_client_message('{"type": "close"}').stream is None


def test_answers_end_at_the_eos_token_which_is_not_shown():
    from collections import Counter

    from frontend_helpers import tiny_multistream
    from multistream.engine import generate

    model = tiny_multistream()
    assistant = model.schema.index("assistant")
    probe = generate(model, TOK, {"user": "hello there"}, max_rows=10, stop_silent_rows=0)
    # The token the greedy tiny model writes most often in its answer plays the eos.
    eos = Counter(row[assistant] for row in probe.grid.ids.tolist()).most_common(1)[0][0]

    class EosTokenizer(type(TOK)):
        eos_token_id = eos

    live = LiveConfig(model_name="tiny", max_rows=30, scheduler=SchedulerConfig(row_interval_s=0.0))
    with (
        LocalClient(build_app(model, EosTokenizer(), live)) as test_client,
        test_client.websocket_connect("/v1/live") as ws,
    ):
        send(ws, type="open")
        ws.receive_json()
        send(ws, type="feed", stream="user", text="hello there")
        send(ws, type="close")
        events = receive_until(ws, "stopped")
    shown = [e["text"]["assistant"] for e in events if e["type"] == "row"]
    assert events[-1]["reason"] == "end_token"
    assert TOK.decode([eos]) not in shown
    assert events[-1]["texts"]["assistant"] == "".join(t or "" for t in shown)
