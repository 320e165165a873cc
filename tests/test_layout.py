"""The layout package: Layout B's y-rule against a brute-force reference, exactness of dropped
cells in both layouts, LongCE against a hand computation, logits_where, config versions."""

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_SILENCE, TINY_VOCAB, make_tiny_base
from multistream.layout import (
    IGNORE_INDEX,
    BlocksExample,
    BlocksLayout,
    GridLayout,
    LayoutError,
    LongCEConfig,
    blocks_schema,
    get_layout,
)
from multistream.layout.blocks import BLOCK_PAD
from multistream.masks import pad_grids
from multistream.model import CONFIG_NAME, MultiStreamConfig, MultiStreamLM
from multistream.schema import StreamSchema

PAD = 0


# -- brute-force y-rule, written token by token from spec §2.5 (released processor) -----------


def brute_force_blocks(example: BlocksExample, drop: bool):
    """(ids, y, stream, labels, visible[S][S]) the way the released processor builds them."""
    heads = example.heads
    if not drop:
        longest = max(len(h) for h in heads)
        heads = [h + [PAD] * (longest - len(h)) for h in heads]
    blocks = [example.system, example.user, *heads]
    real = [len(example.system), len(example.user), *[len(h) for h in example.heads]]
    ids, ys, streams, parts = [], [], [], []
    y0 = len(example.system)
    for b, block in enumerate(blocks):
        for i, tok in enumerate(block):
            ids.append(tok)
            streams.append(b)
            ys.append(i if b == 0 else y0 + i)
            parts.append("pad" if i >= real[b] else "end" if i == real[b] - 1 else "content")
    S = len(ids)
    inc, allow = example.include_im_end_in_cross_channel, example.allow_assistant_cross_channel
    q_ok = [parts[i] != "pad" and (inc or parts[i] != "end") for i in range(S)]
    k_ok = [q_ok[i] and (allow or streams[i] < 2) for i in range(S)]
    vis = [[False] * S for _ in range(S)]
    for q in range(S):
        for j in range(S):
            vis[q][j] = (
                j == q or (streams[j] == streams[q] and j <= q) or (q_ok[q] and k_ok[j] and ys[j] < ys[q])
            )
    unshifted = [IGNORE_INDEX] * S
    start = len(example.system) + len(example.user)
    for h, head in enumerate(heads):
        for i in range(example.targets_from[h], real[2 + h]):
            unshifted[start + i] = head[i]
        start += len(head)
    labels = [*unshifted[1:], IGNORE_INDEX]
    return ids, ys, streams, labels, torch.tensor(vis)


@st.composite
def blocks_examples(draw, heads=None):
    H = heads if heads is not None else draw(st.integers(1, 3))
    tok = st.integers(4, TINY_VOCAB - 1)
    system = draw(st.lists(tok, min_size=2, max_size=5))
    user = draw(st.lists(tok, min_size=2, max_size=8))
    head_ids = [draw(st.lists(tok, min_size=2, max_size=8)) for _ in range(H)]
    targets_from = [draw(st.integers(1, len(h) - 1)) for h in head_ids]
    return BlocksExample(
        system,
        user,
        head_ids,
        targets_from,
        include_im_end_in_cross_channel=draw(st.booleans()),
        allow_assistant_cross_channel=draw(st.booleans()),
    )


def layout_for(example: BlocksExample, drop: bool = True) -> BlocksLayout:
    return BlocksLayout(
        example.include_im_end_in_cross_channel, example.allow_assistant_cross_channel, drop_invisible=drop
    )


def mask_of(layout: BlocksLayout, batch, b: int = 0) -> torch.Tensor:
    T = batch["input_ids"].shape[1]
    index = torch.arange(T)[None].expand(batch["input_ids"].shape[0], -1)
    seg = batch.get("segment_ids")
    q = layout.cell_index(batch["position_ids"], batch["stream_ids"], index, batch["block_part"], False, seg)
    k = layout.cell_index(
        batch["position_ids"],
        batch["stream_ids"],
        index,
        batch["block_part"],
        True,
        seg,
        batch["attention_mask"].bool(),
    )
    return layout.allowed(q, k)[b, 0]


