"""The live decoding engine: exactness against full forwards, batching, inputs, stops, silence."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_SILENCE, TINY_VOCAB, make_tiny_base
from multistream import StreamSchema
from multistream.engine import Session, SessionBatch, SessionConfig, SessionStopped, tokenize_live
from multistream.fastpath import small_row_linear, small_row_matmul
from multistream.masks import attention_allowed, row_layout
from multistream.model import MultiStreamLM

SPEC = "user,think,assistant"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models decode fastest on one thread; on a shared CPU, two spin-waiting threads make
    # each matmul of a 32-wide model take milliseconds.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class WordTokenizer:
    """A deterministic tokenizer over the tiny vocabulary: one id per word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [8 + sum(map(ord, w)) % (TINY_VOCAB - 8) for w in text.split()]

    def decode(self, ids, **_) -> str:
        return "".join(f" w{i}" for i in ids)


TOK = WordTokenizer()


def tiny_model(arch: str = "llama", spec: str = SPEC, seed: int = 0) -> MultiStreamLM:
    base = make_tiny_base(arch, seed=seed)
    schema = StreamSchema(StreamSchema.parse(spec).streams, silence_id=TINY_SILENCE)
    model = MultiStreamLM.from_base(base, schema)
    # A non-zero stream embedding, so that stream ids matter in every test.
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    return model.eval()


def random_rows(R: int, C: int, seed: int, silence_share: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(4, TINY_VOCAB, (R, C), generator=g)
    silent = torch.rand(R, C, generator=g) < silence_share
    return rows.masked_fill(silent, TINY_SILENCE)


def config(**kw) -> SessionConfig:
    kw.setdefault("stop_silent_rows", 0)
    kw.setdefault("max_rows", 8)
    return SessionConfig.from_kwargs(**kw)


def run(model, prefill=None, user=(), cfg=None) -> Session:
    session = Session(model, TOK, cfg or config())
    if prefill is not None:
        session.prefill(prefill)
    if user:
        session.feed("user", list(user))
    session.close()
    list(session)
    return session


def full_forward_greedy(model: MultiStreamLM, ids: torch.Tensor, skip_silence: bool = False) -> torch.Tensor:
    """Greedy next-row tokens ``[R, C]`` from one full-sequence forward (no cache)."""
    R, C = ids.shape
    if not skip_silence:
        with torch.no_grad():
            return model(ids[None]).logits[0].argmax(-1)
    positions, streams = row_layout(torch.arange(R)[None], C)
    index = torch.arange(R * C)[None]
    valid = ids.reshape(1, -1) != TINY_SILENCE
    allowed = attention_allowed(positions, positions, index, index, k_valid=valid)
    with torch.no_grad():
        logits, _ = model.forward_tokens(ids.reshape(1, -1), positions, streams, allowed)
    return logits[0].view(R, C, -1).argmax(-1)


# -- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_prefill", [True, False])
def test_greedy_session_equals_full_forward(tiny_base, with_prefill):
    schema = StreamSchema(StreamSchema.parse(SPEC).streams, silence_id=TINY_SILENCE)
    model = MultiStreamLM.from_base(tiny_base, schema).eval()
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.5)
    prefill = random_rows(5, 3, seed=2) if with_prefill else None
    session = run(model, prefill, user=[11, 12, 13, 14], cfg=config(max_rows=10))
    ids = session.grid().ids
    assert ids.shape[0] == (5 if with_prefill else 0) + 10
    predicted = full_forward_greedy(model, ids)
    start = 5 if with_prefill else 1  # without prefill, row 0's generated cells are silence
    generated = schema.generated_indices
    assert torch.equal(ids[start:, generated], predicted[start - 1 : -1, generated])
    # Input cells hold the fed tokens, one per row, then silence.
    user = ids[(5 if with_prefill else 0) :, 0].tolist()
    assert user == [11, 12, 13, 14] + [TINY_SILENCE] * 6


