"""Issue 12 item 1: does `demo` keep its base's knowledge, answer, start early, stop, and wait
for long inputs? Every system runs once per example; results are cached per example (resumable).

Systems are ``ms:NAME_OR_DIR`` (a multi-stream model: a registered name or a saved directory) or
``seq:NAME_OR_DIR`` (a sequential model: a base name, or a one-stream twin trained with
``form: sequential``). Two diagnostic forms of a sequential model (where does the multi-stream
format lose its base's facts?): ``seqbridge:NAME`` answers after a bridging opening written for it
(chat prompt + "Allow me to begin while you continue."), ``seqraw:NAME`` reads the question as the
grid's user stream holds it (no chat template or system prompt: " question" + end token). Both decode greedily with the settings of ``multistream eval`` (48 new
tokens after the input; multi-stream: silence penalty 2.0 after the input, stop after 32 silent
rows or at its end token; lockstep input, closed by the end token as in training).

Tasks:

* ``factual``: the 122 held-out questions (``evaluation/tasks/factual.py``): accuracy (alias
  match), answered (the output holds a word besides the bridging opening), first visible output
  before the input ended, stopped by itself (end token or silence, not the row budget);
* ``squad`` / ``gsm8k`` (multi-stream systems only; long inputs): the first examples of the
  evaluation's fixed samples; the rate of answers that ended before the input did.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/eval_demo_retention.py --out runs/eval/retention \\
        --system demo=ms:demo --system base=seq:smollm2-135m --system twin=seq:demo-twin \\
        --long-limit 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean
from typing import Any


def _load(spec: str) -> tuple[str, Any]:
    kind, _, name = spec.partition(":")
    if kind == "ms":
        from multistream.evaluation.runners import MultiStreamRunner
        from multistream.models import resolve_multistream

        model, tok = resolve_multistream(name)
        model.eval()
        return kind, MultiStreamRunner(
            model, tok, max_new_tokens=48, stop_silent_rows=32, silence_penalty=2.0
        )
    if kind in ("seq", "seqbridge", "seqraw"):
        from multistream.evaluation.runners import SequentialRunner
        from multistream.evaluation.systems import _load_baseline

        model, tok = _load_baseline(name)
        return kind, SequentialRunner(model, tok, max_new_tokens=48)
    raise SystemExit(f"--system {spec!r}: write ms:NAME_OR_DIR or seq:NAME_OR_DIR")


def _record(kind: str, runner: Any, example: Any, task: Any) -> dict[str, Any]:
    began = time.perf_counter()
    if kind == "ms":
        out = runner.run(example)
    else:
        rows = len(runner.prompt_ids(example.user))
        out = runner.run(example, rows)
    from multistream.evaluation.latency import latency_metrics

    metrics = latency_metrics(out)
    first_visible = next((r for r, v in zip(out.token_rows, out.token_visible, strict=True) if v), None)
    score = task.score(out.text, example) if task is not None else {}
    return {
        "id": example.id,
        "text": out.text,
        "raw": out.streams,
        "score": score,
        "input_rows": out.input_tokens,
        "first_visible_row": first_visible,
        "early_start": first_visible is not None and first_visible < out.input_tokens,
        "ended_before_input_end": bool(out.ended_before_input_end) if kind == "ms" else False,
        "answer_row": metrics.get("ttft_answer_rows"),
        "stop": out.stop,
        "stopped_itself": out.stop in ("end_token", "silence"),
        "rows": out.rows,
        "seconds": time.perf_counter() - began,
    }


DIAGNOSTIC_BRIDGING = "Allow me to begin while you continue."


def _prompt(kind: str, runner: Any, text: str) -> list[int]:
    tok = runner.tokenizer
    if kind == "seqraw":
        return [*tok.encode(" " + text, add_special_tokens=False), tok.eos_token_id]
    ids = runner.prompt_ids(text)
    if kind == "seqbridge":
        ids = [*ids, *tok.encode(DIAGNOSTIC_BRIDGING, add_special_tokens=False)]
    return ids


def _sequential_batch(
    runner: Any, examples: list[Any], task: Any, batch: int = 16, kind: str = "seq"
) -> list[dict[str, Any]]:
    """Greedy ``generate`` on many prompts at once (left padding), as ``SequentialRunner`` would
    one by one: the same chat-templated prompt, budget and end token; no latency numbers."""
    import torch

    from multistream.evaluation.runners import prompt_text

    tok, model = runner.tokenizer, runner.model
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    out = []
    for b in range(0, len(examples), batch):
        began = time.perf_counter()
        chunk = examples[b : b + batch]
        prompts = [_prompt(kind, runner, prompt_text(ex)) for ex in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=runner.max_new_tokens, do_sample=False,
                eos_token_id=eos, pad_token_id=pad,
            )  # fmt: skip
        seconds = (time.perf_counter() - began) / len(chunk)
        for ex, row in zip(chunk, gen[:, width:].tolist(), strict=True):
            stop = "end_token" if eos in row else "max_new_tokens"
            row = row[: row.index(eos)] if eos in row else row
            text = tok.decode(row, skip_special_tokens=True)
            out.append({
                "id": ex.id, "text": text, "raw": {"output": text}, "score": task.score(text, ex),
                "input_rows": len(prompts[0]), "first_visible_row": None, "early_start": False,
                "ended_before_input_end": False, "answer_row": None, "stop": stop,
                "stopped_itself": stop == "end_token", "rows": None, "seconds": seconds, "batched": True,
            })  # fmt: skip
    return out


def _multistream_batch(runner: Any, examples: list[Any], task: Any, batch: int = 16) -> list[dict[str, Any]]:
    """The multi-stream runner's decoding (same input layout, budget, silence penalty and stop
    rules) for many examples at once through ``SessionBatch``: one batched forward per row."""
    from multistream.data.convert import BRIDGING_UTTERANCES
    from multistream.engine import SessionBatch, SessionConfig, SessionStopped
    from multistream.evaluation.runners import is_visible, strip_bridging
    from multistream.sampling import SamplingConfig

    out_col = runner.schema.index(runner.output_stream)
    silence, eos = runner.schema.require_silence_id(), runner.eos_id
    laid = sorted(((ex, *runner.input_columns(ex)) for ex in examples), key=lambda t: t[2])
    records = []
    for b in range(0, len(laid), batch):
        began = time.perf_counter()
        chunk = laid[b : b + batch]
        config = SessionConfig(
            sampling=SamplingConfig(silence_penalty=runner.silence_penalty),
            max_rows=max(end for _, _, end in chunk) + runner.max_new_tokens,
            stop_silent_rows=runner.stop_silent_rows,
            end_tokens={runner.output_stream: eos},
        )
        sessions = SessionBatch(runner.model, runner.tokenizer, len(chunk), config)
        for session, (_, columns, _) in zip(sessions.sessions, chunk, strict=True):
            for name, ids in columns.items():
                session.feed(name, ids)
            session.close()
        first = [None] * len(chunk)
        eos_row: list[int | None] = [None] * len(chunk)
        early_text = [""] * len(chunk)  # output said before the last input row
        while True:
            try:
                rows = sessions.step()
            except SessionStopped:
                break
            for i, row in enumerate(rows):
                if row is None or eos_row[i] is not None:
                    continue
                token = row.ids[out_col]
                if token == silence:
                    continue
                if token == eos:
                    eos_row[i] = row.index
                    continue
                if first[i] is None and is_visible(row.text[runner.output_stream]):
                    first[i] = row.index
                if row.index < chunk[i][2]:
                    early_text[i] += row.text[runner.output_stream] or ""
        seconds = (time.perf_counter() - began) / len(chunk)
        for i, (session, (ex, _, end)) in enumerate(zip(sessions.sessions, chunk, strict=True)):
            streams = session.texts()
            text = strip_bridging(runner._clean(streams[runner.output_stream]))
            said = early_text[i].strip()
            only_bridging = not said or any(u.startswith(said) or said == u for u in BRIDGING_UTTERANCES)
            records.append({
                "id": ex.id, "text": text, "raw": streams, "score": task.score(text, ex), "input_rows": end,
                "first_visible_row": first[i], "early_start": first[i] is not None and first[i] < end,
                "ended_before_input_end": eos_row[i] is not None and eos_row[i] < end - 1,
                "answer_row": None if only_bridging else -1, "answer_before_input_end": not only_bridging,
                "stop": session.stop, "stopped_itself": session.stop in ("end_token", "silence"),
                "rows": len(session.state.rows), "seconds": seconds, "batched": True,
            })  # fmt: skip
        print(f"batch {b // batch + 1}: {len(chunk)} examples, {seconds:.1f} s each", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--system", action="append", required=True, help="LABEL=ms:NAME or LABEL=seq:NAME")
    parser.add_argument("--limit", type=int, default=None, help="factual questions (default all)")
    parser.add_argument("--long-limit", type=int, default=20, help="SQuAD and GSM8K examples each")
    parser.add_argument("--batch", type=int, default=16, help="sequential systems: prompts per generate call")
    parser.add_argument("--tasks", nargs="+", default=["factual", "squad", "gsm8k"], help="a subset to run")
    args = parser.parse_args()

    from multistream.evaluation.runners import strip_bridging
    from multistream.evaluation.tasks import get_task, load_task_examples

    args.out.mkdir(parents=True, exist_ok=True)
    factual = load_task_examples("factual", limit=args.limit) if "factual" in args.tasks else []
    long_sets = {
        name: load_task_examples(name, limit=args.long_limit)
        for name in ("squad", "gsm8k")
        if name in args.tasks
    }
    summary_path = args.out / "summary.json"  # one entry per system label, across runs
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for item in args.system:
        label, _, spec = item.partition("=")
        kind, runner = _load(spec)
        jobs = ([("factual", factual)] if factual else []) + (
            [(n, ex) for n, ex in long_sets.items() if ex] if kind == "ms" else []
        )
        summary[label] = {"spec": spec}
        for task_name, examples in jobs:
            task = get_task(task_name)
            path = args.out / f"{label}.{task_name}.jsonl"
            done = {}
            if path.is_file():
                done = {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
            with path.open("a", encoding="utf-8") as f:
                todo = [ex for ex in examples if ex.id not in done]
                # The diagnostic forms exist only batched; --batch 1 runs seq/ms one at a time.
                if todo and (args.batch > 1 or kind in ("seqbridge", "seqraw")):
                    if kind == "ms":
                        batched_recs = _multistream_batch(runner, todo, task, args.batch)
                    else:
                        batched_recs = _sequential_batch(runner, todo, task, max(args.batch, 1), kind)
                    for rec in batched_recs:
                        done[rec["id"]] = rec
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                for k, ex in enumerate(examples):
                    if ex.id in done:
                        continue
                    rec = _record(kind, runner, ex, task)
                    done[ex.id] = rec
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    print(
                        f"{label} {task_name} {k + 1}/{len(examples)} {rec['seconds']:.1f}s {rec['text'][:70]!r}",
                        flush=True,
                    )
            recs = [done[ex.id] for ex in examples]
            for r in recs:  # scores follow the current rules
                r["score"] = task.score(
                    strip_bridging(r["text"]) if kind == "ms" else r["text"], ex_by_id(examples, r["id"])
                )
            summary[label][task_name] = {
                "examples": len(recs),
                "accuracy": mean(r["score"].get("accuracy", 0.0) for r in recs)
                if task_name == "factual"
                else None,
                "answered": mean(
                    float(r["score"].get("answered_any", bool(r["text"].strip()))) for r in recs
                ),
                "early_start": mean(float(r["early_start"]) for r in recs),
                "stopped_itself": mean(float(r["stopped_itself"]) for r in recs),
                "ended_before_input_end": mean(float(r["ended_before_input_end"]) for r in recs),
                "answer_before_input_end": mean(
                    float(
                        r.get(
                            "answer_before_input_end",
                            r["answer_row"] is not None and r["answer_row"] < r["input_rows"],
                        )
                    )
                    for r in recs
                ),
                "seconds_mean": mean(r["seconds"] for r in recs),
            }
        del runner
        summary_path.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def ex_by_id(examples: list[Any], id_: str) -> Any:
    return next(e for e in examples if e.id == id_)


if __name__ == "__main__":
    main()
