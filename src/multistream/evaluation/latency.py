"""Latency of the multi-stream model against the sequential baseline, measured in one run.

Input arrives token by token, at ``rate`` tokens per second or in lockstep with the model's
rows (see :mod:`multistream.evaluation.runners` for the clock). For every example both systems
run back to back on the same arrival schedule, and each output gets:

``ttft_rows``
    row of the first visible output token, counting the first input token's row as 0
    (baseline: the sequential form, first generated token at row ``E``).
``ttft_rows_from_last_input``
    the same, counted from the last input row (negative: the model spoke before the input
    ended).
``ttft_s_from_first_input`` / ``ttft_s_from_last_input``
    seconds from the first / last input token's arrival to the first visible output token.
``e2e_s`` / ``e2e_s_from_last_input``
    seconds from the first / last input token's arrival to the final output token.
``e2e_rows_from_last_input``
    rows from the last input row to the end of the answer (the row of the end token, or of the
    last output token without one): how much the user waits once they have finished, in model
    steps (baseline: its generated tokens, end token included). With ``e2e_s_from_last_input``
    the headline of a model that thinks while it reads (issue 12).
``average_lagging``
    AL (:func:`~multistream.evaluation.metrics.average_lagging`) in input tokens read;
    ``average_lagging_s`` the same with delays in seconds since the first input.
``output_tokens_per_s``
    output tokens written after the last input token arrived, per second from then to the
    final token: how fast the answer streams once the user has finished.
``ttft_answer_rows``, ``ttft_answer_s_from_first_input``, ``ttft_answer_s_from_last_input``
    the same as the TTFT keys for the first visible token *after* a leading bridging utterance
    (``runners.strip_bridging``): when the answer itself starts. Equal to TTFT for the
    baseline, which has no bridging utterance.
``ended_before_input_end``
    1 when the multi-stream model wrote its end token before it had read the whole input
    (the session stops there; the unread input is assumed to keep arriving at the observed
    pace, see ``TimedOutput.last_input_s``).

Visible means the token's text is not only whitespace; a bridging utterance ("Sure, let me
think.") counts as output, as the user sees it. Aggregates are means over the examples that
produced output; ``no_output`` counts the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from statistics import mean, median
from typing import Any

from .metrics import average_lagging
from .runners import TimedOutput, timeline_of

__all__ = [
    "CONTRACT_KEYS",
    "LATENCY_KEYS",
    "MEDIAN_KEYS",
    "aggregate_latency",
    "latency_metrics",
    "run_latency",
]

# Keys every latency results.json holds for "model" and "baseline" (stable contract).
CONTRACT_KEYS: tuple[str, ...] = (
    "ttft_rows",
    "ttft_s_from_first_input",
    "ttft_s_from_last_input",
    "e2e_s",
    "average_lagging",
)
LATENCY_KEYS: tuple[str, ...] = (
    *CONTRACT_KEYS,
    "ttft_rows_from_last_input",
    "e2e_s_from_last_input",
    "average_lagging_s",
    "output_tokens",
    "output_tokens_per_s",
    "input_tokens",
    "ended_before_input_end",
    "ttft_answer_rows",
    "ttft_answer_s_from_first_input",
    "ttft_answer_s_from_last_input",
    "e2e_rows_from_last_input",
)
# Keys that also get medians and per-example median ratios: the contract keys, then the waits
# after the last input token (added for issue 12; extend, never reorder).
MEDIAN_KEYS: tuple[str, ...] = (*CONTRACT_KEYS, "e2e_s_from_last_input", "e2e_rows_from_last_input")


def latency_metrics(out: TimedOutput) -> dict[str, float | None]:
    """Per-example latency numbers of one output (None where there was no visible output).

    Args:
        out: a :class:`TimedOutput` from either runner.

    Returns:
        a dict with every key of :data:`LATENCY_KEYS`.
    """
    first_in = out.input_arrivals_s[0] if out.input_arrivals_s else 0.0
    last_in = out.last_input_s
    last_row = out.input_tokens - 1
    visible = [i for i, v in enumerate(out.token_visible) if v]
    metrics: dict[str, float | None] = dict.fromkeys(LATENCY_KEYS)
    metrics["input_tokens"] = out.input_tokens
    metrics["output_tokens"] = len(out.token_rows)
    if visible:
        i = visible[0]
        metrics["ttft_rows"] = out.token_rows[i]
        metrics["ttft_rows_from_last_input"] = out.token_rows[i] - last_row
        metrics["ttft_s_from_first_input"] = out.token_times_s[i] - first_in
        metrics["ttft_s_from_last_input"] = out.token_times_s[i] - last_in
    answer = out.first_answer_token()
    if answer is not None:
        metrics["ttft_answer_rows"] = out.token_rows[answer]
        metrics["ttft_answer_s_from_first_input"] = out.token_times_s[answer] - first_in
        metrics["ttft_answer_s_from_last_input"] = out.token_times_s[answer] - last_in
    if out.end_s is not None and out.token_rows:
        metrics["e2e_s"] = out.end_s - first_in
        metrics["e2e_s_from_last_input"] = out.end_s - last_in
    if out.end_row is not None and out.token_rows:
        metrics["e2e_rows_from_last_input"] = out.end_row - last_row
    if out.token_rows:
        metrics["average_lagging"] = average_lagging(out.token_reads, out.input_tokens)
        metrics["average_lagging_s"] = average_lagging(
            [t - first_in for t in out.token_times_s], last_in - first_in
        )
        after = sum(t > last_in for t in out.token_times_s)
        if after and out.end_s is not None and out.end_s > last_in:
            metrics["output_tokens_per_s"] = after / (out.end_s - last_in)
    metrics["ended_before_input_end"] = float(out.ended_before_input_end)
    return metrics


def aggregate_latency(per_example: Iterable[dict[str, float | None]]) -> dict[str, Any]:
    """Means (and medians of :data:`MEDIAN_KEYS`) over examples; None-valued entries skipped.

    Returns:
        ``{key: mean, "median": {key: median}, "examples": n, "no_output": n}``.
    """
    rows = list(per_example)
    out: dict[str, Any] = {"examples": len(rows), "no_output": sum(r["ttft_rows"] is None for r in rows)}
    medians: dict[str, float | None] = {}
    for key in LATENCY_KEYS:
        values = [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]
        out[key] = mean(values) if values else None
        if key in MEDIAN_KEYS:
            medians[key] = median(values) if values else None
    out["median"] = medians
    return out


def _ratios(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    ratios: dict[str, float | None] = {}
    for key in LATENCY_KEYS:
        a, b = model.get(key), baseline.get(key)
        # Times from the last input can be negative (the model spoke early): no ratio then.
        ratios[key] = a / b if a is not None and b is not None and a >= 0 and b > 0 else None
    return ratios


def _median_ratios(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per key of :data:`MEDIAN_KEYS`, the median over examples of model / baseline. Both systems
    of one example run back to back, so on a shared, noisy CPU this is steadier than a ratio of
    means."""
    out: dict[str, float | None] = {}
    for key in MEDIAN_KEYS:
        values = [
            a / b
            for r in records
            if (a := r["model"]["metrics"].get(key)) is not None
            and (b := r["baseline"]["metrics"].get(key)) is not None
            and a >= 0
            and b > 0
        ]
        out[key] = median(values) if values else None
    return out


