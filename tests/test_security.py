"""The server's security model against a live uvicorn on 127.0.0.1 with real sockets: foreign
origins, forged Host headers, content types, idle sessions, capacity, out-of-range fields, timeouts."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from frontend_helpers import WordTokenizer, one_torch_thread, tiny_multistream
from multistream.server.live import LiveConfig
from multistream.server.scheduler import SchedulerConfig
from multistream.server.security import SecurityConfig, normalise_origin, uvicorn_config
from multistream.server.serve import build_app

TOK = WordTokenizer()
EVIL = "https://evil.example"
FRIEND = "http://localhost:3000"
MAX_EVENTS = 200  # every read loop is bounded: a bug must fail the test, not hang it


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@contextlib.contextmanager
def live_server(
    *, allow_origins: tuple[str, ...] = (), header_timeout_s: int = 5, **config
) -> Iterator[tuple[str, object]]:
    """A real uvicorn (the servers' own settings) on a free loopback port; yields (host:port, app)."""
    import uvicorn

    scheduler = SchedulerConfig(
        row_interval_s=config.pop("row_interval_s", 0.0), max_sessions=config.pop("max_sessions", 8)
    )
    config.setdefault("max_rows", 12)
    live = LiveConfig(model_name="tiny", scheduler=scheduler, **config)
    app = build_app(tiny_multistream(), TOK, live, security=SecurityConfig("127.0.0.1", allow_origins))
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, timeout_keep_alive=header_timeout_s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server():
    with live_server(allow_origins=(FRIEND,)) as (address, app):
        yield address, app


def request(address: str, method: str, path: str, body=None, headers=None) -> tuple[int, dict, dict]:
    """One HTTP request; returns (status, lower-cased headers, JSON body or {})."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if body is not None else {}
    sent.update(headers or {})
    conn.request(method, path, body=data, headers=sent)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {}
    return response.status, {k.lower(): v for k, v in response.getheaders()}, payload


def ws(address: str, origin: str | None = None, **options):
    return connect(f"ws://{address}/v1/live", origin=origin, open_timeout=30, **options)


def send(socket_, **message) -> None:
    socket_.send(json.dumps(message))


def receive_until(socket_, kind: str) -> list[dict]:
    events = []
    for _ in range(MAX_EVENTS):
        events.append(json.loads(socket_.recv(timeout=30)))
        if events[-1]["type"] == kind:
            return events
    raise AssertionError(f"no {kind!r} event within {MAX_EVENTS} events: {events[-5:]}")


def live_sessions(app) -> int:
    return app.state.live.scheduler.live_sessions


def wait_for_free_slots(app, timeout_s: float = 10.0) -> None:
    """A cancelled session holds its slot until the decode worker's next turn."""
    deadline = time.monotonic() + timeout_s
    while live_sessions(app) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_sessions(app) == 0


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0}


# -- origins, hosts, content types --------------------------------------------------------------


def test_foreign_origin_cannot_open_a_websocket_and_no_session_starts(server):
    address, app = server
    with pytest.raises(InvalidStatus) as refused:
        ws(address, origin=EVIL)
    assert refused.value.response.status_code == 403
    assert live_sessions(app) == 0
    # The server's own page, a listed origin, and non-browser clients (no Origin) get in.
    for origin in (f"http://{address}", FRIEND, None):
        with ws(address, origin=origin) as socket_:
            send(socket_, type="open", wait_for_input=False, max_rows=1)
            assert receive_until(socket_, "stopped")[-1]["rows"] == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_foreign_origin_is_refused_on_json_routes(server, path):
    address, _ = server
    status, _, body = request(address, "POST", path, CHAT | {"prompt": "hi"}, {"Origin": EVIL})
    assert status == 403 and "--allow-origin" in body["error"]["message"]


def test_cross_origin_simple_post_gets_415(server):
    address, _ = server
    # A browser sends text/plain cross-origin posts without asking first (no preflight).
    status, _, body = request(
        address, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), {"Content-Type": "text/plain"}
    )
    assert status == 415 and "application/json" in body["error"]["message"]


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:80", "127.0.0.1.evil.example"])
def test_forged_host_is_refused(server, host):
    address, _ = server
    status, _, body = request(address, "GET", "/api/info", headers={"Host": host})
    assert status == 400 and "Host header" in body["error"]["message"]
    with pytest.raises(InvalidStatus):
        connect(f"ws://{address}/v1/live", additional_headers={"Host": host}, open_timeout=30)


