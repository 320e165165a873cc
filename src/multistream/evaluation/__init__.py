"""Evaluation: latency, task accuracy and injection robustness of a multi-stream model against
its sequential baseline, measured side by side in one run (``multistream eval ...``).

Modules: ``metrics`` (pure scoring rules), ``tasks/`` (one module per benchmark, registry),
``runners`` (the two systems, timed), ``systems`` (loading ``--model`` and ``--baseline``),
``latency``, ``accuracy``, ``injection`` (one evaluation each), ``store`` (per-example cache for
resuming), ``report`` (JSON, Markdown, plots) and ``pipeline`` (the three entry points);
``monitorability`` (paper Sec 7: what an LLM judge reading the thinking streams can see).
Imports are lazy: ``import multistream.evaluation`` loads no model code.
"""

from __future__ import annotations

__all__ = [
    "EvalOptions",
    "evaluate_accuracy",
    "evaluate_injection",
    "evaluate_latency",
    "evaluate_monitorability",
]


def __getattr__(name: str):
    if name == "evaluate_monitorability":
        from . import monitorability

        return monitorability.evaluate_monitorability
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'multistream.evaluation' has no attribute {name!r}")