def run_latency(
    systems: Any,
    examples: list[Any],
    out_dir: str | Path,
    settings: dict[str, Any],
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure both systems on every example (cached per example) and aggregate.

    Args:
        systems: :class:`~multistream.evaluation.systems.Systems`.
        examples: the examples (their input fields are the input text).
        out_dir: run directory (resumable, see :class:`~multistream.evaluation.store.ResultStore`).
        settings: run settings (stored; must match on resume).
        rate: input tokens per second, or None for lockstep.
        progress: called with ``(done, total)`` after each example.

    Returns:
        the results dict written to ``results.json`` (see :func:`report.write_report`).
    """
    from .store import ResultStore

    store = ResultStore(out_dir, settings)
    records = []
    for k, example in enumerate(examples):
        key = f"latency:{example.source}:{example.id}"
        record = store.get(key)
        if record is None:
            ms = systems.model.run(example, rate=rate)
            bl = systems.baseline.run(
                example, ms.input_tokens, rate=rate, last_input_s=ms.last_input_s if rate is None else None
            )
            timeline = timeline_of(ms, bl, example.id) if k == 0 else None
            ms.timeline = None  # the record keeps one timeline (the first example's), for the picture
            record = {
                "id": example.id,
                "source": example.source,
                "model": {"output": ms.to_json(), "metrics": latency_metrics(ms)},
                "baseline": {"output": bl.to_json(), "metrics": latency_metrics(bl)},
                "timeline": timeline,
            }
            store.put(key, record)
        records.append(record)
        if progress is not None:
            progress(k + 1, len(examples))
    for r in records:
        # Metrics are recomputed from the stored outputs, so cached runs follow the definitions.
        for side in ("model", "baseline"):
            r[side]["metrics"] = latency_metrics(TimedOutput.from_json(r[side]["output"]))
    model = aggregate_latency(r["model"]["metrics"] for r in records)
    baseline = aggregate_latency(r["baseline"]["metrics"] for r in records)
    return {
        "kind": "latency",
        "settings": settings,
        "model": model,
        "baseline": baseline,
        "ratio_model_over_baseline": _ratios(model, baseline),
        "median_per_example_ratio": _median_ratios(records),
        "examples": [
            {
                "id": r["id"],
                "model": r["model"]["metrics"],
                "baseline": r["baseline"]["metrics"],
                "model_text": r["model"]["output"]["text"],
                "baseline_text": r["baseline"]["output"]["text"],
            }
            for r in records
        ],
        "timeline": records[0].get("timeline") if records else None,
    }
