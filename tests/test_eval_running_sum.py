"""The `running_sum` task (issue 12, `demo-think`): items, scorer, the training grids' causality,
and the latency key that measures the wait after the last input token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from multistream.evaluation.latency import MEDIAN_KEYS, aggregate_latency, latency_metrics
from multistream.evaluation.runners import TimedOutput
from multistream.evaluation.tasks import get_task, load_task_examples
from multistream.evaluation.tasks.running_sum import (
    HELDOUT_SEED,
    RUNNING_SUM_FILE,
    example_from_item,
    last_integer,
    make_items,
    running_totals,
)

ROOT = Path(__file__).resolve().parents[1]


def _item(numbers: list[int]) -> dict:
    return {"id": "t", "numbers": numbers, "template": 0, "prompt": "p", "total": sum(numbers)}


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        (" = 24", 1.0),  # the multi-stream model's assistant stream
        (" 7 19 24 = 24", 1.0),  # the twin: running totals, then the answer
        ("The total is 24.", 1.0),
        (" 7 19 24 = 25", 0.0),  # the last integer counts, not an earlier running total
        (" = 24 then 3", 0.0),
        ("= 240", 0.0),
        ("twenty-four", 0.0),
        ("", 0.0),
    ],
)
def test_scorer_takes_the_last_integer(output, correct):
    task = get_task("running_sum")
    example = example_from_item(_item([7, 12, 5]))
    score = task.score(output, example)
    assert score["accuracy"] == correct
    assert score["answered_any"] == float(last_integer(output) is not None)


def test_last_integer():
    assert last_integer("a 3 b 45.") == 45
    assert last_integer("-2") == -2
    assert last_integer("none") is None


def test_example_thinking_is_the_running_totals():
    example = example_from_item(_item([7, 12, 5]))
    assert running_totals([7, 12, 5]) == [7, 19, 24]
    assert example.steps == (" 7", " 19", " 24")
    assert example.conclusion == " = 24" and example.answer == "24"
    assert example.assistant == " 7 19 24 = 24"


def test_items_are_seeded_distinct_and_disjoint():
    a, b = make_items(5, 300), make_items(5, 300)
    assert a == b
    held = make_items(HELDOUT_SEED, 50)
    train = make_items(0, 300, exclude={tuple(i["numbers"]) for i in held})
    assert not {tuple(i["numbers"]) for i in train} & {tuple(i["numbers"]) for i in held}
    assert len({tuple(i["numbers"]) for i in train}) == 300
    prompts = {i["prompt"].split(" ")[0] for i in train}
    assert len(prompts) >= 8  # many phrasings, not one template
    for item in train:
        assert 5 <= len(item["numbers"]) <= 10 and item["total"] == sum(item["numbers"]) <= 99
        digits = "".join(ch if ch.isdigit() else " " for ch in item["prompt"]).split()
        assert [int(d) for d in digits] == item["numbers"]  # digits occur only in the numbers


def test_shipped_heldout_file_is_the_seeded_draw():
    examples = load_task_examples("running_sum")
    assert len(examples) == 200 and RUNNING_SUM_FILE.is_file()
    assert [e.user for e in examples] == [i["prompt"] for i in make_items(HELDOUT_SEED, 200)]
    assert all(e.answer == str(sum(e.meta["numbers"])) for e in examples)


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_demo_think", ROOT / "scripts" / "build_demo_think.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_grid_thinks_only_on_what_it_has_read():
    from multistream.data.convert import resolve_schema
    from multistream.models import load_tokenizer

    build = _builder()
    tokenizer = load_tokenizer("smollm2-135m")
    schema = resolve_schema(build.SCHEMA, tokenizer)
    for item in make_items(3, 20):
        grid = build.think_grid(example_from_item(item), schema, tokenizer)
        cells = grid.to_cells(tokenizer)
        user, think, answer = cells["user"], cells["think"], cells["assistant"]
        end = grid.meta["input_end_row"]
        assert user[end - 1] == tokenizer.eos_token and all(c is None for c in user[end:])
        # Row of the last digit of every number in the input.
        digit_rows = [r for r, c in enumerate(user) if c is not None and c.strip().isdigit()]
        number_ends = [r for r in digit_rows if r + 1 not in digit_rows]
        totals = running_totals(item["numbers"])
        # The k-th running total starts (its space) no earlier than two rows after number k's last
        # digit: a cell at row r sees rows < r, so it has read the token that ends the number.
        think_runs: list[list] = []
        for r, c in enumerate(think):
            if c == " ":
                think_runs.append([r, ""])
            elif c is not None:
                think_runs[-1][1] += c
        assert [int(t) for _, t in think_runs] == totals
        assert all(start >= e + 2 for (start, _), e in zip(think_runs, number_ends, strict=True))
        assert sum(start < end for start, _ in think_runs) >= len(totals) - 1  # thinking while reading
        assert "".join(c for c in think if c is not None).strip() == " ".join(map(str, totals))
        # The answer starts at the input end, each digit after the thinking wrote it.
        spoken = [r for r, c in enumerate(answer) if c is not None]
        assert spoken[0] == end == grid.meta["answer_row"]
        assert "".join(answer[r] for r in spoken) == f" = {sum(item['numbers'])}{tokenizer.eos_token}"
        think_digits = [r for r, c in enumerate(think) if c is not None and c.strip().isdigit()][-2:]
        answer_digits = [r for r in spoken if answer[r].strip().isdigit()]
        last_total = str(totals[-1])
        assert all(a > t for a, t in zip(answer_digits, think_digits[-len(last_total) :], strict=True))


def _timed(input_tokens: int, rows: list[int], end_row: int, times: list[float], end_s: float) -> TimedOutput:
    return TimedOutput(
        text="x",
        streams={},
        input_tokens=input_tokens,
        input_arrivals_s=[0.1 * r for r in range(input_tokens)],
        token_rows=rows,
        token_reads=[min(r, input_tokens) for r in rows],
        token_times_s=times,
        token_visible=[True] * len(rows),
        token_texts=["1"] * len(rows),
        end_row=end_row,
        end_s=end_s,
        stop="end_token",
    )


def test_latency_wait_after_the_last_input_token():
    # Input rows 0..9 (the last at row 9, arriving at 0.9 s). The multi-stream model answers in
    # rows 10-12 and ends at row 13; the sequential one writes rows 10-29 and ends at row 30.
    ms = latency_metrics(_timed(10, [10, 11, 12], 13, [1.0, 1.1, 1.2], 1.3))
    seq = latency_metrics(_timed(10, list(range(10, 30)), 30, [1.0 + 0.1 * k for k in range(20)], 3.0))
    assert ms["e2e_rows_from_last_input"] == 4 and seq["e2e_rows_from_last_input"] == 21
    assert ms["e2e_s_from_last_input"] == pytest.approx(0.4)
    assert seq["e2e_s_from_last_input"] == pytest.approx(2.1)
    agg = aggregate_latency([ms, ms])
    assert agg["e2e_rows_from_last_input"] == 4
    assert {"e2e_s_from_last_input", "e2e_rows_from_last_input"} <= set(MEDIAN_KEYS) <= set(agg["median"])
