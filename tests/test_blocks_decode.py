"""Layout B streaming decode (spec §3.2): the cached, interleaved decode equals the full forward of
the example it produced, alone and in a batch, with H = 1 and H = 2 and both cross-channel
flags of the y-rule that the decode supports."""

from __future__ import annotations

import pytest
import torch

from multistream.engine import generate
from multistream.engine.blocks_decode import BlocksSession, BlocksSessionBatch
from multistream.engine.config import SessionConfig
from multistream.layout import BlocksExample
from multistream.layout.blocks import BlocksLayout, blocks_schema
from multistream.model import MultiStreamLM


def _tiny_chatml_model(heads: int, **options):
    """A random 2-layer Llama over SmolLM2's vocabulary (its ChatML tokens), Layout B."""
    import transformers as tf

    torch.manual_seed(0)
    base = tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    ).eval()  # fmt: skip
    model = MultiStreamLM.from_base(
        base, blocks_schema(heads, silence_id=0), layout="blocks", layout_options=options
    ).eval()
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.3)
    return model


class _Recorder:
    """Wraps the backend's append: keeps (slot, stream, y) -> the logits each step sampled from."""

    def __init__(self, batch) -> None:
        self.seen: dict[tuple[int, int, int], torch.Tensor] = {}
        self._append = batch.backend.append
        batch.backend.append = self

    def __call__(self, plan):
        logits = self._append(plan)
        for i, slot in enumerate(plan.slots.tolist()):
            for g, j in enumerate(plan.logits_at[i].tolist()):
                if j >= 0:
                    key = (slot, int(plan.streams[i, j]), int(plan.positions[i, j]))
                    self.seen[key] = logits[i, g].clone()
        return logits


@torch.no_grad()
def _check_against_full_forward(model, session, seen, slot, flags):
    blocks = session.block_ids()
    n_heads = len(blocks) - 2
    im_end = session.batch.im_end
    # A block cut short by max_rows gets its closing token here: the layout takes a block's last
    # token for its <|im_end|>, and a later token changes no earlier logit.
    closed = [b if b[-1] == im_end else [*b, im_end] for b in blocks]
    ex = BlocksExample(closed[0], closed[1], closed[2:], [len(b) - 1 for b in closed[2:]], **flags)
    batch = BlocksLayout(**flags).collate([ex], 0)
    full = model(**batch).logits[0]  # [T, V]
    streams, ys = batch["stream_ids"][0].tolist(), batch["position_ids"][0].tolist()
    where = {(c, y): i for i, (c, y) in enumerate(zip(streams, ys, strict=True))}
    checked = 0
    for (s, c, y), logits in seen.items():
        if s == slot:
            torch.testing.assert_close(logits, full[where[(c, y)]].float(), atol=2e-4, rtol=0)
            checked += 1
    # Every forwarded head token from the prefix end on sampled the next one (but <|im_end|>).
    forwarded = sum(
        sum(t != im_end for t in b[session.state.prefix_len[2 + h] - 1 :]) for h, b in enumerate(blocks[2:])
    )
    assert checked == forwarded >= n_heads


@pytest.mark.parametrize(
    ("heads", "flags"),
    [
        (1, {}),
        (2, {}),
        (1, {"include_im_end_in_cross_channel": False}),
        (2, {"include_im_end_in_cross_channel": False}),
    ],
)
def test_cached_streaming_decode_equals_the_full_forward(smol_tokenizer, heads, flags):
    model = _tiny_chatml_model(heads, **flags)
    session = BlocksSession(model, smol_tokenizer, SessionConfig.from_kwargs(max_rows=30))
    rec = _Recorder(session.batch)
    session.feed("system", "Answer briefly.")
    session.feed("user", "What is the capital of France? Say it in one word please.")
    session.close()
    rows = list(session)
    assert rows[0].text["user"] is not None and all(
        rows[0].text[n] is not None for n in model.schema.names[2:]
    )
    full_flags = {
        "include_im_end_in_cross_channel": flags.get("include_im_end_in_cross_channel", True),
        "allow_assistant_cross_channel": True,
    }
    _check_against_full_forward(model, session, rec.seen, session.slot, full_flags)


def test_batched_sessions_each_equal_their_own_full_forward(smol_tokenizer):
    model = _tiny_chatml_model(2)
    batch = BlocksSessionBatch(model, smol_tokenizer, 3, SessionConfig.from_kwargs(max_rows=25))
    rec = _Recorder(batch)
    prompts = ["Hi.", "Tell me a long story about a dragon and a knight who became friends.", "2 + 2 = ?"]
    batch.sessions[1].feed("system", "You answer in rhymes, and you always answer.")  # another y0
    for s, text in zip(batch.sessions, prompts, strict=True):
        s.feed("user", text)
        s.close()
    while any(s.stop is None for s in batch.sessions):
        batch.step()
    flags = {"include_im_end_in_cross_channel": True, "allow_assistant_cross_channel": True}
    for s in batch.sessions:
        _check_against_full_forward(model, s, rec.seen, s.slot, flags)
    # The user block of every session was read in full, one token per step, and ended.
    for s, text in zip(batch.sessions, prompts, strict=True):
        assert s.texts()["user"].strip() == text