def test_skip_silence_session_equals_full_forward_with_silence_masked():
    model = tiny_model("qwen3")
    prefill = random_rows(6, 3, seed=3, silence_share=0.5)
    session = run(model, prefill, user=[9, 10], cfg=config(skip_silence=True, max_rows=8))
    ids = session.grid().ids
    predicted = full_forward_greedy(model, ids, skip_silence=True)
    assert torch.equal(ids[6:, 1:], predicted[5:-1, 1:])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_silence_dropping_equals_silence_masking(arch):
    model = tiny_model(arch)
    prefill = random_rows(12, 3, seed=4, silence_share=0.6)
    masked = run(model, prefill, user=[20, 21, 22], cfg=config(skip_silence=True, max_rows=12))
    dropped = run(
        model, prefill, user=[20, 21, 22], cfg=config(skip_silence=True, drop_silence=True, max_rows=12)
    )
    assert masked.rows == dropped.rows
    # The dropped cache holds only visible keys, and fewer bytes.
    assert dropped.batch.cached_tokens() == masked.batch.cached_tokens()
    assert dropped.batch.cache_bytes() < masked.batch.cache_bytes()
    silent_cached = int((torch.tensor(masked.rows[:-1]) == TINY_SILENCE).sum())
    total_cached = (len(masked.rows) - 1) * 3
    assert dropped.batch.cached_tokens()[0] == total_cached - silent_cached


def test_drop_silence_requires_skip_silence():
    with pytest.raises(ValueError, match="skip_silence"):
        SessionConfig(drop_silence=True)


# -- batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("drop", [False, True])
def test_batched_sessions_equal_one_by_one(arch, drop):
    model = tiny_model(arch)
    cfg = config(max_rows=7, skip_silence=drop, drop_silence=drop)
    prefills = [random_rows(4, 3, 5, 0.3), None, random_rows(9, 3, 6, 0.3)]
    users = [[30, 31], [40, 41, 42, 43], []]
    alone = [run(model, p, u, cfg).rows for p, u in zip(prefills, users, strict=True)]
    batch = SessionBatch(model, TOK, 3, cfg)
    batch.prefill(prefills)
    for session, user in zip(batch.sessions, users, strict=True):
        session.feed("user", user)
        session.close()
    while any(s.stop is None for s in batch.sessions):
        batch.step()
    assert [s.rows for s in batch.sessions] == alone


def test_batched_sampling_with_seeds_equals_one_by_one():
    model = tiny_model("llama")
    prefills = [random_rows(3, 3, 7), random_rows(6, 3, 8)]
    batch = SessionBatch(model, TOK, 2, config(temperature=1.0, top_k=20, seed=100))
    batch.prefill(prefills)
    for s in batch.sessions:
        s.close()
    rows = [batch.step() for _ in range(6)]
    for b in range(2):
        alone = run(model, prefills[b], cfg=config(temperature=1.0, top_k=20, seed=100 + b, max_rows=6))
        assert [r[b].ids for r in rows] == [tuple(x) for x in alone.rows[len(prefills[b]) :]]


def test_batch_members_step_through_the_batch():
    batch = SessionBatch(tiny_model(), TOK, 2, config())
    with pytest.raises(RuntimeError, match="batch.step"):
        batch.sessions[0].step()


def test_stopped_sessions_yield_none_in_a_batch():
    batch = SessionBatch(tiny_model(), TOK, 2, config(max_rows=3))
    batch.prefill([random_rows(2, 3, 1), random_rows(2, 3, 2)])
    for s in batch.sessions:
        s.close()
    batch.step()
    batch.step()
    batch.sessions[1].state.stop = "max_rows"  # as if it had stopped earlier
    last = batch.step()
    assert last[0] is not None and last[0].stop == "max_rows" and last[1] is None
    with pytest.raises(SessionStopped):
        batch.step()


# -- inputs ------------------------------------------------------------------------------------


