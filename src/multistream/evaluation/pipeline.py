"""The three evaluations end to end: load both systems and the data, run every example with a
progress bar (resumable), write ``results.json``, ``report.md`` and the plots.

Example:
    >>> from multistream.evaluation import EvalOptions, evaluate_latency
    >>> results = evaluate_latency(EvalOptions("demo", "runs/eval-latency", limit=20))  # doctest: +SKIP
    >>> results["model"]["ttft_s_from_first_input"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import write_report

__all__ = ["EvalOptions", "evaluate_accuracy", "evaluate_injection", "evaluate_latency"]


@dataclass
class EvalOptions:
    """What every evaluation needs (``multistream eval`` flags of the same names).

    Args:
        model: multi-stream model (``demo``, a saved directory, or a base model to wrap).
        out: run directory (results, report, plots, per-example cache).
        baseline: sequential model; None = the model's own base model.
        limit: examples (per task, per attack).
        max_new_tokens: generation budget after the input, the same for both systems (None:
            the task's own, or 64).
        schema: stream spec when ``model`` is a base model.
        stop_silent_rows: the multi-stream stop rule after the input ends (None: the model's
            decoding presets, as in ``generate``, ``chat`` and ``serve``).
        silence_penalty: output silence penalty after the input (None: the model's presets;
            0 = plain greedy).
        threads: torch CPU threads (default: torch's choice); recorded with the settings.
        data_dir: folder of the shared data sets (default: ``tasks.default_data_dir()``).
        progress: show a progress bar.
    """

    model: str
    out: str | Path
    baseline: str | None = None
    limit: int | None = 20
    max_new_tokens: int | None = None
    schema: str | None = None
    stop_silent_rows: int | None = None
    silence_penalty: float | None = None
    threads: int | None = None
    data_dir: str | Path | None = None
    progress: bool = True

    @property
    def data_root(self) -> Path:
        from .tasks import default_data_dir

        return Path(self.data_dir) if self.data_dir else default_data_dir()


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar whose ``update(label, done, total)`` keeps one bar per label."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        bars: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = bar.add_task(label, total=total)
            bar.update(bars[label], completed=done)

        yield update


def _load(options: EvalOptions, max_new_tokens: int) -> Any:
    from .systems import load_systems

    if options.threads is not None:
        import torch

        # Timings depend on it; on a shared CPU one thread avoids oversubscription stalls.
        torch.set_num_threads(options.threads)
    return load_systems(
        options.model,
        options.baseline,
        options.schema,
        max_new_tokens,
        options.stop_silent_rows,
        options.silence_penalty,
    )


def _settings(options: EvalOptions, systems: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": systems.model_name,
        "baseline": systems.baseline_name,
        "schema": ",".join(systems.model.schema.names),
        "max_new_tokens": options.max_new_tokens,
        # The settings the model decoded with: its presets under the options given.
        "stop_silent_rows": systems.model.stop_silent_rows,
        "silence_penalty": systems.model.silence_penalty,
        "decoding": {k: v for k, v in systems.model.presets.to_dict().items() if k != "format_version"},
        "threads": options.threads,
        "notes": systems.notes,
        **extra,
    }


def evaluate_latency(options: EvalOptions, task: str = "squad", rate: float | None = None) -> dict[str, Any]:
    """Latency of the model against the baseline on a task's prompts (every metric is defined
    in :mod:`multistream.evaluation.latency`).

    Args:
        options: the common options.
        task: whose prompts to feed (their lengths spread the TTFT plot).
        rate: input tokens per second; None = lockstep (one token per row).

    Returns:
        the results (also in ``options.out/results.json``).
    """
    from .latency import run_latency
    from .tasks import get_task, load_task_examples

    systems = _load(options, options.max_new_tokens or get_task(task).max_new_tokens)
    examples = load_task_examples(task, options.data_root, options.limit)
    settings = _settings(options, systems, kind="latency", task=task, rate=rate)
    with _progress(options.progress) as update:
        results = run_latency(
            systems,
            examples,
            options.out,
            settings,
            rate=rate,
            progress=(lambda d, n: update(f"latency {task}", d, n)) if update else None,
        )
    write_report(results, options.out)
    return results


def evaluate_accuracy(options: EvalOptions, tasks: list[str] | None = None) -> dict[str, Any]:
    """Task accuracy of the model and the baseline with the paper's prompts and scoring.

    Args:
        options: the common options (``max_new_tokens`` None = each task's own budget).
        tasks: task names (default: every registered task).

    Returns:
        the results (also in ``options.out/results.json``).
    """
    from .accuracy import run_accuracy
    from .tasks import TASKS, get_task, load_task_examples

    names = tasks or list(TASKS)
    for name in names:
        get_task(name)  # unknown names fail before any model loads
    task_examples = {name: load_task_examples(name, options.data_root, options.limit) for name in names}
    systems = _load(options, options.max_new_tokens or 64)
    settings = _settings(options, systems, kind="accuracy")
    merged: dict[str, Any] = {"kind": "accuracy", "settings": settings, "tasks": {}, "timeline": None}
    with _progress(options.progress) as update:
        for name, examples in task_examples.items():
            # Each task brings its own budget unless one was given for all.
            budget = options.max_new_tokens or get_task(name).max_new_tokens
            systems.model.max_new_tokens = systems.baseline.max_new_tokens = budget
            part = run_accuracy(
                systems,
                {name: examples},
                options.out,
                settings,
                progress=(lambda t, d, n: update(f"accuracy {t}", d, n)) if update else None,
            )
            merged["tasks"].update(part["tasks"])
            merged["timeline"] = merged["timeline"] or part["timeline"]
    write_report(merged, options.out)
    return merged


def evaluate_injection(
    options: EvalOptions,
    attacks: list[str] | None = None,
    domain: str = "id",
    benchmark: str = "struq",
    batch_size: int = 1,
) -> dict[str, Any]:
    """Attack success (StruQ, "Print exactly 'Hacked!'") of the model and the baseline.

    Args:
        options: the common options (``max_new_tokens`` None = 64).
        attacks: conditions (default: ``none`` plus the four attacks of
            :data:`~multistream.evaluation.injection.ATTACKS`).
        domain: ``id`` (attack after the data) or ``ood`` (before and after).
        benchmark: ``struq`` (the StruQ held-out set) or ``sep`` (SEP probes and witnesses;
            attacks ``none`` and ``probe``).
        batch_size: examples decoded together (Layout B models; the text of a lone run, the
            seconds of the batch: :mod:`~multistream.evaluation.batched`).

    Returns:
        the results (also in ``options.out/results.json``).
    """
    from .injection import (
        ATTACKS,
        BENCHMARKS,
        SEP_ATTACKS,
        load_injection_examples,
        load_sep_examples,
        run_injection,
    )

    if benchmark not in BENCHMARKS:
        raise ValueError(f"--benchmark {benchmark!r} is unknown; choose from {', '.join(BENCHMARKS)}")
    sep = benchmark == "sep"
    conditions = attacks or ["none", *(SEP_ATTACKS if sep else ATTACKS)]
    load = load_sep_examples if sep else load_injection_examples
    examples = load(options.data_root, options.limit)
    systems = _load(options, options.max_new_tokens or 64)
    # Only non-default choices join the settings, so earlier struq runs still resume.
    extra = {"benchmark": benchmark} if sep else {}
    if batch_size > 1:
        extra["batch_size"] = batch_size
        systems.notes.append(
            f"decoded {batch_size} examples at a time: texts as alone, seconds are the batch's, not latencies"
        )
    settings = _settings(options, systems, kind="injection", attacks=conditions, domain=domain, **extra)
    with _progress(options.progress) as update:
        results = run_injection(
            systems,
            examples,
            options.out,
            settings,
            conditions,
            domain,
            progress=(lambda a, d, n: update(f"injection {a}", d, n)) if update else None,
            benchmark=benchmark,
            batch_size=batch_size,
        )
    write_report(results, options.out)
    return results
