"""Build the `demo` training data by self-distillation: the base's own sequential answers, as streams.

Why: the first `demo` was fine-tuned on Alpaca's reference answers, so its LoRA also learned new
(and worse) facts and styles, and it lost knowledge its base has (issue 12). Here every answer is
SmolLM2-135M-Instruct's own greedy answer to the same prompt, run sequentially with its chat
template; the fine-tune then only has to learn the stream format (silence, the bridging opening,
when to answer, when to stop), not new content.

Prompts (seeded, all from files under ../shared/data):

* ``alpaca``: Alpaca instructions (+ input) of at most 60 tokens;
* ``squadq``: SQuAD v1.1 dev questions alone (short "Who/What/When ...?" questions, the kind
  the first demo fell silent on);
* ``squadctx``: SQuAD v1.1 dev context + question in the evaluation prompt format
  (``prompts.squad_prompt``): grids of 150-330 rows, so the model learns to keep silent until a
  long input has ended.

SQuAD examples of the evaluation's fixed sample (``random.Random(42).sample`` of 1,000) are
excluded, and so is every prompt that mentions a subject of the held-out factual QA set
(``src/multistream/evaluation/data/factual_qa.jsonl``).

Stages (each resumable; the answers file is appended to and re-read):

    # 1. the base's answers (greedy, batched HF generate; ~10 min on a loaded 2-core CPU)
    OMP_NUM_THREADS=2 python scripts/build_demo_distill.py generate --out runs/data/demo-distill
    # 2. streams: wait-k (k = 2) grids for `demo`; the sequential twin reads the same grids
    python scripts/build_demo_distill.py convert --out runs/data/demo-distill
    # 3. (optional) the base as its own causality judge over those grids (multistream.data.selfjudge):
    #    judged grids (no answer token before the base could commit to it) + per-grid verdicts
    OMP_NUM_THREADS=1 python scripts/build_demo_distill.py judge --out runs/data/demo-distill
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from typing import Any

DATA = Path("../shared/data")
QA_FILE = Path(__file__).resolve().parents[1] / "src/multistream/evaluation/data/factual_qa.jsonl"
BASE = "smollm2-135m"
SQUAD_EVAL_SEED, SQUAD_EVAL_SIZE = 42, 1000

# set: (prompts drawn, max new tokens, batch size)
SETS: dict[str, tuple[int, int, int]] = {
    "alpaca": (420, 64, 24),
    "squadq": (160, 48, 32),
    "squadctx": (90, 32, 8),
}
# How many of each set's prompts, shortest first, are answered: the shipped run stopped its
# generation there to start training within the time budget (the rest were never used).
TAKE: dict[str, int] = {"alpaca": 288, "squadq": 128, "squadctx": 56}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _heldout_subjects() -> list[str]:
    if not QA_FILE.is_file():
        return []
    subjects = []
    for line in QA_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            subjects.append(_norm(rec["subject"]))
    return subjects


def _prompts(tokenizer: Any, seed: int = 0) -> list[dict[str, Any]]:
    """All prompts in a fixed order: {id, set, user, data}."""
    from multistream.data.prompts import squad_prompt

    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    alpaca = json.loads((DATA / "alpaca/alpaca_en_demo.json").read_text(encoding="utf-8"))
    idx = list(range(len(alpaca)))
    rng.shuffle(idx)
    n = 0
    for i in idx:
        rec = alpaca[i]
        user, data = rec["instruction"].strip(), (rec.get("input") or "").strip()
        if len(tokenizer.encode(user + "\n\n" + data)) > 60:
            continue
        out.append({"id": f"alpaca-{i}", "set": "alpaca", "user": user, "data": data})
        n += 1
        if n >= SETS["alpaca"][0]:
            break
    lines = (DATA / "squad/dev-v1.1.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    # The evaluation's fixed sample (evaluation/tasks/squad.py) draws from the loaded examples in
    # file order; every v1.1 record loads, so the sample is over records.
    heldout = {r["id"] for r in random.Random(SQUAD_EVAL_SEED).sample(records, SQUAD_EVAL_SIZE)}
    pool = [r for r in records if r["id"] not in heldout]
    rng.shuffle(pool)
    seen_q: set[str] = set()
    nq = nc = 0
    used_ctx: set[str] = set()
    for r in pool:
        q = r["question"].strip()
        if nq < SETS["squadq"][0] and _norm(q) not in seen_q and 4 <= len(q.split()) <= 16:
            seen_q.add(_norm(q))
            out.append({"id": f"squadq-{r['id']}", "set": "squadq", "user": q, "data": ""})
            nq += 1
            continue
        if nc < SETS["squadctx"][0] and r["context"] not in used_ctx:
            prompt = squad_prompt(r["context"], q)
            if 140 <= len(tokenizer.encode(prompt)) <= 300:
                used_ctx.add(r["context"])
                out.append({"id": f"squadctx-{r['id']}", "set": "squadctx", "user": prompt, "data": ""})
                nc += 1
        if nq >= SETS["squadq"][0] and nc >= SETS["squadctx"][0]:
            break
    return out


def _cut(text: str, finished: bool) -> str | None:
    """A truncated answer ends at its last full sentence (None when it has none)."""
    text = text.strip()
    if finished:
        return text or None
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    if not ends or ends[-1] < 20:
        return None
    return text[: ends[-1]].strip()


def _cap(text: str, tokenizer: Any, max_tokens: int) -> str | None:
    """At most ``max_tokens`` tokens, ending at a sentence end (shorter grids train faster, and
    the first sentences hold the fact)."""
    ids = tokenizer.encode(text)
    if len(ids) <= max_tokens:
        return text
    return _cut(tokenizer.decode(ids[:max_tokens]), finished=False)


def generate(out: Path, sets: list[str]) -> None:
    import torch

    from multistream.models import load_base

    out.mkdir(parents=True, exist_ok=True)
    # One answers file per process, so sets can be generated by parallel processes.
    answers_path = out / ("answers.jsonl" if sets == list(SETS) else f"answers-{'-'.join(sets)}.jsonl")
    done = {
        json.loads(line)["id"]
        for p in out.glob("answers*.jsonl")
        for line in p.read_text().splitlines()
        if line.strip()
    }
    model, tok = load_base(BASE)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    prompts = [p for p in _prompts(tok) if p["id"] not in done]
    print(f"{len(prompts)} prompts to answer ({len(done)} done)", flush=True)
    with answers_path.open("a", encoding="utf-8") as f:
        for name in sets:
            _, max_new, batch = SETS[name]
            todo = [p for p in prompts if p["set"] == name]
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": p["user"] + ("\n\n" + p["data"] if p["data"] else "")}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for p in todo
            ]
            # Shortest first: similar lengths pad less, and TAKE keeps a prefix of this order.
            order = sorted(range(len(todo)), key=lambda i: len(texts[i]))[: TAKE[name]]
            for b in range(0, len(order), batch):
                began = time.time()
                chunk = order[b : b + batch]
                enc = tok(
                    [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
                )
                with torch.inference_mode():
                    gen = model.generate(
                        **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
                    )
                new = gen[:, enc["input_ids"].shape[1] :]
                for i, row in zip(chunk, new.tolist(), strict=True):
                    finished = tok.eos_token_id in row
                    if finished:
                        row = row[: row.index(tok.eos_token_id)]
                    raw = tok.decode(row, skip_special_tokens=True)
                    rec = {**todo[i], "raw": raw, "finished": finished, "answer": _cut(raw, finished)}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                print(f"{name}: {b + len(chunk)}/{len(order)} ({time.time() - began:.1f} s)", flush=True)


def convert(out: Path, k: int, max_answer_tokens: int) -> None:
    from multistream.data.convert import ConvertReport, check_grid, convert_examples
    from multistream.data.examples import SequentialExample
    from multistream.data.io import write_grids
    from multistream.models import load_tokenizer

    tok = load_tokenizer(BASE)
    subjects = _heldout_subjects()
    examples, skipped = [], {"no_answer": 0, "heldout_subject": 0}
    lines = [
        line
        for p in sorted(out.glob("answers*.jsonl"))
        for line in p.read_text(encoding="utf-8").splitlines()
    ]
    records = {r["id"]: r for r in map(json.loads, lines)}  # parallel generators may overlap
    for rec in sorted(records.values(), key=lambda r: r["id"]):
        answer = rec["answer"] and _cap(rec["answer"], tok, max_answer_tokens)
        if not answer:
            skipped["no_answer"] += 1
            continue
        prompt = _norm(rec["user"] + " " + rec["data"])
        if any(re.search(rf"\b{re.escape(s)}\b", prompt) for s in subjects):
            skipped["heldout_subject"] += 1
            continue
        examples.append(
            SequentialExample(
                id=rec["id"],
                source="distill-" + rec["set"],
                user=rec["user"],
                data=rec["data"],
                assistant=answer,
            )
        )
    report = ConvertReport()
    grids = convert_examples(
        examples, policy="wait-k", schema="user,assistant", tokenizer=tok, k=k, report=report
    )
    bad = [p for g in grids for p in check_grid(g, tok)]
    if bad:
        raise SystemExit(f"{len(bad)} grids break the wait-k guarantee, e.g. {bad[:3]}")
    path = out / f"waitk{k}.jsonl"
    write_grids(path, grids, tok)
    rows = sorted(g.num_rows for g in grids)
    print(
        f"{len(grids)} grids -> {path} (skipped {skipped}, dropped {dict(report.dropped)}); rows: median "
        f"{rows[len(rows) // 2]}, max {rows[-1]}, > 100: {sum(r > 100 for r in rows)}"
    )


def judge(
    out: Path, k: int, margin: float, max_cuts: int, mode: str, limit: int | None, sets: list[str]
) -> None:
    """The base judges every wait-k grid; writes judged grids and one verdict line per grid.

    Verdicts are cached in ``judge-m{margin}-c{max_cuts}.jsonl`` (resumable); the judged grids go
    to ``judged{k}-{mode}.jsonl``. Prints how many answer tokens the schedule moved and how many
    answers the base could have started before it read the input's last token (``earliest`` mode).
    """
    import torch

    from multistream.data.io import read_grids, write_grids
    from multistream.data.selfjudge import JudgedOutput, SelfJudge, judged_grid
    from multistream.models import load_base

    model, tok = load_base(BASE)
    grids = [
        g
        for g in read_grids(out / f"waitk{k}.jsonl", tokenizer=tok).grids
        if g.meta["source"].removeprefix("distill-") in sets
    ]
    grids = grids[:limit]
    model.eval()
    judge_ = SelfJudge(model, tok, margin=margin, max_cuts=max_cuts)
    cache_path = out / f"judge-m{margin:g}-c{max_cuts}.jsonl"
    cache = {}
    if cache_path.is_file():
        cache = {
            r["id"]: r for r in map(json.loads, cache_path.read_text(encoding="utf-8").splitlines()) if r
        }
    began = time.time()
    with cache_path.open("a", encoding="utf-8") as f:
        for n, g in enumerate(grids):
            gid = f"{g.meta['source']}:{g.meta['id']}"
            if gid in cache:
                continue
            v = judge_.judge(g)
            rec = {"id": gid, "rows": v.rows, "ids": v.ids, "earliest": v.earliest, "answer_start": v.answer_start,
                   "cuts": v.cuts, "logprobs": [[round(x, 4) for x in r] for r in v.logprobs.tolist()]}  # fmt: skip
            cache[gid] = rec
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if n % 20 == 0:
                print(f"{n + 1}/{len(grids)} judged ({time.time() - began:.0f} s)", flush=True)
    judged, moved, early = [], 0, 0
    for g in grids:
        r = cache[f"{g.meta['source']}:{g.meta['id']}"]
        v = JudgedOutput(
            r["rows"], r["ids"], r["earliest"], r["answer_start"], r["cuts"], torch.tensor(r["logprobs"])
        )
        new = judged_grid(g, v, mode=mode)
        judged.append(new)
        moved += new.meta["self_judge"]["moved"]
        # Rows < E - 1 hold the input text (row E - 1 its end token): an answer row below E - 1
        # has not read the input's last token yet.
        early += int(judged_grid(g, v, mode="earliest").meta["answer_row"] < g.meta["input_end_row"] - 1)
    path = out / (
        f"judged{k}-{mode}.jsonl" if sets == list(SETS) else f"judged{k}-{mode}-{'-'.join(sets)}.jsonl"
    )
    write_grids(path, judged, tok)
    same = sum(torch.equal(a.ids, b.ids) for a, b in zip(grids, judged, strict=True))
    print(
        f"{len(judged)} grids -> {path}: {same} identical to wait-k, {moved} answer tokens moved; "
        f"the base would start its answer before the input's last token in {early} of {len(grids)} "
        f"(margin {margin:g} nats, at most {max_cuts} cuts)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["generate", "convert", "judge"])
    parser.add_argument("--out", type=Path, default=Path("runs/data/demo-distill"))
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument(
        "--sets", nargs="+", choices=list(SETS), default=list(SETS), help="generate (judge) only these"
    )
    parser.add_argument("--max-answer-tokens", type=int, default=64)
    parser.add_argument(
        "--margin", type=float, default=1.0, help="judge: nats below the whole-input log-prob"
    )
    parser.add_argument("--max-cuts", type=int, default=12, help="judge: most input cuts per grid")
    parser.add_argument(
        "--mode", choices=["no-earlier", "earliest"], default="no-earlier", help="judge: schedule"
    )
    parser.add_argument("--limit", type=int, default=None, help="judge: only the first grids")
    args = parser.parse_args()
    if args.stage == "generate":
        generate(args.out, args.sets)
    elif args.stage == "judge":
        judge(args.out, args.k, args.margin, args.max_cuts, args.mode, args.limit, args.sets)
    else:
        convert(args.out, args.k, args.max_answer_tokens)


if __name__ == "__main__":
    main()
