"""``multistream bench decode``: what a multi-stream row costs against plain decoding.

Everything runs on the embedded SmolLM2-135M base in one process, side by side, so the ratios
compare like with like on whatever machine runs it. The stream embedding is untrained (zero):
speed does not depend on it. Measured:

* ``token_step_ms``: one cached single-token step of the plain Hugging Face model (forward
  with ``logits_to_keep=1`` plus argmax, as ``generate`` does) at ``context`` tokens;
* ``row_ms[C]``: one :meth:`Session.step` (forward of a C-token row, sampling, text) at the same
  context, for C = 2, 3, 4, with the small-row fast path and (C = 3) without it;
* ``prefill_ms`` of ``context // 3`` rows x 3 streams against a plain HF prefill of as many
  tokens;
* aggregate rows/s of 1, 4 and 8 sessions stepped as one batch;
* KV-cache bytes per row of a realistic 3-stream grid (user speaks first, then thinking and
  answer; ~40 % silence) with and without dropping silence, and the row time of each;
* the LM-head matmul for 1 and 3 rows with ``F.linear`` and with the fast path, and whether the
  fast path and ``F.linear`` differ from running each row alone (both: fp32 rounding);
* ``generate_ratio``: ms per answer row of a ``user,assistant`` model whose LoRA adapter is
  merged (rows after the ~20-token question has been read), over ms per generated token of
  ``transformers`` ``generate`` on the same base and the same question tokens (64 new tokens,
  prefill included);
* ``context_cost``: where a row's cost grows with context: the row with the engine's grouped
  attention vs ``transformers``' SDPA path (which repeats every key/value head when a mask is
  given), the mask construction, and the per-step KV copy of a growing ``DynamicCache`` that the
  engine's in-place slot cache avoids.

Compared timings are taken alternately (A, B, A, B, ...) after a warm-up, and ratios are medians
of per-pair ratios, so that load from other processes on a shared machine hits both sides alike.
No test asserts a timing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DecodeBenchConfig", "format_table", "run_decode_bench"]

QUESTION = "Why is the sky blue during the day but red and orange when the sun sets in the evening?"
ANSWER_TOKENS = 64


@dataclass
class DecodeBenchConfig:
    """Args:
    context: tokens already in the cache when steps are timed (the issue asks ~512).
    repeats: timed repetitions per measurement (median reported).
    threads: torch intra-op threads; None keeps torch's default.
    base: embedded base model name.
    batch_sizes: session counts for the batching measurement.
    stream_counts: C values for the row timings.
    """

    context: int = 512
    repeats: int = 5
    threads: int | None = None
    base: str = "smollm2-135m"
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    stream_counts: tuple[int, ...] = (2, 3, 4)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def _paired_ms(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Time ``a`` and ``b`` alternately (after one warm-up each) so that load from other
    processes hits both alike.

    Returns:
        ``(median ms of a, median ms of b, median of the per-pair ratios a/b)``.
    """
    a(), b()  # warm-up: first calls allocate and pick kernels
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_timed(a))
        tb.append(_timed(b))
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def _schema(num_streams: int, tokenizer: Any):
    from ..schema import StreamSchema

    names = ["user", "think", "assistant"] if num_streams == 3 else None
    if names is None:
        names = ["user"] + [f"think{i}" for i in range(num_streams - 2)] + ["assistant"]
    return StreamSchema.parse(",".join(names)).with_tokenizer(tokenizer)


