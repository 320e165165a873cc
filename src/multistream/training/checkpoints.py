"""Which checkpoint ``--resume`` continues from: the newest one that is whole.

A run killed while it writes a checkpoint, or a disk that filled up, leaves a checkpoint with a
truncated adapter, optimizer state or ``trainer_state.json``. The Trainer would fail on it with
an error that names neither the checkpoint nor the fix; here every checkpoint is checked first
(headers and archive directories only, milliseconds), a damaged one is named, and the previous
whole one is used instead. Nothing is deleted: the damaged directory stays for inspection and
is overwritten when training reaches its step again.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from ..integrity import json_problem, safetensors_problem, torch_file_problem
from .config import TrainConfigError

__all__ = ["CheckpointWarning", "checkpoint_problem", "choose_resume_checkpoint"]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What the Trainer writes besides the model: resuming needs each one whole when it is present.
_TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is damaged; the message names it and why."""


def checkpoint_problem(directory: str | os.PathLike[str]) -> str | None:
    """Why a Trainer checkpoint directory cannot be resumed from, or None when it is whole."""
    root = Path(directory)
    if not root.is_dir():
        return f"{root} is not a directory"
    problem = json_problem(root / "trainer_state.json")
    if problem is None:
        import json

        state = json.loads((root / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            problem = f"{root / 'trainer_state.json'} has no integer global_step"
    if problem is not None:
        return problem
    from ..model import CONFIG_NAME, STREAM_EMBEDDING_NAME

    for required in (CONFIG_NAME, STREAM_EMBEDDING_NAME):
        if not (root / required).is_file():
            return f"{root / required} is missing"
    if (problem := json_problem(root / CONFIG_NAME)) is not None:
        return problem
    weights = sorted(root.rglob("*.safetensors"))
    for path in weights:
        if (problem := safetensors_problem(path)) is not None:
            return problem
    for name in _TORCH_FILES:
        if (root / name).exists() and (problem := torch_file_problem(root / name)) is not None:
            return problem
    for path in sorted(root.glob("rng_state*.pth")):
        if (problem := torch_file_problem(path)) is not None:
            return problem
    return None


def choose_resume_checkpoint(output_dir: str | os.PathLike[str], requested: str | bool | None) -> str | None:
    """The checkpoint to resume from.

    Args:
        output_dir: the run directory holding ``checkpoint-N`` folders.
        requested: True for the newest whole checkpoint in ``output_dir`` (a damaged newer one
            is skipped with a :class:`CheckpointWarning` naming it); a directory to use exactly
            that one; None or False for a fresh start.

    Returns:
        A checkpoint directory, or None to start fresh (``requested`` True and no checkpoint yet).

    Raises:
        TrainConfigError: the requested directory is damaged, or every checkpoint is.
    """
    if not requested:
        return None
    if requested is not True:
        problem = checkpoint_problem(requested)
        if problem is not None:
            raise TrainConfigError(
                f"cannot resume from {requested}: {problem}; pick another checkpoint, or use --resume "
                "to take the newest whole one"
            )
        return str(requested)
    root = Path(output_dir)
    found = sorted(
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else ())
        if (m := _CHECKPOINT_RE.match(p.name))
    )
    damaged: list[str] = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                warnings.warn(
                    f"skipping damaged checkpoint(s): {'; '.join(damaged)}. Resuming from {path} instead "
                    "(the damaged directories are kept and overwritten when training reaches their step)",
                    CheckpointWarning,
                    stacklevel=3,
                )
            return str(path)
        damaged.append(f"{path.name} ({problem})")
    if damaged:
        raise TrainConfigError(
            f"no whole checkpoint to resume from in {root}: {'; '.join(damaged)}. Move them away to start "
            "fresh, or train without --resume into another output_dir"
        )
    return None