def test_feed_mid_generation_lands_in_next_row():
    session = Session(tiny_model(), TOK, config(max_rows=20))
    session.prefill(random_rows(3, 3, 9))
    first = [session.step() for _ in range(3)]
    assert all(r.ids[0] == TINY_SILENCE and r.text["user"] is None for r in first)
    session.feed("user", "hello there")
    ids = TOK.encode(" hello") + TOK.encode(" there")
    nxt = [session.step() for _ in range(3)]
    assert [r.ids[0] for r in nxt] == [*ids, TINY_SILENCE]
    assert nxt[0].text["user"] == TOK.decode([ids[0]])


def test_feed_from_another_thread_while_generating():
    session = Session(tiny_model(), TOK, config(max_rows=40))
    tokens = list(range(10, 30))
    done = threading.Event()

    def typist():
        for t in tokens:
            session.feed("user", [t])
        session.close("user")
        done.set()

    rows = []
    thread = threading.Thread(target=typist)
    thread.start()
    for row in session:
        rows.append(row)
    thread.join()
    fed = [r.ids[0] for r in rows if r.ids[0] != TINY_SILENCE]
    assert fed == tokens  # every token, in order, none twice


def test_async_iteration_with_feeding_task():
    session = Session(tiny_model(), TOK, config(max_rows=12))

    async def main():
        async def feeder():
            session.feed("user", [50, 51])
            await asyncio.sleep(0)
            session.close()

        task = asyncio.create_task(feeder())
        rows = [row async for row in session]
        await task
        return rows

    rows = asyncio.run(main())
    assert len(rows) == 12 and [r.ids[0] for r in rows if r.ids[0] != TINY_SILENCE] == [50, 51]


def test_realtime_clock_waits_for_arrival_times():
    clock = {"t": 0.0}
    session = Session(tiny_model(), TOK, config(clock="realtime", max_rows=10), now=lambda: clock["t"])
    session.feed("user", [60, 61, 62], at=1.0, interval=1.0)  # arrive at t = 1, 2, 3
    cells = []
    for t in (0.0, 0.5, 1.0, 1.2, 2.5, 2.6, 5.0, 5.0):
        clock["t"] = t
        cells.append(session.step().ids[0])
    S = TINY_SILENCE
    assert cells == [S, S, 60, S, 61, S, 62, S]


def test_lockstep_ignores_arrival_times():
    session = Session(tiny_model(), TOK, config(max_rows=4), now=lambda: 0.0)
    session.feed("user", [60, 61], at=100.0)
    assert [session.step().ids[0] for _ in range(3)] == [60, 61, TINY_SILENCE]


def test_feed_errors_name_the_problem():
    session = Session(tiny_model(), TOK, config())
    with pytest.raises(ValueError, match="generated, not an input"):
        session.feed("assistant", "hi")
    with pytest.raises(ValueError, match="unknown stream"):
        session.feed("nobody", "hi")
    session.close("user")
    with pytest.raises(ValueError, match="closed"):
        session.feed("user", "hi")


def test_tokenize_live_encodes_space_plus_word():
    assert tokenize_live(TOK, "  a  bc\nd ") == TOK.encode(" a") + TOK.encode(" bc") + TOK.encode(" d")


# -- silence penalty and stop rules ------------------------------------------------------------


def test_close_starts_the_penalty_ramp(monkeypatch):
    import multistream.engine.session as engine

    seen = []
    real = engine.sample_row

    def spy(*args, **kwargs):
        seen.append(kwargs["silence_penalty"][0].tolist())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "sample_row", spy)
    session = Session(tiny_model(), TOK, config(silence_penalty=2.0, think_silence_penalty=0.5, max_rows=12))
    session.prefill(random_rows(2, 3, 10))
    session.feed("user", [70, 71])
    for _ in range(4):
        session.step()
    session.close("user")
    for _ in range(7):
        session.step()
    assert session.state.inputs_closed_row == 2 + 4  # first row without input after close
    # Rows 2..5 sampled before close: no penalty. Then (user, think, assistant) ramps 1/5 .. 1.
    assert seen[:4] == [[0.0, 0.0, 0.0]] * 4
    ramp = [[0.0, 0.5 * k / 5, 2.0 * k / 5] for k in (1, 2, 3, 4, 5, 5, 5)]
    assert torch.allclose(torch.tensor(seen[4:]), torch.tensor(ramp))


