"""Accuracy benchmarks of spec §5.1, one module each, behind a registry.

A :class:`Task` bundles everything one benchmark needs: its **loader** (a format of
``multistream.data.loaders``, named by ``format``, or its own ``loader`` function), its
**prompt** (the function that writes the user text the model sees; the loaders call the same
functions of ``multistream.data.prompts``, so training and evaluation prompts agree), the
selection of the evaluated examples, a generation budget and its **scorer**. Add a benchmark by
adding one module to this package that calls :func:`register_task`: every module here is
imported on first use, and the CLI lists the registry (:data:`TASKS`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...data.examples import SequentialExample

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "Task",
    "TaskError",
    "default_data_dir",
    "get_task",
    "load_task_examples",
    "register_task",
    "task_names",
]

DATA_DIR_ENV = "MULTISTREAM_DATA_DIR"

# scorer(output text, example) -> {"correct": 0/1, ...}; the task's `primary` key is the headline.
Scorer = Callable[[str, SequentialExample], dict[str, float | str | None]]
Selector = Callable[[list[SequentialExample], Path], list[SequentialExample]]
# loader(path) -> examples whose `user` is the task's prompt and `answer` the gold answer.
Loader = Callable[[Path], list[SequentialExample]]


class TaskError(ValueError):
    """Unknown task or missing data; the message says what to pass."""


@dataclass(frozen=True)
class Task:
    """One accuracy benchmark: loader, prompt and scorer together.

    Args:
        name: the ``--tasks`` value.
        path: data file relative to the data directory (``squad/dev-v1.1.jsonl``); an absolute
            path (a file shipped with the package) stays itself.
        format: loader format (``multistream.data.loaders.FORMATS``); used when ``loader`` is None.
        score: scorer of one output; returns the ``primary`` metric and any others.
        primary: headline metric (``accuracy`` or ``f1``), in [0, 1].
        max_new_tokens: default generation budget after the input.
        select: picks the evaluated examples from all loaded ones (e.g. a fixed sample);
            gets the data directory for side files. None keeps all, in file order.
        prompt: the function that writes the user text from a record's fields (None: the
            record's own text is the prompt, as in chat and instruction data).
        loader: reads the data file into examples; None: ``format``'s loader, skipping
            malformed records.
        description: one line for ``--help`` and reports.
    """

    name: str
    path: str
    format: str
    score: Scorer
    primary: str = "accuracy"
    max_new_tokens: int = 64
    select: Selector | None = None
    prompt: Callable[..., str] | None = None
    loader: Loader | None = None
    description: str = ""

    def load(self, data_dir: Path | None = None, limit: int | None = None) -> list[SequentialExample]:
        """The evaluated examples, in evaluation order (see :func:`load_task_examples`)."""
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        path = root / self.path
        if not path.is_file():
            raise TaskError(
                f"task {self.name!r}: data file {path} not found; pass --data-dir (or set {DATA_DIR_ENV}) "
                "to the folder that holds it"
            )
        if self.loader is not None:
            examples = self.loader(path)
        else:
            from ...data.loaders import load_dataset_file

            examples = load_dataset_file(path, self.format, skip_bad=True)
        if self.select is not None:
            examples = self.select(examples, root)
        return examples[:limit] if limit is not None else examples


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to :data:`TASKS`; a duplicate name or an unknown loader format is an error."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    if task.loader is None:
        from ...data.loaders import FORMATS

        if task.format not in FORMATS:
            raise ValueError(
                f"task {task.name!r}: loader format {task.format!r} is unknown ({', '.join(sorted(FORMATS))}); "
                "register it in multistream.data.loaders or pass loader="
            )
    TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """Registered task names, in ``--tasks all`` order."""
    return list(TASKS)


def default_data_dir() -> Path:
    """``$MULTISTREAM_DATA_DIR``, else the first of ``../shared/data`` and ``shared/data`` that
    exists (relative to the working directory)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    for candidate in (Path("../shared/data"), Path("shared/data")):
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def get_task(name: str) -> Task:
    """The registered task of that name; an unknown name lists the registry (closest first)."""
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"unknown task {name!r}{hint}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def load_task_examples(
    name: str, data_dir: Path | None = None, limit: int | None = None
) -> list[SequentialExample]:
    """The evaluated examples of a task, in evaluation order.

    Args:
        name: a registered task.
        data_dir: directory holding the task's file (default :func:`default_data_dir`).
        limit: keep the first ``limit`` selected examples.

    Returns:
        examples whose ``user`` is the paper's prompt and ``answer`` the gold answer.
    """
    return get_task(name).load(data_dir, limit)


# Every module of this package registers its task on import; alphabetical order is also the
# order of `--tasks all`. A new benchmark is one new module here, nothing else to edit.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