def test_user_and_heads_step_together_and_the_answer_starts_before_the_input_ends(smol_tokenizer):
    model = _tiny_chatml_model(1)
    result = generate(  # the engine's one generate: Session(...) is a BlocksSession here
        model,
        smol_tokenizer,
        {"user": "one two three four five six seven eight"},
        config=SessionConfig(max_rows=6),
    )
    # Step 0 already has an assistant token while the user has said one word: no waiting.
    assert result.first_visible_output_row == 0
    assert result.stop in ("max_rows", "end_token")
    assert all(r.text["user"] is not None for r in result.rows[:6])


def test_feeding_after_the_first_step_and_bad_streams_fail_clearly(smol_tokenizer):
    model = _tiny_chatml_model(1)
    session = BlocksSession(model, smol_tokenizer)
    session.feed("user", "Hello")
    session.step()
    with pytest.raises(ValueError, match="feed 'system' before stepping"):
        session.feed("system", "late")
    with pytest.raises(ValueError, match="generated, not an input"):
        session.feed("assistant", "x")
    assert session.awaiting_input
    with pytest.raises(NotImplementedError, match="allow_assistant_cross_channel"):
        BlocksSession(_tiny_chatml_model(2, allow_assistant_cross_channel=False), smol_tokenizer)


def test_the_engine_api_runs_a_layout_b_model_unchanged(smol_tokenizer):
    from multistream.engine import Session, SessionBatch, generate

    model = _tiny_chatml_model(1)
    assert isinstance(Session(model, smol_tokenizer), BlocksSession)
    assert isinstance(SessionBatch(model, smol_tokenizer, 2), BlocksSessionBatch)
    rows = []
    result = generate(model, smol_tokenizer, {"user": "Hi there"}, max_rows=5, on_row=rows.append)
    assert len(result.rows) == len(rows) == 5 and result.stop == "max_rows"
    assert result.texts["user"] == " Hi there" and result.texts["assistant"]
    assert result.summary()["summary"]["first_visible_output_row"] == 0


def test_the_live_web_socket_serves_a_layout_b_model(smol_tokenizer):
    """The web page's protocol (``multistream serve``): rows stream while the question is fed."""
    import json

    from fastapi.testclient import TestClient

    from multistream.server.live import LiveConfig
    from multistream.server.protocol import PROTOCOL_VERSION
    from multistream.server.scheduler import SchedulerConfig
    from multistream.server.serve import build_app

    model = _tiny_chatml_model(1)
    live = LiveConfig(
        model_name="tiny-b", scheduler=SchedulerConfig(row_interval_s=0.0, gather_s=0.05), max_rows=8
    )
    app = build_app(model, smol_tokenizer, live)
    with (
        TestClient(app, base_url="http://127.0.0.1") as client,
        client.websocket_connect("ws://127.0.0.1/v1/live") as ws,
    ):
        ws.send_text(
            json.dumps({"type": "open", "version": PROTOCOL_VERSION, "sampling": {"temperature": 0.0}})
        )
        ready = ws.receive_json()
        assert ready["type"] == "ready" and [s["name"] for s in ready["streams"]] == [
            "system",
            "user",
            "assistant",
        ]
        ws.send_text(json.dumps({"type": "feed", "stream": "user", "text": "one two three four five six"}))
        ws.send_text(json.dumps({"type": "close", "stream": "user"}))
        events = []
        for _ in range(100):
            events.append(ws.receive_json())
            if events[-1]["type"] in ("stopped", "error"):
                break
    rows = [e for e in events if e["type"] == "row"]
    assert events[-1]["type"] == "stopped", events[-3:]
    assert rows and rows[0]["text"]["assistant"] is not None and rows[0]["text"]["user"] is not None
    user = "".join(r["text"]["user"] or "" for r in rows)  # the block closes with <|im_end|>
    assert (
        user.removesuffix("<|im_end|>").split() == ["one", "two", "three", "four", "five", "six"][: len(rows)]
    )


def test_the_terminal_chat_runs_a_layout_b_model(smol_tokenizer):
    """``multistream chat``: typed words are fed while the assistant already writes."""
    from multistream.tui import ChatApp

    app = ChatApp(_tiny_chatml_model(1), smol_tokenizer, SessionConfig(max_rows=12), row_interval_s=0.0)
    for key in "what is the ":
        app.key(key)
        app.tick()
    assert app.session.texts()["user"].split() == ["what", "is", "the"]
    assert app.state.texts["assistant"]  # writing before the question is complete
    for key in "capital\r":
        app.key(key)
    for _ in range(30):
        if app.tick() is None and app.session.stop is not None:
            break
    assert app.session.stop in ("max_rows", "end_token")