@settings(max_examples=80, deadline=None)
@given(example=blocks_examples(), drop=st.booleans())
def test_blocks_mask_positions_and_labels_equal_brute_force(example, drop):
    layout = layout_for(example, drop)
    batch = layout.collate([example], pad_id=PAD)
    ids, ys, streams, labels, vis = brute_force_blocks(example, drop)
    assert batch["input_ids"][0].tolist() == ids
    assert batch["position_ids"][0].tolist() == ys
    assert batch["stream_ids"][0].tolist() == streams
    assert batch["labels"][0].tolist() == labels
    assert torch.equal(mask_of(layout, batch), vis)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("inc", [True, False])
@pytest.mark.parametrize("allow", [True, False])
def test_blocks_mask_h1_h2_with_and_without_flags(heads, inc, allow):
    g = torch.Generator().manual_seed(heads)
    ex = BlocksExample(
        [1, 9, 5, 2],
        [1, 4, 7, 8, 9, 2],
        [[*torch.randint(4, 90, (n,), generator=g).tolist(), 2] for n in (5, 7)[:heads]],
        [2] * heads,
        include_im_end_in_cross_channel=inc,
        allow_assistant_cross_channel=allow,
    )
    layout = layout_for(ex)
    batch = layout.collate([ex], pad_id=PAD)
    assert torch.equal(mask_of(layout, batch), brute_force_blocks(ex, True)[4])


def test_packed_and_padded_blocks_equal_one_by_one():
    exs = [BlocksExample([1, 5, 2], [1, 6, 7, 2], [[1, 8, 9, 2]] * h, [1] * h) for h in (2, 2)]
    exs[1] = BlocksExample([1, 5, 6, 2], [1, 7, 2], [[1, 8, 2], [1, 9, 9, 9, 2]], [1, 2])
    layout = BlocksLayout()
    packed = layout.collate(exs, PAD, packing=True)
    padded = layout.collate(exs, PAD)
    m_packed = mask_of(layout, packed)
    start = 0
    for b, ex in enumerate(exs):
        alone = mask_of(layout, layout.collate([ex], PAD))
        n = alone.shape[0]
        assert torch.equal(m_packed[start : start + n, start : start + n], alone)
        assert not m_packed[start : start + n, :start].any()
        assert torch.equal(mask_of(layout, padded, b)[:n, :n], alone)
        start += n


def test_example_flags_must_match_the_layout():
    ex = BlocksExample([1, 2], [1, 2], [[1, 5, 2]], [1], include_im_end_in_cross_channel=False)
    with pytest.raises(LayoutError, match="include_im_end_in_cross_channel"):
        BlocksLayout().collate([ex], PAD)


# -- models ----------------------------------------------------------------------------------


def blocks_model(base, heads=2, **options):
    model = MultiStreamLM.from_base(
        base, blocks_schema(heads, silence_id=TINY_SILENCE), layout="blocks", layout_options=options
    )
    torch.manual_seed(1)
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.3)
    return model


def example(heads=2, seed=0, **flags):
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(4, TINY_VOCAB, (n,), generator=g).tolist()  # noqa: E731
    lengths = (9, 6, 11)[:heads]
    return BlocksExample([1, *r(3), 2], [1, *r(8), 2], [[1, *r(n), 2] for n in lengths], [2] * heads, **flags)


