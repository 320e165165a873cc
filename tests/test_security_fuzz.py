"""Property-based fuzzing of the live WebSocket protocol on a real server: whatever a client
sends, the connection stays open and answers (an error event for anything invalid), and the
server keeps serving."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_security import live_server, receive_until, request, send, ws

SENTINEL = "fuzz-sentinel"
EVENT_TYPES = {"ready", "row", "baseline_token", "baseline_end", "stopped", "error"}
FIELDS = [
    "type", "version", "model", "sampling", "clock", "max_rows", "wait_for_input", "stream", "text",
    "max_tokens", "temperature", "top_k", "top_p", "seed", "silence_penalty", "think_silence_penalty",
]  # fmt: skip

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64, 10**30, 1e308]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=30),
    st.sampled_from(["user", "assistant", "think", "open"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["open", "feed", "close", "stop", "baseline", "nope", ""])},
    optional={name: values for name in FIELDS[1:]},
)
sampling = st.fixed_dictionaries({}, optional={name: numbers for name in FIELDS[10:]})
opens = st.builds(
    lambda s, extra: {"type": "open", "sampling": s, **extra},
    sampling,
    st.dictionaries(st.sampled_from(["version", "max_rows", "clock", "wait_for_input"]), scalars, max_size=2),
)
frames = st.one_of(
    st.text(max_size=200),
    messages.map(json.dumps),
    opens.map(json.dumps),
    values.map(json.dumps),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def server():
    with live_server(max_rows=4, max_sessions=4, max_sessions_per_client=4) as (address, app):
        yield address, app


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=4))
def test_random_frames_never_end_the_connection_or_crash_the_server(server, batch):
    address, _ = server
    with ws(address) as socket_:
        for frame in batch:
            socket_.send(frame)  # bytes go as binary frames, text as text frames
        # The connection still answers: the sentinel's error event arrives after whatever the
        # frames caused (each event a well-formed server event).
        send(socket_, type=SENTINEL)
        events = []
        for _ in range(300):
            event = json.loads(socket_.recv(timeout=30))
            assert event["type"] in EVENT_TYPES, event
            if event["type"] == "error":
                assert event["code"] and event["message"] and event["fatal"] is False, event
            events.append(event)
            if event["type"] == "error" and SENTINEL in event["message"]:
                break
        else:
            raise AssertionError(f"no answer to the sentinel: {events[-5:]}")
        send(socket_, type="stop")
    assert request(address, "GET", "/health")[0] == 200


def test_the_fuzzed_server_still_decodes(server):
    address, _ = server
    with ws(address) as socket_:
        send(socket_, type="open", wait_for_input=False, max_rows=2)
        assert receive_until(socket_, "stopped")[-1]["rows"] == 2
