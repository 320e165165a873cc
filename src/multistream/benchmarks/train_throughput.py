"""Training throughput: multi-stream training vs its sequential twin on the same examples.

Both runs use the same trainer, base model, LoRA settings, batch size and the same example
indices, in one process one after the other, so the ratio is measured under the same machine
load. The first step of each run is warm-up and is not timed. The recipe's layout decides what
"multi-stream" is: Layout A grids (``layout: grid``; ``--set layout_options.hide_silence=true``
adds the dropped silence cells) or Layout B blocks (``layout: blocks``, recipes/blocks-*.yaml),
whose twin is the same blocks as one causal chat sequence.

Reports per form: seconds per step, examples/s, tokens/s (Layout A: every cell of a real row,
silence included; Layout B: block tokens; sequential: chat tokens), ``sequence_tokens_per_s``
(tokens actually in the training sequence, after dropped cells) and supervised targets/s; then
the ratio multi-stream / sequential of examples/s (time to train on the same examples) and of
tokens/s.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py \\
        --recipe recipes/alpaca-2stream-lora.yaml --steps 20 > runs/train_throughput.json
    .venv/bin/python benchmarks/train_throughput.py --recipe recipes/blocks-solve.yaml --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from multistream.base_models import load_base
from multistream.layout import BlocksExample
from multistream.masks import IGNORE_INDEX
from multistream.training import (
    MultiStreamTrainer,
    TrainConfig,
    TrainConfigError,
    build_examples,
    build_model,
    parse_overrides,
)
from multistream.training.data import build_collator


class _StepClock(TrainerCallback):
    """Wall time of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.ends:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def _measure(config: TrainConfig, steps: int) -> dict[str, float]:
    base, tokenizer = load_base(config.model)
    examples, _, schema = build_examples(config, tokenizer)
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    used = examples[: (steps + 1) * per_step]  # sequential sampling: these, in this order
    model = build_model(config, schema, base, tokenizer)
    collator = build_collator(config, schema)
    clock = _StepClock()
    trainer = MultiStreamTrainer(
        model=model,
        args=config,
        train_dataset=used,
        data_collator=collator,
        callbacks=[clock],
    )
    trainer.train()
    timed = used[per_step:]  # step 1 is warm-up
    seconds = clock.ends[-1] - clock.ends[0]
    generated = torch.tensor([s.generated for s in schema.streams])
    if isinstance(timed[0], BlocksExample):
        tokens = sequence = sum(e.num_tokens for e in timed)
        targets = sum(e.num_targets for e in timed)
    else:
        tokens = sum(e["input_ids"].numel() for e in timed)
        # What the training sequence holds after the layout dropped cells (one example each).
        sequence = sum(
            int(collator([e])["attention_mask"].sum()) * _cells_per_mask(collator([e])) for e in timed
        )
        # Supervised targets: the next row of a generated cell (multi-stream) / an answer token.
        if config.form == "multistream":
            targets = sum(int(generated.sum()) * (e["input_ids"].shape[0] - 1) for e in timed)
        else:
            targets = sum(int((e["labels"][1:] != IGNORE_INDEX).sum()) for e in timed)
    return {
        "steps": steps,
        "seconds": seconds,
        "examples": len(timed),
        "tokens": tokens,
        "sequence": sequence,
        "targets": targets,
    }


def _rates(runs: list[dict[str, float]]) -> dict[str, float]:
    """The report of one form over its runs (times and counts summed)."""
    total = {k: sum(r[k] for r in runs) for k in runs[0]}
    seconds = total["seconds"]
    return {
        "steps_timed": int(total["steps"]),
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / total["steps"], 3),
        "examples_per_s": round(total["examples"] / seconds, 3),
        "tokens_per_s": round(total["tokens"] / seconds, 1),
        "sequence_tokens_per_s": round(total["sequence"] / seconds, 1),
        "targets_per_s": round(total["targets"] / seconds, 1),
        "mean_tokens_per_example": round(total["tokens"] / total["examples"], 1),
    }


def _cells_per_mask(batch: dict) -> int:
    # Grid batches mark rows (C cells each), flat batches mark cells.
    return 1 if "stream_ids" in batch else batch["input_ids"].shape[-1]


def _check_data(recipe: str, overrides: dict) -> None:
    """A missing recipe, a bad one, or one whose data file does not exist yet: say what to do,
    then exit 2 (never a traceback)."""
    if not Path(recipe).is_file():
        sys.exit(f"train_throughput: the recipe {recipe} does not exist; pass --recipe recipes/NAME.yaml")
    try:
        config = TrainConfig.from_yaml(recipe, {**overrides, "output_dir": tempfile.gettempdir()})
    except TrainConfigError as e:
        sys.exit(f"train_throughput: {e}")
    if not Path(config.train_file).is_file():
        sys.exit(
            f"train_throughput: {recipe} trains on {config.train_file}, which does not exist yet; "
            "make it with the `multistream convert ...` command at the top of the recipe, then rerun"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/alpaca-2stream-lora.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per layout (plus 1 warm-up)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field for both runs (e.g. layout_options={hide_silence: true})",
    )  # fmt: skip
    parser.add_argument(
        "--abba", action="store_true",
        help="run multi, sequential, sequential, multi and sum the times: a load that drifts during "
        "the run weighs on both forms alike (twice the time)",
    )  # fmt: skip
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    _check_data(args.recipe, overrides)
    out = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    runs: dict[str, list[dict[str, float]]] = {"multistream": [], "sequential": []}
    order = ["multistream", "sequential"] + (["sequential", "multistream"] if args.abba else [])
    try:
        for k, layout in enumerate(order):
            config = TrainConfig.from_yaml(
                args.recipe,
                {
                    **overrides,
                    "form": layout,
                    "output_dir": str(out / f"{layout}-{k}"),
                    "max_steps": args.steps + 1,
                    "train_sampling_strategy": "sequential",
                    "save_strategy": "no",
                    "eval_strategy": "no",
                    "eval_fraction": 0.0,
                    "input_end_dropout": 0.0,
                    "logging_steps": 1000,
                    "disable_tqdm": True,
                },
            )
            runs[layout].append(_measure(config, args.steps))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    results = {form: _rates(r) for form, r in runs.items()}
    multi, seq = results["multistream"], results["sequential"]
    report = {
        "recipe": args.recipe,
        "layout": config.layout,
        "layout_options": config.layout_options,
        "overrides": overrides,
        "order": order,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        **results,
        "ratio_examples_per_s": round(multi["examples_per_s"] / seq["examples_per_s"], 3),
        "ratio_tokens_per_s": round(multi["tokens_per_s"] / seq["tokens_per_s"], 3),
    }
    print(json.dumps(report, indent=2))
    # The human table goes to stderr so that stdout stays one JSON object.
    print(f"{'form':<12} {'examples/s':>11} {'tokens/s':>10}", file=sys.stderr)
    for form, r in results.items():
        print(f"{form:<12} {r['examples_per_s']:>11.3f} {r['tokens_per_s']:>10.1f}", file=sys.stderr)
    print(
        f"{'ratio':<12} {report['ratio_examples_per_s']:>11.3f} {report['ratio_tokens_per_s']:>10.3f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