def _session_at_context(model: Any, tokenizer: Any, context: int, config: Any, batch: int = 1) -> Any:
    from ..engine import SessionBatch

    C = model.num_streams
    rows = max(1, context // C)
    sessions = SessionBatch(model, tokenizer, batch, config)
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_base_model().config.vocab_size
    sessions.prefill([torch.randint(100, vocab, (rows, C), generator=generator) for _ in range(batch)])
    for s in sessions.sessions:
        s.close()
    return sessions


def _realistic_grid(rows: int, silence_id: int, vocab: int) -> torch.Tensor:
    """``[rows, 3]`` (user, think, assistant): the user speaks the first 30 % of rows, thinking
    runs from 3 % to 70 %, the answer from 18 % to the end; other cells are silence."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(min(100, vocab // 2), vocab, (rows, 3), generator=g)
    r = torch.arange(rows)
    speaking = torch.stack(
        [r < 0.3 * rows, (r >= 0.03 * rows) & (r < 0.7 * rows), r >= 0.18 * rows], dim=1
    )  # [rows, 3]
    return ids.masked_fill(~speaking, silence_id)


def run_decode_bench(
    config: DecodeBenchConfig | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every measurement and return one JSON-able dict (see the module docstring).

    Args:
        config: what to measure (default :class:`DecodeBenchConfig`).
        progress: called with the name of each stage as it starts (e.g. to print to stderr).
    """
    say = progress or (lambda _: None)
    from ..engine import SessionBatch, SessionConfig
    from ..fastpath import small_row_linear
    from ..loading import load_base
    from ..model import MultiStreamLM

    cfg = config or DecodeBenchConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    base, tokenizer = load_base(cfg.base)
    vocab = base.config.vocab_size
    results: dict[str, Any] = {
        "model": cfg.base,
        "context_tokens": cfg.context,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": cfg.repeats,
    }
    gen = torch.Generator().manual_seed(0)

    with torch.inference_mode():
        # -- plain HF cached single-token step at `context` tokens ------------------------------
        prompt = torch.randint(100, vocab, (1, cfg.context), generator=gen)
        out = base(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.cache
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)

        def hf_step() -> None:
            nonlocal next_id
            o = base(input_ids=next_id, cache=cache, use_cache=True, logits_to_keep=1)
            next_id = o.logits[:, -1].argmax(-1, keepdim=True)

        # -- multi-stream rows per C, each paired with plain steps ---------------------------------
        say("rows per stream count")
        greedy = SessionConfig(max_rows=10_000, stop_silent_rows=0)
        row_ms: dict[str, float] = {}
        step_ms: dict[str, float] = {}
        ratio: dict[str, float] = {}
        for C in cfg.stream_counts:
            model = MultiStreamLM.from_base(base, _schema(C, tokenizer)).eval()
            batch = _session_at_context(model, tokenizer, cfg.context, greedy)
            row_ms[str(C)], step_ms[str(C)], ratio[str(C)] = _paired_ms(batch.step, hf_step, cfg.repeats)
        results["token_step_ms"] = statistics.median(step_ms.values())
        results["row_ms"] = row_ms
        results["row_vs_token_step_ratio"] = ratio

        model = MultiStreamLM.from_base(base, _schema(3, tokenizer)).eval()
        slow = SessionConfig(max_rows=10_000, stop_silent_rows=0, fastpath=False)
        fast_batch = _session_at_context(model, tokenizer, cfg.context, greedy)
        slow_batch = _session_at_context(model, tokenizer, cfg.context, slow)
        fast_ms, slow_ms, fast_ratio = _paired_ms(fast_batch.step, slow_batch.step, cfg.repeats)
        results["fastpath_c3"] = {"row_ms_fast": fast_ms, "row_ms_without": slow_ms, "ratio": fast_ratio}

        # -- prefill: R rows x 3 streams vs the same number of plain tokens ------------------------
        say("prefill")
        rows = cfg.context // 3
        grid = torch.randint(100, vocab, (rows, 3), generator=gen)
        flat = grid.reshape(1, -1)

        def ms_prefill() -> None:
            SessionBatch(model, tokenizer, 1, greedy).prefill([grid])

        def hf_prefill() -> None:
            base(input_ids=flat, use_cache=True, logits_to_keep=1)

        results["prefill_tokens"] = rows * 3
        ms, hf, prefill_ratio = _paired_ms(ms_prefill, hf_prefill, cfg.repeats)
        results["prefill_ms"], results["hf_prefill_ms"], results["prefill_ratio"] = ms, hf, prefill_ratio

        # -- batched sessions, each size paired with a single session -------------------------------
        say("batched sessions")
        single = _session_at_context(model, tokenizer, cfg.context, greedy)
        rows_per_s: dict[str, float] = {}
        speedup: dict[str, float] = {}
        for B in cfg.batch_sizes:
            batch = _session_at_context(model, tokenizer, cfg.context, greedy, batch=B)
            batch_ms, _, per_single = _paired_ms(batch.step, single.step, cfg.repeats)
            rows_per_s[str(B)] = 1000 * B / batch_ms
            speedup[str(B)] = B / per_single  # aggregate rows/s relative to one session
        results["batch_rows_per_s"] = rows_per_s
        results["batch_speedup"] = speedup
        if "8" in speedup:
            results["batch8_speedup"] = speedup["8"]

        # -- KV memory with and without silence dropping ----------------------------------------------
        say("KV cache memory")
        silence = model.schema.require_silence_id()
        real = _realistic_grid(rows, silence, vocab)
        kv: dict[str, Any] = {"rows": rows, "silence_share": float((real == silence).float().mean())}
        steppers = {}
        for label, options in {
            "keep": dict(skip_silence=True),
            "drop": dict(skip_silence=True, drop_silence=True),
        }.items():
            session_config = SessionConfig(max_rows=10_000, stop_silent_rows=0, **options)
            batch = SessionBatch(model, tokenizer, 1, session_config)
            batch.prefill([real])
            kv[f"bytes_per_row_{label}"] = batch.cache_bytes() / rows
            batch.sessions[0].close()
            steppers[label] = batch.step
        kv["row_ms_keep"], kv["row_ms_drop"], _ = _paired_ms(steppers["keep"], steppers["drop"], cfg.repeats)
        kv["memory_saving"] = 1 - kv["bytes_per_row_drop"] / kv["bytes_per_row_keep"]
        results["kv_cache"] = kv

        # -- the small-row matmul behind the fast path -------------------------------------------------
        say("LM head matmul")
        head = base.get_output_embeddings().weight  # [V, D]
        h = torch.randn(3, head.shape[1], generator=gen)
        one_ms, three_ms, _ = _paired_ms(
            lambda: F.linear(h[:1], head), lambda: F.linear(h, head), cfg.repeats
        )
        _, fast_ms, _ = _paired_ms(lambda: F.linear(h, head), lambda: small_row_linear(h, head), cfg.repeats)
        results["lm_head_ms"] = {
            "linear_1_row": one_ms,
            "linear_3_rows": three_ms,
            "fastpath_3_rows": fast_ms,
        }
        one_by_one = torch.cat([F.linear(h[i : i + 1], head) for i in range(3)])
        # Neither 3-row product is bit-identical to three 1-row products in general; report
        # how far each is from them (both are fp32 rounding).
        results["fastpath_max_abs_diff_vs_single_rows"] = float(
            (small_row_linear(h, head) - one_by_one).abs().max()
        )
        results["linear_max_abs_diff_vs_single_rows"] = float((F.linear(h, head) - one_by_one).abs().max())

        say("generate_ratio")
        results.update(_generate_ratio(base, tokenizer, cfg.repeats))
        say("context cost")
        results["context_cost"] = _context_cost(model, tokenizer, cfg.context, greedy, cfg.repeats)

    results["seconds"] = time.perf_counter() - started
    return results


def _generate_ratio(base: Any, tokenizer: Any, repeats: int) -> dict[str, Any]:
    """ms per answer row (merged-LoRA 2-stream model) over ms per token of HF ``generate``."""
    import copy

    from peft import LoraConfig, get_peft_model

    from ..engine import Session, SessionConfig, tokenize_live
    from ..model import MultiStreamLM

    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model = MultiStreamLM.from_base(lora, _schema(2, tokenizer)).eval().merge_adapter()
    config = SessionConfig(max_rows=10_000, stop_silent_rows=0)

    def answer_rows() -> float:
        session = Session(model, tokenizer, config)
        session.feed("user", QUESTION)
        session.close()
        while session.state.inputs_closed_row is None:  # rows that read the question
            session.step()
        start = time.perf_counter()
        for _ in range(ANSWER_TOKENS):
            session.step()
        return time.perf_counter() - start

    # The same ~20 question tokens the multi-stream model reads (no chat template: SmolLM2's
    # would add a 30-token default system turn and make plain decoding look slower).
    prompt = torch.tensor([tokenize_live(tokenizer, QUESTION)])

    def hf_generate() -> None:
        base.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=ANSWER_TOKENS,
            min_new_tokens=ANSWER_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )

    answer_rows(), hf_generate()  # warm-up
    row_ms, gen_ms, ratio = [], [], []
    for _ in range(repeats):
        row_s = answer_rows()
        gen_s = _timed(hf_generate) / 1000
        row_ms.append(1000 * row_s / ANSWER_TOKENS)
        gen_ms.append(1000 * gen_s / ANSWER_TOKENS)
        ratio.append(row_ms[-1] / gen_ms[-1])
    return {
        "answer_row_ms": statistics.median(row_ms),
        "generate_ms_per_token": statistics.median(gen_ms),
        "generate_prompt_tokens": prompt.shape[1],
        "generate_ratio": statistics.median(ratio),
    }