def test_stop_max_rows_keeps_all_rows():
    session = run(tiny_model(), random_rows(3, 3, 11), cfg=config(max_rows=5))
    assert session.stop == "max_rows" and len(session.rows) == 3 + 5


def test_stop_after_silent_rows_once_inputs_closed():
    # Forcing every generated stream silent makes every row silent: the rule fires N rows after
    # the inputs close (not before: rows with input do not count).
    cfg = config(silent_streams=("think", "assistant"), stop_silent_rows=3, max_rows=50)
    session = run(tiny_model(), random_rows(2, 3, 12), user=[80, 81, 82], cfg=cfg)
    assert session.stop == "silence"
    assert session.state.inputs_closed_row == 5
    assert len(session.rows) == 5 + 3


def test_stop_on_end_token_per_stream():
    model = tiny_model()
    prefill = random_rows(3, 3, 13)
    free = run(model, prefill, cfg=config(max_rows=10))
    end_row = 3 + 4
    end_id = free.rows[end_row][2]
    first = next(r for r in range(3, len(free.rows)) if free.rows[r][2] == end_id)
    stopped = run(model, prefill, cfg=config(max_rows=10, end_tokens={"assistant": end_id}))
    assert stopped.stop == "end_token"
    assert stopped.rows == free.rows[: first + 1]  # the row with the end token is kept


def test_end_token_text_must_be_one_token():
    with pytest.raises(ValueError, match="one token"):
        Session(tiny_model(), TOK, config(end_tokens={"assistant": "two words"}))


def test_step_after_stop_raises_and_keeps_rows():
    session = run(tiny_model(), cfg=config(max_rows=2))
    with pytest.raises(SessionStopped, match="max_rows"):
        session.step()
    assert len(session.rows) == 2


def test_unknown_option_fails():
    with pytest.raises(TypeError, match="tempreature"):
        SessionConfig.from_kwargs(tempreature=1.0)


def test_summaries_are_attached_when_asked():
    session = Session(tiny_model(), TOK, config(summaries=True))
    session.prefill(random_rows(2, 3, 14))
    row = session.step()
    assert set(row.summaries) == {"think", "assistant"}
    assert row.summaries["assistant"]["top1_id"] == row.ids[2]


# -- high-level API ----------------------------------------------------------------------------


def test_generate_streams_returns_texts_and_grid():
    model = tiny_model()
    seen = []
    result = model.generate_streams(
        {"user": "a b c"}, TOK, max_rows=6, stop_silent_rows=0, on_row=seen.append
    )
    assert result.grid.num_rows == 6 == len(seen)
    assert result.texts["user"] == TOK.decode(TOK.encode("a b c"))
    assert result.inputs_closed_row == 3
    summary = result.summary()["summary"]
    assert summary["rows"] == 6 and set(summary["streams"]) == {"user", "think", "assistant"}


# -- small-row fast path -----------------------------------------------------------------------


