"""Batched greedy decoding of both systems, for evaluations that score text, not time.

On a CPU a 135M model's decoding step costs little more for eight examples than for one, so
scoring hundreds of attacked examples (``multistream eval injection --batch-size N``) runs
several times faster when the examples are decoded together:

* the multi-stream side runs N Layout B sessions in one
  :class:`~multistream.engine.blocks_decode.BlocksSessionBatch` (one forward per step for all);
  each session stops under the rules of a lone run (its end token, or its own ``E +
  max_new_tokens`` rows), so its tokens are those of
  :meth:`~multistream.evaluation.blocks_runner.BlocksRunner.run` up to floating-point ties;
* the sequential side runs Hugging Face ``generate`` (greedy) on the left-padded chat prompts.

Rows and token counts are exact; seconds are the batch's (every member of a step gets the
step's time), so latency numbers of a batched run are not per-example latencies and reports say
so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..data.examples import SequentialExample
from .blocks_runner import BlocksRunner
from .runners import SequentialRunner, TimedOutput, is_visible, prompt_text

__all__ = ["run_baseline_batch", "run_blocks_batch"]


def run_blocks_batch(runner: BlocksRunner, examples: Sequence[SequentialExample]) -> list[TimedOutput]:
    """Decode ``examples`` together on a Layout B model (module docstring)."""
    from ..engine.blocks_decode import BlocksSessionBatch

    layout = [runner.input_columns(e) for e in examples]
    limits = [end + runner.max_new_tokens for _, end in layout]
    batch = BlocksSessionBatch(
        runner.model, runner.tokenizer, len(examples), runner.session_config(max(limits))
    )
    sessions = list(batch.sessions)
    for session, (columns, _) in zip(sessions, layout, strict=True):
        runner.feed_input(session, columns)
    outs = [TimedOutput(text="", streams={}, input_tokens=end, input_arrivals_s=[]) for _, end in layout]
    ended = [False] * len(examples)
    index = {id(s): k for k, s in enumerate(sessions)}
    clock = 0.0
    with torch.inference_mode():
        while any(s.state.stop is None for s in batch.sessions):
            members = list(batch.sessions)
            for s in members:
                k = index[id(s)]
                if s.state.stop is None and len(s.state.rows) < outs[k].input_tokens:
                    outs[k].input_arrivals_s.append(clock)
            start = time.perf_counter()
            rows = batch.step()
            clock += time.perf_counter() - start
            for s, row in zip(members, rows, strict=True):
                if row is None:
                    continue
                k = index[id(s)]
                ended[k] = runner.record(outs[k], row, row.index, clock, ended[k])
                if s.state.stop is None and len(s.state.rows) >= limits[k]:
                    s.cancel("max_rows")  # a lone run stops here (its own max_rows)
    for out, s in zip(outs, sessions, strict=True):
        runner.finish(out, s, 0)
    return outs


def run_baseline_batch(
    runner: SequentialRunner, examples: Sequence[SequentialExample], input_rows: Sequence[int]
) -> list[TimedOutput]:
    """Greedy ``generate`` on the examples' chat prompts together, left-padded (module docstring)."""
    tok = runner.tokenizer
    prompts = [runner.prompt_ids(prompt_text(e)) for e in examples]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    model: Any = runner.model
    start = time.perf_counter()
    with torch.inference_mode():
        generated = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=runner.max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, width:].cpu()
    seconds = time.perf_counter() - start
    outs = []
    for k, prompt in enumerate(prompts):
        rows = input_rows[k]
        out = TimedOutput(text="", streams={}, input_tokens=rows, input_arrivals_s=[0.0] * rows)
        tokens = generated[k].tolist()
        step = seconds / max(1, len(tokens))
        kept: list[int] = []
        for j, token in enumerate(tokens):
            out.end_row, out.end_s = rows + j, (j + 1) * step
            if token == eos:
                out.stop = "end_token"
                break
            kept.append(token)
            text = tok.decode([token])
            out.token_rows.append(rows + j)
            out.token_reads.append(rows)
            out.token_times_s.append((j + 1) * step)
            out.token_visible.append(is_visible(text))
            out.token_texts.append(text)
        out.stop = out.stop or "max_new_tokens"
        out.text = tok.decode(kept, skip_special_tokens=True)
        out.streams = {"output": out.text}
        out.rows = len(prompt) + len(kept) + (out.stop == "end_token")
        outs.append(out)
    return outs