def _context_cost(model: Any, tokenizer: Any, context: int, config: Any, repeats: int) -> dict[str, Any]:
    """Paired timings that locate what a row pays for context (see the module docstring)."""
    grouped = _session_at_context(model, tokenizer, context, config)
    repeated = _session_at_context(model, tokenizer, context, config)
    repeated.backend._grouped = False  # transformers' own SDPA path: repeat_kv per layer
    grouped_ms, repeated_ms, ratio = _paired_ms(grouped.step, repeated.step, repeats)
    backend = grouped.backend
    C = model.num_streams
    positions = torch.full((backend.num_slots, C), context // C)
    seq = torch.arange(C).expand(backend.num_slots, -1)
    dest = backend.length[:, None] + seq
    span = int(backend.length.max()) + C
    plan = type("Plan", (), {"allowed": None})()
    mask_ms = statistics.median(
        _timed(lambda: backend._mask(positions, seq, dest, span, plan)) for _ in range(max(repeats, 3))
    )
    # What DynamicCache does per step and layer: concatenate the whole cache with the new keys.
    layers = backend.cache.layers
    k = layers[0].keys[:, :, :span]
    new = k[:, :, :C].clone()
    cat_ms = statistics.median(
        _timed(lambda: [torch.cat([k, new], 2) for _ in range(2 * len(layers))])
        for _ in range(max(repeats, 3))
    )
    return {
        "row_ms_grouped_attention": grouped_ms,
        "row_ms_repeat_kv": repeated_ms,
        "grouped_vs_repeat_kv": ratio,
        "mask_ms": mask_ms,
        "dynamic_cache_copy_ms": cat_ms,
    }


def format_table(results: dict[str, Any]) -> Any:
    """A rich table of :func:`run_decode_bench`'s results."""
    from rich.table import Table

    table = Table(
        title=f"decode on {results['model']} at {results['context_tokens']} context tokens, "
        f"{results['threads']} threads (median of {results['repeats']})",
        header_style="bold",
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("target / note")
    table.add_row("plain HF single-token step", f"{results['token_step_ms']:.1f} ms", "")
    for C, ms in results["row_ms"].items():
        r = results["row_vs_token_step_ratio"][C]
        table.add_row(
            f"multi-stream row, C={C}", f"{ms:.1f} ms", f"ratio {r:.2f}" + (" (<= 1.25)" if C == "3" else "")
        )
    fp = results["fastpath_c3"]
    table.add_row(
        "row C=3 without fast path", f"{fp['row_ms_without']:.1f} ms", f"fast/without {fp['ratio']:.2f}"
    )
    table.add_row(
        f"prefill {results['prefill_tokens']} tokens (rows x 3)",
        f"{results['prefill_ms']:.0f} ms",
        f"ratio {results['prefill_ratio']:.2f} vs HF {results['hf_prefill_ms']:.0f} ms (<= 1.15)",
    )
    for B, rps in results["batch_rows_per_s"].items():
        table.add_row(
            f"{B} batched sessions", f"{rps:.1f} rows/s", f"x{results['batch_speedup'][B]:.2f} vs 1"
        )
    if "batch8_speedup" in results:
        table.add_row("batch8_speedup", f"{results['batch8_speedup']:.2f}x", "(>= 3)")
    kv = results["kv_cache"]
    table.add_row(
        f"KV bytes/row, {kv['silence_share']:.0%} silence, keep",
        f"{kv['bytes_per_row_keep'] / 1024:.0f} KiB",
        f"row {kv['row_ms_keep']:.1f} ms",
    )
    table.add_row(
        "KV bytes/row, silence dropped",
        f"{kv['bytes_per_row_drop'] / 1024:.0f} KiB",
        f"row {kv['row_ms_drop']:.1f} ms, saves {kv['memory_saving']:.0%}",
    )
    head = results["lm_head_ms"]
    table.add_row(
        "LM head 1 / 3 rows F.linear",
        f"{head['linear_1_row']:.1f} / {head['linear_3_rows']:.1f} ms",
        f"fast path 3 rows {head['fastpath_3_rows']:.1f} ms "
        f"(diff vs 1-row results {results['fastpath_max_abs_diff_vs_single_rows']:.1e}, "
        f"F.linear's {results['linear_max_abs_diff_vs_single_rows']:.1e})",
    )
    if "generate_ratio" in results:
        table.add_row(
            "answer row (2 streams, merged LoRA) / HF generate token",
            f"{results['answer_row_ms']:.1f} / {results['generate_ms_per_token']:.1f} ms",
            f"generate_ratio {results['generate_ratio']:.2f} (<= 1.0)",
        )
    if "context_cost" in results:
        cc = results["context_cost"]
        table.add_row(
            "row C=3: grouped attention / transformers' repeat_kv",
            f"{cc['row_ms_grouped_attention']:.1f} / {cc['row_ms_repeat_kv']:.1f} ms",
            f"ratio {cc['grouped_vs_repeat_kv']:.2f}",
        )
        table.add_row(
            "mask / DynamicCache copy per step",
            f"{cc['mask_ms']:.2f} / {cc['dynamic_cache_copy_ms']:.1f} ms",
            "the slot cache writes in place",
        )
    table.caption = f"{results['seconds']:.0f} s in all"
    return table