@torch.no_grad()
def test_blocks_system_block_alone_equals_the_base_model(tiny_base):
    # One stream (the system block, stream 0, positions 0..n-1, causal) is the base model.
    model = MultiStreamLM.from_base(tiny_base, blocks_schema(1, TINY_SILENCE), layout="blocks")
    ex = example(heads=1)
    batch = BlocksLayout().collate([ex], PAD)
    n = len(ex.system)
    got = model(**batch).logits[0, :n]
    torch.testing.assert_close(got, tiny_base(torch.tensor([ex.system])).logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@torch.no_grad()
def test_blocks_no_future_leakage(heads):
    model = blocks_model(make_tiny_base("llama"), heads)
    ex = example(heads)
    layout = BlocksLayout()
    batch = layout.collate([ex], PAD)
    before = model(**batch).logits[0]
    y0 = len(ex.system)
    for k in range(1, len(ex.user) - 1):  # change user token k (at step y0 + k)
        edited = BlocksExample(ex.system, list(ex.user), ex.heads, ex.targets_from)
        edited.user[k] = (edited.user[k] + 1) % TINY_VOCAB
        after = model(**layout.collate([edited], PAD)).logits[0]
        y = y0 + k
        heads_upto = (batch["stream_ids"][0] >= 2) & (batch["position_ids"][0] <= y)
        torch.testing.assert_close(after[heads_upto], before[heads_upto], atol=0, rtol=0)
        later = (batch["stream_ids"][0] >= 2) & (batch["position_ids"][0] == y + 1)
        assert not torch.allclose(after[later], before[later])


@pytest.mark.parametrize("inc", [True, False])
@pytest.mark.parametrize("allow", [True, False])
def test_blocks_dropping_trailing_pad_changes_no_logit_and_no_loss(tiny_base, inc, allow):
    flags = dict(include_im_end_in_cross_channel=inc, allow_assistant_cross_channel=allow)
    model = blocks_model(tiny_base, 2, **flags)
    exs = [example(2, seed=s, **flags) for s in range(2)]
    dropped = BlocksLayout(inc, allow, drop_invisible=True).collate(exs, PAD)
    padded = BlocksLayout(inc, allow, drop_invisible=False).collate(exs, PAD)
    assert padded["input_ids"].shape[1] > dropped["input_ids"].shape[1]
    a, b = model(**dropped), model(**padded)
    for i in range(2):
        keep = (padded["block_part"][i] != BLOCK_PAD) & padded["attention_mask"][i].bool()
        n = int(keep.sum())
        torch.testing.assert_close(b.logits[i][keep], a.logits[i][:n], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)


def test_grid_dropping_hidden_silence_changes_no_logit_and_no_loss(tiny_base):
    schema = StreamSchema(StreamSchema.parse("user,think,assistant").streams, silence_id=TINY_SILENCE)
    g = torch.Generator().manual_seed(0)
    grids = [torch.randint(4, TINY_VOCAB, (n, 3), generator=g) for n in (7, 5)]
    for grid in grids:  # silence in every stream, user stream mostly silent
        grid[2:, 0] = TINY_SILENCE
        grid[1, 1] = grid[3, 2] = TINY_SILENCE
    model = MultiStreamLM.from_base(tiny_base, schema, layout_options={"hide_silence": True})
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.3)
    assert model.config.hides_silence
    generated = model.generated_streams
    kept = GridLayout(hide_silence=True, drop_invisible=True)
    full = GridLayout(hide_silence=True, drop_invisible=False)
    features = [{"input_ids": grid} for grid in grids]
    for packing in (False, True):
        flat = kept.collate(
            features, TINY_SILENCE, generated=generated, silence_id=TINY_SILENCE, packing=packing
        )
        grid = full.collate(
            features, TINY_SILENCE, generated=generated, silence_id=TINY_SILENCE, packing=packing
        )
        total = sum(x.numel() for x in grids)
        assert int(flat["attention_mask"].sum()) < total  # cells were dropped
        a, b = model(**flat), model(**grid)
        torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)
        # The same cells, compared one by one through their (example, row, stream) coordinates.
        rows, C = grid["input_ids"].shape[1], 3
        seg = flat.get("segment_ids")
        for e in range(len(grids)):
            sel = (seg[0] == e) if packing else torch.ones_like(flat["input_ids"][e], dtype=torch.bool)
            bi = 0 if packing else e
            sel = sel & flat["attention_mask"][bi].bool()
            r, c = flat["position_ids"][bi][sel], flat["stream_ids"][bi][sel]
            offset = sum(x.shape[0] for x in grids[:e]) if packing else 0
            ref = b.logits[bi].reshape(rows, C, -1)[r + offset, c]
            torch.testing.assert_close(a.logits[bi][sel], ref, atol=1e-5, rtol=0)
    # Without hidden silence nothing may be dropped: the grid layout stays a grid.
    assert GridLayout().collate(features, TINY_SILENCE)["input_ids"].dim() == 3


