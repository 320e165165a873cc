"""The interruption checks (issue 12 item 4) on hand-made texts, the packaged held-out set, and
the sequential twin's multi-turn training form."""

from __future__ import annotations

import pytest
import torch

from multistream.evaluation.interrupt import honour_offset, honours, load_items
from multistream.masks import IGNORE_INDEX

PEOPLE = {"type": "contains", "must": [["4 eggs"], ["200 g flour"], ["400 ml milk"]], "must_not": []}
CARD = {"type": "contains", "must": [["Dear Maria"]], "must_not": ["Tom"]}


@pytest.mark.parametrize(
    ("check", "text", "expected"),
    [
        (PEOPLE, " Sure, for 2 people you need 4 eggs, 200 g flour and 400 ml milk.", True),
        (PEOPLE, " For 4 people you need 4 eggs, 400 g flour and 800 ml milk.", False),  # one amount right
        (PEOPLE, " Sure, for 2 people you need 14 eggs, 200 g flour and 400 ml milk.", False),  # whole words
        (CARD, " Got it: Dear Maria, happy birthday!", True),
        (CARD, " Dear Maria, happy birthday! Love, Tom", False),  # the old recipient is still there
        (CARD, " Dear Tom, happy birthday!", False),
        ({"type": "contains", "must": [["MONDAY"]], "must_not": [], "case": True}, "Monday", False),
        ({"type": "contains", "must": [["MONDAY"]], "must_not": [], "case": True}, "MONDAY AND", True),
        ({"type": "contains", "must": [["at 7 pm"]], "must_not": ["at 8 pm"]}, "table at 7:30 pm", False),
        ({"type": "contains", "must": [["two", "2"]], "must_not": []}, "for two people", True),
    ],
)
def test_contains_checks_need_every_group_and_no_forbidden_word(
    check: dict, text: str, expected: bool
) -> None:
    assert honours(check, text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Sure, counting down: 9, 8, 7, 6.", True),
        (" 6, 7, 8, 9.", False),  # the old order
        (" Sure: 9, 8, 7, 6, 5.", False),  # goes on past the end
        (" 10, 9, 8, 7, 6.", False),  # starts too early
        (" Counting down from 9 to 6: 9, 8, 7, 6.", True),  # numbers in a lead-in before a colon
        (" 9, 8, 6.", False),
    ],
)
def test_sequence_check_wants_exactly_the_expected_numbers(text: str, expected: bool) -> None:
    assert honours({"type": "sequence", "numbers": [9, 8, 7, 6]}, text) is expected


def test_numbered_and_order_checks() -> None:
    numbered = {"type": "numbered", "items": ["Monday", "Tuesday", "Wednesday"]}
    assert honours(numbered, " Sure, here they are:\n1. Monday\n2. Tuesday\n3. Wednesday")
    assert not honours(numbered, " Monday, Tuesday and Wednesday.")
    assert not honours(numbered, "1. Monday\n2. Wednesday\n3. Tuesday")
    days = ["Monday", "Tuesday", "Wednesday", "Thursday"]
    reverse = {"type": "order", "items": ["Wednesday", "Tuesday", "Monday"], "universe": days}
    assert honours(reverse, " Okay, in reverse order: Wednesday, Tuesday and Monday.")
    assert not honours(reverse, " Monday, Tuesday and Wednesday.")
    assert not honours(reverse, " Wednesday, Tuesday, Monday and Thursday.")  # one too many


def test_honour_offset_is_where_the_first_honouring_key_ends() -> None:
    text = " Sure, for 2 people you need 4 eggs, 200 g flour and 400 ml milk."
    assert text[: honour_offset(PEOPLE, text)].endswith("4 eggs")
    assert honour_offset(PEOPLE, " nothing useful") is None
    with pytest.raises(ValueError, match="unknown interruption check"):
        honours({"type": "vibes"}, "text")


def test_packaged_heldout_set_is_checkable_and_its_checks_can_fail() -> None:
    items = load_items()
    assert len(items) >= 100
    assert len({i["family"] for i in items}) >= 7
    assert sum(i["unseen"] for i in items) >= 20  # phrasings no training example uses
    for item in items:
        # the reference continuation honours the correction; the answer as first asked does not
        assert honours(item["check"], item["pivot"]), item["id"]
        assert not honours(item["check"], item["answer"]), item["id"]
        assert item["after_tokens"] >= 2


def test_load_items_names_the_bad_line(tmp_path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"items.jsonl:1"):
        load_items(path)


def test_twin_learns_every_assistant_turn_of_a_multi_turn_grid() -> None:
    from multistream.grid import StreamGrid
    from multistream.models import load_tokenizer
    from multistream.schema import StreamSchema
    from multistream.training.data import sequential_example

    tok = load_tokenizer("smollm2-135m")
    schema = StreamSchema.parse("user,assistant").with_tokenizer(tok)
    turns = [
        {"role": "user", "content": "Count from 1 to 5."},
        {"role": "assistant", "content": "1, 2, 3, 4, 5."},
        {"role": "user", "content": "Actually, count down instead."},
        {"role": "assistant", "content": "Sure, counting down: 5, 4, 3, 2, 1."},
    ]
    grid = StreamGrid(torch.full((4, 2), schema.silence_id), schema, {"turns": turns})
    example = sequential_example(grid, tok)
    ids, labels = example["input_ids"][:, 0], example["labels"][:, 0]
    learned = tok.decode(ids[labels != IGNORE_INDEX])
    assert "1, 2, 3, 4, 5." in learned and "counting down: 5, 4, 3, 2, 1." in learned
    assert "Count from" not in learned and "Actually" not in learned  # user turns are context only
    assert learned.count("<|im_end|>") == 2
