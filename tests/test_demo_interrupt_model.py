"""The shipped `demo-interrupt` model changes course when the user corrects the request while the
answer streams (issue 12 item 4). Offline, greedy, on a held-out interruption: its parameters
(the dish and the new number of people) were never used in training."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

# interrupt-98 of evaluation/data/interrupt_heldout.jsonl ("fruit salad" for two is held out)
ITEM = {
    "id": "test",
    "request": "I want to cook fruit salad for 8 people. What do I need?",
    "correction": "Hmm, no, for two people, please.",
    "after_tokens": 8,
    "check": {"type": "contains", "must": [["2 apples"], ["2 bananas"], ["200 g grapes"]], "must_not": []},
}


@pytest.fixture(scope="module")
def runner():
    import torch

    from multistream.evaluation.runners import MultiStreamRunner
    from multistream.loading import resolve_multistream

    torch.set_num_threads(1)
    model, tok = resolve_multistream("demo-interrupt")
    return MultiStreamRunner(model, tok, max_new_tokens=96)


def test_demo_interrupt_changes_course_after_a_correction_mid_answer(runner) -> None:
    from multistream.evaluation.interrupt import honours, run_multistream

    out = run_multistream(runner, ITEM, max_rows=120)
    # It was answering the request as asked when the correction came ...
    assert "8" in out["before"] and not out["ended_before_correction"], out
    # ... and what it writes once it has read the correction is for two people.
    assert out["honoured"], out
    assert "8 apples" not in out["post"] and honours(ITEM["check"], out["post"])
    assert out["stop"] in ("end_token", "silence"), out  # and it stops by itself


def test_demo_interrupt_without_a_correction_just_answers(runner) -> None:
    from multistream.engine import Session

    session = Session(runner.model, runner.tokenizer, runner.session_config(80))
    session.feed("user", "Count from 3 to 9.")
    session.feed("user", [runner.tokenizer.eos_token_id])
    session.close("user", end_token=False)
    rows = list(session)
    text = "".join(r.text["assistant"] or "" for r in rows)
    assert "3, 4, 5, 6, 7, 8, 9" in text, text
    assert session.stop in ("end_token", "silence")