def test_logits_where_gives_the_same_loss_and_logits(tiny_base):
    schema = StreamSchema(StreamSchema.parse("user,think,assistant").streams, silence_id=TINY_SILENCE)
    model = MultiStreamLM.from_base(tiny_base, schema)
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.3)
    ids, mask = pad_grids([torch.randint(4, TINY_VOCAB, (n, 3)) for n in (6, 4)], TINY_SILENCE)
    labels, _ = pad_grids([ids[0, :6], ids[1, :4]], IGNORE_INDEX)
    full = model(ids, attention_mask=mask, labels=labels)
    part = model(ids, attention_mask=mask, labels=labels, logits_where=True)
    from multistream.masks import next_row_targets

    where = next_row_targets(labels, model.generated_streams, mask) != IGNORE_INDEX
    assert part.logits.shape == (int(where.sum()), TINY_VOCAB)
    torch.testing.assert_close(part.logits, full.logits[where], atol=1e-5, rtol=0)
    torch.testing.assert_close(part.loss, full.loss, atol=1e-6, rtol=0)
    bmodel = blocks_model(tiny_base, 2)
    batch = BlocksLayout().collate([example(2), example(2, seed=3)], PAD)
    a, b = bmodel(**batch), bmodel(**batch, logits_where=True)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.logits, a.logits[batch["labels"] != IGNORE_INDEX], atol=1e-5, rtol=0)


# -- LongCE ----------------------------------------------------------------------------------


def self_only_mask(batch):
    """Brute force: a query sees the system block, its own block's past, and itself."""
    s, y = batch["stream_ids"][0].tolist(), batch["position_ids"][0].tolist()
    T = len(s)
    m = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            m[q, k] = k == q or (y[k] < y[q] and (s[k] == s[q] or s[k] == 0))
    return m[None, None]


@pytest.mark.parametrize("balance", ["head", "token"])
@pytest.mark.parametrize("positive_only", [True, False])
def test_longce_equals_a_hand_computation_and_has_a_gradient(balance, positive_only):
    cfg = LongCEConfig(enabled=True, gamma=2.0, positive_only=positive_only, balance=balance)
    model = blocks_model(make_tiny_base("llama"), 2)
    batch = BlocksLayout().collate([example(2, seed=5)], PAD)
    loss = model(**batch, longce=cfg).loss
    # By hand: full and self-only logits, weights per head, then the balance.
    labels = batch["labels"][0]
    sup = labels != IGNORE_INDEX
    full_logits = model(**batch).logits[0][sup]
    args = (batch["input_ids"], batch["position_ids"], batch["stream_ids"], self_only_mask(batch))
    with torch.no_grad():
        self_logits = model.forward_tokens(*args)[0][0][sup]
    tgt = labels[sup]
    ce = F.cross_entropy(full_logits, tgt, reduction="none")
    lsd = -ce.detach() - torch.log_softmax(self_logits, -1)[torch.arange(len(tgt)), tgt]
    if positive_only:
        lsd = lsd.clamp_min(0)
    w = lsd.exp().clamp_max(2.0)
    heads = batch["stream_ids"][0][sup]
    expected_terms = []
    for h in (2, 3):
        wh = w[heads == h] / w[heads == h].mean()
        expected_terms.append((wh, ce[heads == h]))
    if balance == "token":
        expected = sum((wh * c).sum() for wh, c in expected_terms) / len(tgt)
    else:
        expected = torch.stack([(wh * c).mean() for wh, c in expected_terms]).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    (g_loss,) = torch.autograd.grad(loss, model.stream_embedding.weight)
    (g_hand,) = torch.autograd.grad(expected, model.stream_embedding.weight)
    assert g_loss.abs().sum() > 0  # not detached
    torch.testing.assert_close(g_loss, g_hand, atol=1e-5, rtol=1e-4)