def test_small_row_linear_matches_linear():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(300, 64, generator=g), torch.randn(300, generator=g)
    for rows in (1, 2, 3, 4):
        x = torch.randn(1, rows, 64, generator=g)
        assert torch.allclose(small_row_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_fastpath_is_reversible_and_gives_same_tokens():
    model = tiny_model("qwen2")
    prefill = random_rows(4, 3, 15)
    fast = run(model, prefill, user=[5, 6], cfg=config(fastpath=True, max_rows=8))
    slow = run(model, prefill, user=[5, 6], cfg=config(fastpath=False, max_rows=8))
    assert fast.rows == slow.rows
    linear = next(m for m in model.modules() if type(m) is torch.nn.Linear)
    with small_row_matmul(model):
        assert "forward" in linear.__dict__
    assert "forward" not in linear.__dict__


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_generate_json_contract(tmp_path, smollm2):
    from typer.testing import CliRunner

    from multistream.cli import app

    base, tok = smollm2
    schema = StreamSchema.parse("user,assistant")
    MultiStreamLM.from_base(base, schema, tok).save_pretrained(tmp_path / "m", tokenizer=tok, save_base=False)
    result = CliRunner().invoke(
        app,
        ["generate", "--model", str(tmp_path / "m"), "--input", "user=Hi there", "--max-rows", "4", "--json"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["row"] for line in lines[:-1]] == [0, 1, 2, 3]
    assert set(lines[0]["text"]) == {"user", "assistant"}
    summary = lines[-1]["summary"]
    assert summary["rows"] == 4 and summary["inputs_closed_row"] == 2
    assert summary["streams"]["user"] == " Hi there"
    # The stable keys stay; stop reason and timings were added (issue 14).
    assert set(summary) == {"streams", "rows", "first_visible_output_row", "inputs_closed_row"} | {
        "stop",
        "wall_s",
        "first_visible_output_s",
    }


# -- benchmark helpers (the benchmark itself runs via `multistream bench decode`) ---------------


def test_bench_realistic_grid_and_pairing():
    from multistream.benchmarks.decode import _paired_ms, _realistic_grid

    grid = _realistic_grid(100, TINY_SILENCE, TINY_VOCAB)
    share = float((grid == TINY_SILENCE).float().mean())
    assert 0.35 < share < 0.45
    calls = []
    a_ms, _, ratio = _paired_ms(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b"] * 4 and a_ms >= 0 and ratio > 0


def test_prefill_is_one_forward_and_each_step_one_more(monkeypatch):
    model = tiny_model()
    calls = []
    real = model.forward_tokens

    def counting(input_ids, *args, **kwargs):
        calls.append(tuple(input_ids.shape))
        return real(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward_tokens", counting)
    batch = SessionBatch(model, TOK, 2, config())
    batch.prefill([random_rows(7, 3, 16), random_rows(4, 3, 17)])
    assert calls == [(2, 7 * 3)]
    batch.step()  # first rows come from the prefill logits: no forward
    batch.step()
    assert calls == [(2, 21), (2, 3)]


def test_close_with_end_token_queues_eos_and_live_text_avoids_silence(smol_tokenizer):
    from conftest import make_tiny_base
    from multistream.data.tokenize import tokenize_live_text
    from multistream.model import MultiStreamLM
    from multistream.schema import StreamSchema

    # SmolLM2's tokenizer with a tiny model whose vocabulary covers it (49152 ids, 2 layers).
    base = make_tiny_base("llama")
    base.resize_token_embeddings(len(smol_tokenizer))
    schema = StreamSchema.parse("user,assistant").with_tokenizer(smol_tokenizer)
    model = MultiStreamLM.from_base(base, schema)
    session = Session(model, smol_tokenizer, SessionConfig(max_rows=12, close_with_end_token=True))
    text = "16 - 3 is"
    fed = session.feed("user", text)
    assert session.state.inputs["user"].queue[0][0] == tokenize_live_text(text, smol_tokenizer)[0]
    assert schema.silence_id not in [t for t, _ in session.state.inputs["user"].queue]
    session.close()
    rows = [session.step() for _ in range(fed + 1)]
    user = [row.ids[0] for row in rows]
    assert user == [
        *tokenize_live_text(text, smol_tokenizer, " -", schema.silence_id),
        smol_tokenizer.eos_token_id,
    ]


def test_cancel_keeps_rows_and_ends_only_that_session():
    from conftest import TINY_SILENCE, make_tiny_base
    from multistream.model import MultiStreamLM
    from multistream.schema import StreamSchema

    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE)
    model = MultiStreamLM.from_base(make_tiny_base("llama"), schema)
    batch = SessionBatch(model, TOK, 2, SessionConfig(max_rows=6, stop_silent_rows=0))
    first, second = batch.sessions
    batch.step()
    first.cancel("client")
    first.cancel("later reasons do not overwrite the first")
    rows = batch.step()
    assert first.stop == "client" and rows[0] is None and rows[1] is not None
    assert len(first.rows) == 1 and len(second.rows) == 2
    alone = Session(model, TOK)
    alone.cancel()
    with pytest.raises(SessionStopped, match="cancelled"):
        alone.step()


# -- continuous batching -----------------------------------------------------------------------


def _drive(batch, sessions, steps):
    for _ in range(steps):
        if all(s.stop is not None for s in batch.sessions):
            break
        batch.step()


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("drop", [False, True])
def test_session_joining_a_running_batch_equals_alone(arch, drop):
    model = tiny_model(arch)
    cfg = config(max_rows=9, skip_silence=drop, drop_silence=drop)
    batch = SessionBatch(model, TOK, 2, cfg)
    batch.prefill([random_rows(5, 3, 20, 0.3), random_rows(3, 3, 21, 0.3)])
    for s, user in zip(batch.sessions, ([50, 51, 52], [60]), strict=True):
        s.feed("user", user)
        s.close()
    _drive(batch, batch.sessions, 4)  # the batch runs; its caches hold 5+4 and 3+4 rows
    late = batch.add_session()
    late.feed("user", [70, 71, 72, 73])
    late.close()
    while late.stop is None:
        batch.step()
    assert late.rows == run(model, user=[70, 71, 72, 73], cfg=cfg).rows
    # The first members go on undisturbed, too.
    first = batch.sessions[0]
    while first.stop is None:
        batch.step()
    assert first.rows == run(model, random_rows(5, 3, 20, 0.3), [50, 51, 52], cfg).rows


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_session_whose_neighbour_left_equals_alone_and_slot_is_reused(arch):
    model = tiny_model(arch)
    cfg = config(max_rows=10)
    batch = SessionBatch(model, TOK, 2, cfg)
    leaving, staying = batch.sessions
    batch.prefill([random_rows(8, 3, 30), random_rows(2, 3, 31)])
    staying.feed("user", [80, 81, 82])
    for s in batch.sessions:
        s.close()
    _drive(batch, batch.sessions, 3)
    batch.remove(leaving)
    assert leaving.stop == "cancelled" and len(batch.sessions) == 1
    newcomer = batch.add_session()  # takes the freed slot: its old keys are gone
    assert newcomer.slot == leaving.slot and batch.backend.num_slots == 2
    newcomer.feed("user", [90, 91])
    newcomer.close()
    while staying.stop is None or newcomer.stop is None:
        batch.step()
    assert staying.rows == run(model, random_rows(2, 3, 31), [80, 81, 82], cfg).rows
    assert newcomer.rows == run(model, user=[90, 91], cfg=cfg).rows
    assert batch.cached_tokens()[1] == (len(newcomer.rows) - 1) * 3


def test_batch_grows_past_its_first_size_and_prefills_a_joiner():
    model = tiny_model()
    cfg = config(max_rows=6)
    batch = SessionBatch(model, TOK, 0, cfg)
    first = batch.add_session()
    first.close()
    batch.step()
    second = batch.add_session()
    batch.prefill([None, random_rows(4, 3, 40)])
    second.close()
    while second.stop is None:
        batch.step()
    assert batch.backend.num_slots == 2
    assert second.rows == run(model, random_rows(4, 3, 40), cfg=cfg).rows


def test_backend_cache_does_not_copy_per_step():
    """Appends write in place: the buffer is reallocated only when it runs out of columns."""
    model = tiny_model()
    batch = SessionBatch(model, TOK, 1, config(max_rows=40))
    batch.prefill([random_rows(4, 3, 41)])
    batch.sessions[0].close()
    batch.step()
    layer = batch.backend.cache.layers[0]
    pointer = layer.keys.data_ptr()
    for _ in range(20):
        batch.step()
    assert layer.keys.data_ptr() == pointer


def test_fast_path_is_used_only_where_it_measured_faster(monkeypatch):
    import multistream.fastpath as fastpath

    model = tiny_model()
    timings = []

    def fake_best(fn, repeats):
        timings.append(fn)
        return 1.0 if len(timings) % 2 else 5.0  # F.linear 1 ms, fast path 5 ms: not worth it

    monkeypatch.setattr(fastpath, "_best_ms", fake_best)
    monkeypatch.setattr(fastpath, "_PAYS", {})
    assert fastpath.fast_path_pays(model, 3) is False
    measured = len(timings)
    assert measured >= 2 and fastpath.fast_path_pays(model, 3) is False and len(timings) == measured  # cached
    batch = SessionBatch(model, TOK, 1, config(max_rows=3))
    batch.sessions[0].close()
    patched = []
    real = model.forward_tokens

    def spy(*args, **kwargs):
        patched.append(any("forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward_tokens", spy)
    batch.step()
    batch.step()
    assert patched == [False]  # the slower kernel stays off
    monkeypatch.setattr(fastpath, "_PAYS", {(id(model), 3, torch.get_num_threads()): True})
    batch.step()
    assert patched == [False, True]
    assert not any("forward" in m.__dict__ for m in model.modules())  # restored after the forward


@pytest.mark.parametrize("drop", [False, True])
def test_chunked_prefill_equals_one_forward(drop):
    model = tiny_model("qwen2")
    cfg = config(max_rows=6, skip_silence=drop, drop_silence=drop)
    prefills = [random_rows(9, 3, 50, 0.3), random_rows(4, 3, 51, 0.3)]

    def decode(chunk: int | None):
        batch = SessionBatch(model, TOK, 2, cfg)
        if chunk is not None:
            batch.backend.prefill_chunk = chunk  # 27 tokens in pieces of 5: rows split across pieces
        batch.prefill(prefills)
        for s in batch.sessions:
            s.close()
        while any(s.stop is None for s in batch.sessions):
            batch.step()
        return [s.rows for s in batch.sessions], batch.cached_tokens()

    assert decode(5) == decode(None)


def test_free_slots_at_the_end_are_not_forwarded(monkeypatch):
    model = tiny_model()
    batch = SessionBatch(model, TOK, 3, config(max_rows=6))
    for s in batch.sessions:
        s.close()
    batch.step()
    batch.step()
    batch.remove(batch.sessions[2])
    shapes = []
    real = model.forward_tokens

    def spy(input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return real(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward_tokens", spy)
    batch.step()
    assert shapes == [(2, 3)]
    alone = run(model, cfg=config(max_rows=6))
    while batch.sessions[0].stop is None:
        batch.step()
    assert batch.sessions[0].rows == alone.rows


def test_grouped_sdpa_equals_transformers_sdpa_with_repeated_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from multistream.engine.hf_backend import grouped_sdpa

    g = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    query = torch.randn(2, 6, 3, 8, generator=g)  # 6 query heads share 2 key/value heads
    key, value = torch.randn(2, 2, 20, 8, generator=g), torch.randn(2, 2, 20, 8, generator=g)
    allowed = torch.rand(2, 1, 3, 20, generator=g) > 0.3
    allowed[..., -3:] |= torch.eye(3, dtype=torch.bool)  # each query sees itself
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours, _ = grouped_sdpa(module, query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (2, 3, 6, 8)
    assert torch.allclose(ours, theirs, atol=1e-6)