def test_loopback_names_are_accepted(server):
    address, _ = server
    port = address.split(":")[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert request(address, "GET", "/api/info", headers={"Host": host})[0] == 200


def test_cors_only_for_allowed_origins(server):
    address, _ = server
    preflight = {"Origin": FRIEND, "Access-Control-Request-Method": "POST"}
    status, headers, _ = request(address, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert status == 200 and headers["access-control-allow-origin"] == FRIEND
    with live_server() as (plain, _):
        _, headers, _ = request(plain, "GET", "/api/info", headers={"Origin": f"http://{plain}"})
        assert "access-control-allow-origin" not in headers  # CORS is off without --allow-origin
        status, _, _ = request(plain, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 403


def test_origin_parsing():
    assert normalise_origin("HTTP://LocalHost:80/") == "http://localhost"
    for bad in ("localhost:3000", "http://x.example/path", "null", "ftp://x.example"):
        with pytest.raises(ValueError):
            normalise_origin(bad)
    config = SecurityConfig("0.0.0.0")
    assert config.host_allowed("192.168.1.5:8000") and not config.host_allowed("rebind.example:8000")


# -- idle sessions, per-client cap, capacity ----------------------------------------------------


def test_idle_sessions_end_and_free_their_slot():
    with live_server(idle_timeout_s=1.0, max_sessions=1) as (address, app), ws(address) as socket_:
        started = time.monotonic()
        send(socket_, type="open")  # rows wait for input that never comes
        ready = receive_until(socket_, "ready")[-1]
        assert ready["limits"]["idle_timeout_s"] == 1
        stopped = receive_until(socket_, "stopped")[-1]
        assert stopped["reason"] == "idle" and 1.0 <= time.monotonic() - started < 10
        assert live_sessions(app) == 0
        # The slot is free for the next user, and this connection may open again.
        assert request(address, "POST", "/v1/chat/completions", CHAT | {"max_tokens": 2})[0] == 200
        wait_for_free_slots(app)
        send(socket_, type="open", wait_for_input=False, max_rows=2)
        assert receive_until(socket_, "stopped")[-1]["reason"] == "max_rows"


def test_input_keeps_a_session_alive():
    with live_server(idle_timeout_s=1.0, max_rows=40) as (address, _), ws(address) as socket_:
        send(socket_, type="open")
        receive_until(socket_, "ready")
        for word in ("one", "two", "three", "four"):
            time.sleep(0.5)
            send(socket_, type="feed", stream="user", text=word)
            assert json.loads(socket_.recv(timeout=30))["type"] == "row"
        send(socket_, type="stop")
        assert receive_until(socket_, "stopped")[-1]["reason"] == "client"


def test_full_server_answers_429_with_retry_after():
    with live_server(max_sessions=1) as (address, app), ws(address) as holder:
        send(holder, type="open")
        receive_until(holder, "ready")
        status, headers, body = request(address, "POST", "/v1/chat/completions", CHAT)
        assert status == 429 and int(headers["retry-after"]) > 0
        assert "max_sessions" in body["error"]["message"]
        status, headers, _ = request(address, "POST", "/v1/completions", {"prompt": "hi", "model": "tiny"})
        assert status == 429 and "retry-after" in headers
        with ws(address) as other:
            send(other, type="open")
            error = receive_until(other, "error")[-1]
            assert error["code"] == "limit" and error["retry_after_s"] > 0 and not error["fatal"]
        send(holder, type="stop")
        receive_until(holder, "stopped")
        assert live_sessions(app) == 0


def test_one_client_cannot_take_every_slot():
    with (
        live_server(max_sessions=8, max_sessions_per_client=2) as (address, app),
        contextlib.ExitStack() as stack,
    ):
        sockets = [stack.enter_context(ws(address)) for _ in range(3)]
        for socket_ in sockets[:2]:
            send(socket_, type="open")
            receive_until(socket_, "ready")
        send(sockets[2], type="open")
        error = receive_until(sockets[2], "error")[-1]
        assert error["code"] == "limit" and "max_sessions_per_client" in error["message"]
        # OpenAI requests count against the same client's slots.
        status, headers, body = request(address, "POST", "/v1/chat/completions", CHAT)
        assert status == 429 and "retry-after" in headers
        assert "max_sessions_per_client" in body["error"]["message"]
        sockets[0].close()  # a client that leaves gives its slot back
        deadline = time.monotonic() + 10
        while app.state.live.client_slots("127.0.0.1") > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        send(sockets[2], type="open", wait_for_input=False, max_rows=1)
        assert receive_until(sockets[2], "stopped")[-1]["rows"] == 1


# -- oversized and out-of-range fields -----------------------------------------------------------


@pytest.mark.parametrize(
    "frame, field",
    [
        ({"type": "open", "sampling": {"seed": 99999999999999999999999}}, "sampling.seed"),
        ({"type": "open", "sampling": {"seed": -1}}, "sampling.seed"),
        ({"type": "open", "sampling": {"temperature": 1e308 * 10}}, "sampling.temperature"),
        ({"type": "open", "sampling": {"top_k": 10**30}}, "sampling.top_k"),
        ({"type": "open", "max_rows": 10**30}, "max_rows"),
        ({"type": "open", "version": 10**30}, "version"),
        ({"type": "baseline", "text": "hi", "max_tokens": -5}, "max_tokens"),
    ],
)
def test_out_of_range_fields_get_errors_and_the_connection_survives(server, frame, field):
    address, _ = server
    with ws(address) as socket_:
        socket_.send(json.dumps(frame))  # Python writes 1e309 as Infinity, which json also reads
        error = json.loads(socket_.recv(timeout=30))
        assert error["type"] == "error" and error["field"] == field and not error["fatal"]
        send(socket_, type="open", wait_for_input=False, max_rows=1)
        assert receive_until(socket_, "stopped")[-1]["rows"] == 1


def test_oversized_frames_get_errors_and_the_connection_survives(server):
    address, _ = server
    with ws(address) as socket_:
        socket_.send(json.dumps({"type": "feed", "stream": "user", "text": "x" * 50_000}))
        assert json.loads(socket_.recv(timeout=30))["code"] == "limit"
        socket_.send("[" * 10_000)  # under max_message_chars, too deep for json
        assert json.loads(socket_.recv(timeout=30))["code"] == "bad_json"
        send(socket_, type="open", wait_for_input=False, max_rows=1)
        assert receive_until(socket_, "stopped")[-1]["rows"] == 1


@pytest.mark.parametrize(
    "change, param",
    [
        ({"seed": 99999999999999999999999}, "seed"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 3}, "n"),
    ],
)
def test_out_of_range_request_fields_are_400_at_once(server, change, param):
    address, _ = server
    started = time.monotonic()
    status, _, body = request(address, "POST", "/v1/chat/completions", CHAT | change)
    assert status == 400 and body["error"]["param"] == param
    assert time.monotonic() - started < 5  # refused at the edge, not after a timeout


def test_bad_bodies_are_400(server):
    address, _ = server
    assert request(address, "POST", "/v1/chat/completions", b"{not json")[0] == 400
    assert request(address, "POST", "/v1/chat/completions", b"[" * 100_000)[0] == 400


# -- OpenAI route: model names, /v1/completions ---------------------------------------------------


def test_unknown_model_is_404_as_vllm_answers(server):
    address, _ = server
    status, _, body = request(address, "POST", "/v1/chat/completions", CHAT | {"model": "gpt-4"})
    assert status == 404
    assert body["error"]["type"] == "NotFoundError" and "gpt-4" in body["error"]["message"]


def test_completions_route(server):
    address, _ = server
    status, _, body = request(
        address, "POST", "/v1/completions", {"model": "tiny", "prompt": "hello there", "max_tokens": 3}
    )
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 3


# -- connection timeouts -------------------------------------------------------------------------


def test_half_open_connections_are_closed_and_live_ones_are_not():
    with live_server(header_timeout_s=1, max_rows=40, row_interval_s=0.1) as (address, _):
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finish
            started = time.monotonic()
            assert conn.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 5
        # A WebSocket and a streamed answer outlive the header timeout.
        with ws(address) as socket_:
            time.sleep(1.5)
            send(socket_, type="open", wait_for_input=False, max_rows=2)
            assert receive_until(socket_, "stopped")[-1]["rows"] == 2
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps(CHAT | {"stream": True, "max_tokens": 20})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        started = time.monotonic()
        text = response.read().decode()
        assert response.status == 200 and text.rstrip().endswith("data: [DONE]")
        assert time.monotonic() - started > 1.0  # ten or more rows at 0.1 s: longer than the timeout
        conn.close()
