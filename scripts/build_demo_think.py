"""Build the `demo-think` training grids and the held-out `running_sum` items (issue 12).

The task (``multistream.evaluation.tasks.running_sum``): add up 5-10 one-digit numbers that
arrive one by one, in 14 phrasings. Each grid has three streams, ``user, think, assistant``:

* ``user``: the prompt, streamed from row 0 exactly as a live session feeds it
  (``data.convert.layout_inputs``, the layout every conversion policy shares), then EOS;
* ``think``: after each number, the running total (``" 7"``, ``" 10"``, ...). The total after
  number ``j`` starts two rows after its last digit: a cell at row ``r`` sees rows ``< r``, so
  it has then read the token after the digit and knows the number is complete ("1" may be
  the start of "12"). The input spends at least three rows per number and a step is at most
  three tokens, so the thinking keeps pace with the input (never more than a row or two behind);
* ``assistant``: ``" = total"`` then EOS, from the input end row ``E`` on, each digit placed
  after the thinking wrote it (so the answer copies the last running total).

This is the ``think-while-reading`` policy of ``multistream.data.convert`` with one change:
a step becomes ready when its number has been read (the token after it), not at the end of the
sentence holding it (the whole list is one sentence). The think stream carries **no** end token,
so the sequential twin (``training.data.sequential_example``: input text, then the thinking,
then the answer) reads ``" 7 10 15 = 15<|im_end|>"`` and does not stop after its thinking.

Training items (seed 0) share no number sequence with the 200 held-out items
(``running_sum.HELDOUT_SEED``), which are written into the package
(``src/multistream/evaluation/data/running_sum.jsonl``).

    python scripts/build_demo_think.py --out runs/data/demo-think            # ~30 s
    python scripts/build_demo_think.py --out runs/data/demo-think --show 2   # print two grids
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from multistream.data.convert import (
    Drop,
    build_grid,
    conversion_context,
    get_policy,
    layout_inputs,
    resolve_schema,
)
from multistream.data.examples import SequentialExample
from multistream.data.io import write_grids
from multistream.evaluation.tasks.running_sum import (
    HELDOUT_SEED,
    RUNNING_SUM_FILE,
    example_from_item,
    make_items,
)
from multistream.grid import StreamGrid
from multistream.models import load_tokenizer

SCHEMA = "user,think,assistant"
TRAIN_SEED = 0
N_TRAIN, N_HELDOUT = 4000, 200


def _number_end_rows(ids: list[int], tokenizer: Any) -> list[int]:
    """Row of the last digit of every number in an input column (digits occur only in numbers)."""
    digit = [tokenizer.decode([t]).strip().isdigit() for t in ids]
    return [r for r, d in enumerate(digit) if d and (r + 1 == len(ids) or not digit[r + 1])]


def think_grid(example: SequentialExample, schema: Any, tokenizer: Any) -> StreamGrid:
    """One ``user, think, assistant`` grid (see the module docstring)."""
    ctx = conversion_context(get_policy("think-while-reading"), schema, tokenizer, k=0, end_inputs=True)
    layout = layout_inputs(example, ctx, with_words=False)
    ((start, input_ids),) = layout.cells["user"]
    ends = [start + r for r in _number_end_rows(input_ids, tokenizer)]
    numbers = example.meta["numbers"]
    if len(ends) != len(numbers):
        raise Drop("numbers", f"found {len(ends)} numbers in the input, expected {len(numbers)}")
    think: list[tuple[int, list[int]]] = []
    row = 0
    last_digit_row = 0
    for step, end in zip(example.steps, ends, strict=True):
        ids = ctx.encode(step)
        row = max(row, end + 2)
        if think and row == think[-1][0] + len(think[-1][1]):
            think[-1] = (think[-1][0], think[-1][1] + ids)
        else:
            think.append((row, ids))
        last_digit_row = row + next(i for i, t in enumerate(ids) if tokenizer.decode([t]).strip().isdigit())
        row += len(ids)
    answer = ctx.encode(example.conclusion)
    first_digit = next(i for i, t in enumerate(answer) if tokenizer.decode([t]).strip().isdigit())
    # The answer's k-th digit comes a row after the thinking's k-th digit of the final total.
    answer_row = max(layout.end_row, last_digit_row + 1 - first_digit)
    placed = {"think": think, "assistant": [(answer_row, [*answer, ctx.eos_id])]}
    grid = build_grid(layout, placed, schema)
    grid.meta = {
        "source": example.source,
        "id": example.id,
        "policy": "think-while-reading",
        "input_end_row": layout.end_row,
        "answer_row": answer_row,
        "think_steps": len(example.steps),
        "early_steps": sum(r < layout.end_row for r, _ in think),
        "answer": example.answer,
        "example": example.meta,
    }
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/data/demo-think", help="folder for train.jsonl")
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--show", type=int, default=0, help="print this many grids")
    args = parser.parse_args()

    tokenizer = load_tokenizer("smollm2-135m")
    schema = resolve_schema(SCHEMA, tokenizer)
    heldout = make_items(HELDOUT_SEED, N_HELDOUT)
    train = make_items(TRAIN_SEED, args.n_train, exclude={tuple(i["numbers"]) for i in heldout})
    assert not {tuple(i["numbers"]) for i in train} & {tuple(i["numbers"]) for i in heldout}

    RUNNING_SUM_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = RUNNING_SUM_FILE.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(i) + "\n" for i in heldout), encoding="utf-8")
    tmp.replace(RUNNING_SUM_FILE)

    grids = [think_grid(example_from_item(i, "running_sum_train"), schema, tokenizer) for i in train]
    out = Path(args.out)
    n = write_grids(out / "train.jsonl", grids, tokenizer)
    rows = [g.num_rows for g in grids]
    lag = [g.meta["answer_row"] - g.meta["input_end_row"] for g in grids]
    print(
        f"{n} training grids -> {out / 'train.jsonl'} (rows {min(rows)}-{max(rows)}, "
        f"mean {sum(rows) / len(rows):.1f}; answer starts {min(lag)}-{max(lag)} rows after the input end); "
        f"{len(heldout)} held-out items -> {RUNNING_SUM_FILE}"
    )
    for g in grids[: args.show]:
        cells = g.to_cells(tokenizer)
        for r in range(g.num_rows):
            print(
                r, *(repr(cells[s][r]) if cells[s][r] is not None else "." for s in g.schema.names), sep="\t"
            )
        print()


if __name__ == "__main__":
    main()
