"""Follow-up turns (issue 14 item 4): a closed input stream reopened during or after an answer
takes new user input in the same running session, in the engine, on the WebSocket and (Layout B
excepted, with a clear error) nowhere else silently."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_SILENCE
from frontend_helpers import one_torch_thread
from multistream.engine import Session, SessionBatch, SessionStopped
from multistream.server.protocol import parse_client_message
from test_engine import TOK, config, full_forward_greedy, random_rows, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def test_reopen_during_the_answer_feeds_the_running_session_and_the_model_reads_it():
    model = tiny_model()
    session = Session(model, TOK, config(max_rows=40, silence_penalty=0.0))
    session.prefill(random_rows(2, 3, 5))
    session.feed("user", [11, 12, 13])
    session.close("user")
    answer = [session.step() for _ in range(6)]  # 3 input rows, then the answer streams
    assert session.state.inputs_closed_row == 2 + 3
    with pytest.raises(ValueError, match="reopen"):
        session.feed("user", [20])  # closed: the error names the way out
    session.reopen("user")
    assert session.state.inputs_closed_row is None and session.awaiting_input
    session.feed("user", [20, 21])
    follow = [session.step() for _ in range(4)]
    # The follow-up's tokens are the user cells of the next rows; the rows go on.
    assert [r.ids[0] for r in follow] == [20, 21, TINY_SILENCE, TINY_SILENCE]
    assert [r.index for r in answer + follow] == list(range(2, 12))
    assert session.stop is None and session.state.inputs_closed_row is None  # open again
    session.close("user")
    session.step()
    assert session.state.inputs_closed_row == 2 + 6 + 4  # the first row without input after it
    # The model read the follow-up in context: every generated cell is the greedy next token of
    # the whole grid (first question, answer so far, follow-up) in one full forward.
    ids = session.grid().ids
    predicted = full_forward_greedy(model, ids)
    generated = model.schema.generated_indices
    assert torch.equal(ids[2:, generated], predicted[1:-1, generated])


def test_reopen_after_a_silence_stop_resumes_unless_told_not_to():
    cfg = config(silent_streams=("think", "assistant"), stop_silent_rows=2, max_rows=50)
    session = Session(tiny_model(), TOK, cfg)
    session.feed("user", [30])
    session.close()
    rows = list(session)
    assert session.stop == "silence" and len(rows) == 3
    with pytest.raises(SessionStopped, match="silence"):
        session.reopen("user", resume=False)
    session.reopen("user")
    assert session.stop is None
    session.feed("user", [31, 32])
    assert [session.step().ids[0] for _ in range(2)] == [31, 32]
    session.close()
    list(session)
    assert session.stop == "silence" and session.rows[-3][0] == 32


def test_reopen_refuses_cancelled_sessions_sessions_that_left_and_generated_streams():
    batch = SessionBatch(tiny_model(), TOK, 2, config())
    a, b = batch.sessions
    for s in (a, b):
        s.feed("user", [40])
        s.close()
    batch.step()
    a.cancel("client")
    with pytest.raises(SessionStopped, match="client"):
        a.reopen()
    batch.remove(b)
    with pytest.raises(SessionStopped, match="left its batch"):
        b.reopen()
    with pytest.raises(ValueError, match="generated"):
        Session(tiny_model(), TOK, config()).reopen("assistant")


def test_layout_b_cannot_reopen_a_closed_user_block(smol_tokenizer):
    from test_blocks_decode import _tiny_chatml_model

    session = Session(_tiny_chatml_model(2), smol_tokenizer, config(max_rows=6))
    session.reopen("user")  # still open: nothing to do
    session.feed("user", "Hi there.")
    session.close("user")
    session.step()
    with pytest.raises(ValueError, match="Layout B.*new session"):
        session.reopen("user")


# -- the WebSocket -------------------------------------------------------------------------------


def test_feed_reopen_flag_is_optional_and_version_1_feeds_still_parse():
    assert parse_client_message('{"type": "feed", "stream": "user", "text": "Hi"}').reopen is False
    message = parse_client_message('{"type": "feed", "stream": "user", "text": "Hi", "reopen": true}')
    assert message.reopen is True


def test_a_follow_up_during_the_answer_is_accepted_and_fed():
    from test_server_live import make_client, receive_until, send

    paced = {"max_rows": 400, "stop_silent_rows": 0, "row_interval_s": 0.02}
    with make_client(**paced) as client, client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", version=1)
        receive_until(ws, "ready")
        send(ws, type="feed", stream="user", text="what is the capital ")
        send(ws, type="close", stream="user")
        events = []
        while sum(e["type"] == "row" for e in events) < 8:  # the question is read, the answer runs
            events.append(ws.receive_json())
        # Without the flag a closed stream refuses input (protocol version 1 behaviour) ...
        send(ws, type="feed", stream="user", text="and of spain ")
        events += receive_until(ws, "error")
        assert events[-1]["code"] == "engine" and "reopen" in events[-1]["message"]
        rows_before = [e["row"] for e in events if e["type"] == "row"]
        assert rows_before == list(range(len(rows_before)))
        # ... with it, the words join the running session as new user input.
        send(ws, type="feed", stream="user", text="and of spain ", reopen=True)
        expected = TOK.decode(TOK.encode("and of spain"))
        follow: list[dict] = []
        while "".join(e["text"]["user"] or "" for e in follow) != expected:
            follow.append(ws.receive_json())
            assert follow[-1]["type"] == "row" and len(follow) < 100, follow[-3:]
        # The same session goes on: its row numbers continue.
        indices = [e["row"] for e in follow]
        assert indices == list(range(rows_before[-1] + 1, rows_before[-1] + 1 + len(follow)))
        send(ws, type="stop")
        stopped = receive_until(ws, "stopped")[-1]
        # The session's texts keep both turns.
        assert stopped["texts"]["user"] == TOK.decode(TOK.encode("what is the capital and of spain"))


def test_a_follow_up_after_the_session_stopped_is_a_clear_error():
    from test_server_live import make_client, receive_until, send

    with make_client(max_rows=3) as client, client.websocket_connect("/v1/live") as ws:
        send(ws, type="open", version=1)
        receive_until(ws, "ready")
        send(ws, type="feed", stream="user", text="hi ")
        send(ws, type="close")
        receive_until(ws, "stopped")
        send(ws, type="feed", stream="user", text="more ", reopen=True)
        error = receive_until(ws, "error")[-1]
        assert error["code"] == "not_open", error
        send(ws, type="open", version=1)  # the connection stays usable
        assert receive_until(ws, "ready")[-1]["type"] == "ready"