def test_longce_schedule_is_deterministic():
    sec5 = LongCEConfig(enabled=True)
    assert sec5.probability_at(100) == 0.0 and sec5.probability_at(1100) == 0.25
    assert sec5.probability_at(10_000) == 0.5
    draws = [sec5.active(s, seed=3) for s in range(2000, 2400)]
    assert draws == [sec5.active(s, seed=3) for s in range(2000, 2400)]
    assert 100 < sum(draws) < 300
    sec6 = LongCEConfig.from_value(
        {
            "gamma": 3.0,
            "positive_only": False,
            "balance": "token",
            "probability": 1.0,
            "start_step": 0,
            "ramp_steps": 0,
        }
    )
    assert all(sec6.active(s) for s in range(5))
    assert not LongCEConfig().active(5000)
    with pytest.raises(ValueError, match="unknown options"):
        LongCEConfig.from_value({"gama": 2})


# -- config ----------------------------------------------------------------------------------


def test_layout_registry_and_errors():
    assert get_layout("grid") == GridLayout()
    assert (
        get_layout("blocks", allow_assistant_cross_channel=False).options()["allow_assistant_cross_channel"]
        is False
    )
    with pytest.raises(LayoutError, match="choose one of blocks, grid"):
        get_layout("spiral")
    with pytest.raises(LayoutError, match="bad options"):
        get_layout("blocks", colour="red")


@torch.no_grad()
def test_config_records_the_layout_and_version_1_directories_still_load(tmp_path):
    base = make_tiny_base("llama")
    model = blocks_model(base, 2, allow_assistant_cross_channel=False)
    model.save_pretrained(tmp_path / "b")
    record = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())
    assert record["format_version"] == 2 and record["layout"] == "blocks"
    loaded = MultiStreamLM.from_pretrained(tmp_path / "b")
    assert loaded.config.get_layout() == BlocksLayout(allow_assistant_cross_channel=False)
    batch = BlocksLayout(allow_assistant_cross_channel=False).collate(
        [example(2, allow_assistant_cross_channel=False)], PAD
    )
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    # A first-release directory: format_version 1, no layout fields -> Layout A.
    grid_model = MultiStreamLM.from_base(
        make_tiny_base("llama"),
        StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE),
    )
    grid_model.save_pretrained(tmp_path / "v1")
    path = tmp_path / "v1" / CONFIG_NAME
    record = json.loads(path.read_text())
    record["format_version"] = 1
    del record["layout"], record["layout_options"]
    path.write_text(json.dumps(record))
    old = MultiStreamLM.from_pretrained(tmp_path / "v1")
    assert old.config.layout == "grid" and not old.config.hides_silence
    record["format_version"] = 3
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="format_version 3 is not supported"):
        MultiStreamLM.from_pretrained(tmp_path / "v1")


def test_blocks_schema_names_and_roles():
    assert blocks_schema(1, 0).names == ["system", "user", "assistant"]
    two = blocks_schema(2, 0, "think,assistant")
    assert two.names == ["system", "user", "think", "assistant"]
    assert [s.role.value for s in two.streams] == ["input", "input", "think", "output"]
    assert blocks_schema(2, 0).generated_indices == [2, 3]
    with pytest.raises(LayoutError, match="one name per head"):
        blocks_schema(2, 0, "assistant")
    with pytest.raises(LayoutError, match="input stream"):
        blocks_schema(2, 0, "assistant,user2:input")


def test_a_model_trained_with_hidden_silence_decodes_with_it_hidden():
    """config.hides_silence makes the engine hide silence keys without being told."""
    from test_engine import config, full_forward_greedy, random_rows, run, tiny_model

    plain = tiny_model("llama")
    hidden = MultiStreamLM(
        plain.base_model, MultiStreamConfig(plain.schema, layout_options={"hide_silence": True})
    )
    hidden.stream_embedding.load_state_dict(plain.stream_embedding.state_dict())
    hidden.eval()
    prefill = random_rows(6, 3, seed=3, silence_share=0.5)
    told = run(plain, prefill, user=[9, 10], cfg=config(skip_silence=True, max_rows=8))
    recorded = run(hidden, prefill, user=[9, 10], cfg=config(max_rows=8))
    assert (
        recorded.batch.planner.skip_silence
        and not run(plain, prefill, cfg=config()).batch.planner.skip_silence
    )
    assert recorded.rows == told.rows
    ids = recorded.grid().ids
    assert torch.equal(ids[6:, 1:], full_forward_greedy(plain, ids, skip_silence=True)[5:-1, 1:])
