"""The base-as-judge schedule (multistream.data.selfjudge) on a tiny random model and hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_SILENCE, make_tiny_base
from multistream.data.convert import GUARANTEES
from multistream.data.selfjudge import (
    JudgedOutput,
    SelfJudge,
    commit_logprobs,
    cut_rows,
    earliest_cut_index,
    judged_grid,
)
from multistream.grid import StreamGrid
from multistream.schema import StreamSchema

EOS = 2


class IdTokenizer:
    """Round-trips ids through text ("w17" <-> 17); no chat template, so prompts are the raw ids."""

    eos_token_id = EOS
    pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(f"w{i}" for i in ids)


SCHEMA = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE)


def _grid(user: list[int], out: list[tuple[int, int]], answer_row: int) -> StreamGrid:
    """user tokens from row 0 then EOS; output (row, id) cells; silence elsewhere."""
    rows = max(len(user) + 1, max(r for r, _ in out) + 1)
    ids = torch.full((rows, 2), TINY_SILENCE)
    ids[: len(user), 0] = torch.tensor(user)
    ids[len(user), 0] = EOS
    for r, t in out:
        ids[r, 1] = t
    return StreamGrid(ids, SCHEMA, {"id": "x", "policy": "wait-k", "answer_row": answer_row})


def test_cut_rows_strides_and_always_ends_with_the_whole_input():
    assert cut_rows(5, 24) == [0, 1, 2, 3, 4, 5]
    assert cut_rows(100, 10) == [*range(0, 100, 10), 100]
    assert cut_rows(0, 4) == [0]
    with pytest.raises(ValueError, match="max_cuts"):
        cut_rows(5, 0)


def test_earliest_cut_needs_the_margin_at_every_later_cut_and_is_monotone():
    # cuts x tokens; the last row is the whole input.
    lp = torch.tensor(
        [
            [-0.1, -9.0, -0.2, -5.0],
            [-0.1, -9.0, -3.0, -5.0],  # token 2 drops out of the margin again here
            [-0.1, -0.5, -0.2, -0.3],
            [-0.1, -0.4, -0.2, -0.2],
        ]
    )
    first = earliest_cut_index(lp, margin=1.0).tolist()
    # token 0: from cut 0; token 1: from cut 2; token 2: cut 0 is ok but cut 1 is not -> 2;
    # token 3: from cut 2, and never before token 2.
    assert first == [0, 2, 2, 2]
    # A token allowed early that follows a late one waits for it (monotone).
    lp2 = torch.tensor([[-9.0, -0.1], [-0.1, -0.1]])
    assert earliest_cut_index(lp2, margin=1.0).tolist() == [1, 1]
    # An infinite margin allows everything from the first cut; zero margin needs the full score.
    assert earliest_cut_index(lp, margin=math.inf).tolist() == [0, 0, 0, 0]
    assert earliest_cut_index(lp, margin=0.0).tolist() == [0, 3, 3, 3]


def test_batched_left_padded_logprobs_equal_one_prompt_at_a_time():
    model = make_tiny_base("llama")
    prompts = [[5, 6, 7, 8, 9], [5], [10, 11, 12]]
    answer = [20, 21, 22, 2]
    batched = commit_logprobs(model, prompts, answer, pad_id=0, batch_size=2)
    assert batched.shape == (3, 4)
    for i, p in enumerate(prompts):
        ids = torch.tensor([[*p, *answer]])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : -1], -1)
        single = logp.gather(-1, torch.tensor(answer)[:, None])[:, 0]
        torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=1e-5)


def test_judge_scores_every_cut_of_a_real_model_and_the_last_cut_is_the_input_end():
    model = make_tiny_base("llama")
    user = [11, 12, 13, 14, 15, 16]  # rows 0-5, EOS at row 6, input end E = 7
    out = [(2, 40), (3, 41), (7, 50), (8, 51), (9, 52), (10, EOS)]  # bridging 40 41, answer 50.. at E
    grid = _grid(user, out, answer_row=7)
    judge = SelfJudge(model, IdTokenizer(), margin=1.0, max_cuts=4)
    verdict = judge.judge(grid)
    assert verdict.cuts == [0, 2, 4, 6, 7]
    assert verdict.rows == [2, 3, 7, 8, 9, 10] and verdict.ids == [40, 41, 50, 51, 52, EOS]
    assert verdict.answer_start == 2
    assert verdict.logprobs.shape == (5, 6)
    assert all(e in verdict.cuts for e in verdict.earliest)
    assert verdict.earliest == sorted(verdict.earliest)
    # The prompt of a cut is the input read so far (EOS and silence dropped).
    assert judge.prompt_ids(grid, 3) == [11, 12, 13] and judge.prompt_ids(grid, 99) == user
    # With an infinite margin every token is committed from the first cut.
    assert SelfJudge(model, IdTokenizer(), margin=math.inf, max_cuts=4).judge(grid).earliest == [0] * 6


def test_no_earlier_keeps_an_answer_that_already_waits_and_pushes_one_that_does_not():
    grid = _grid([11, 12, 13, 14, 15, 16], [(2, 40), (3, 41), (7, 50), (8, 51), (9, 52), (10, EOS)], 7)
    rows, ids = [2, 3, 7, 8, 9, 10], [40, 41, 50, 51, 52, EOS]
    early = JudgedOutput(rows, ids, [0, 0, 2, 4, 6, 7], 2, [0, 2, 4, 6, 7], torch.zeros(5, 6))
    same = judged_grid(grid, early, mode="no-earlier")
    assert torch.equal(same.ids, grid.ids)
    assert same.meta["self_judge"]["moved"] == 0 and same.meta["policy"] == "wait-k"
    # The judge says token 51 needs the cut at row 9: it and everything after it move later.
    late = JudgedOutput(rows, ids, [0, 0, 2, 9, 9, 9], 2, [0, 2, 4, 6, 7, 9], torch.zeros(6, 6))
    pushed = judged_grid(grid, late, mode="no-earlier")
    out = pushed.ids[:, 1]
    assert out[[2, 3, 7, 9, 10, 11]].tolist() == ids and (out[[8]] == TINY_SILENCE).all()
    assert pushed.num_rows == 12 and pushed.meta["self_judge"]["moved"] == 3
    assert torch.equal(pushed.ids[:7, 0], grid.ids[:7, 0])  # the input is untouched


def test_earliest_mode_moves_committed_content_before_the_input_end_after_the_bridging():
    grid = _grid([11, 12, 13, 14, 15, 16], [(2, 40), (3, 41), (7, 50), (8, 51), (9, 52), (10, EOS)], 7)
    rows, ids = [2, 3, 7, 8, 9, 10], [40, 41, 50, 51, 52, EOS]
    verdict = JudgedOutput(rows, ids, [0, 0, 2, 2, 7, 7], 2, [0, 2, 4, 6, 7], torch.zeros(5, 6))
    moved = judged_grid(grid, verdict, mode="earliest")
    out = moved.ids[:, 1]
    # 50 and 51 go right after the bridging (rows 4, 5); 52 waits for the input end (row 7).
    assert out[[2, 3, 4, 5, 7, 8]].tolist() == ids
    assert moved.meta["answer_row"] == 4 and moved.meta["policy"] == "self-judged"
    assert "self-judged" in GUARANTEES
    with pytest.raises(ValueError, match="mode"):
        judged_grid(grid, verdict, mode="sometime")
