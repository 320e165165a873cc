"""Loading the pair of systems an evaluation compares: ``--model`` and ``--baseline``.

``--model`` is a multi-stream model: a registered name (``demo``; the names are
:data:`multistream.loading.MULTISTREAM_MODELS`), a directory written by
``MultiStreamLM.save_pretrained``, or a base model wrapped with an untrained stream embedding
(``--schema``, default ``user,assistant``; labelled *untrained* in every report).

``--baseline`` is a sequential model: a base model (embedded name or HF directory), or a
one-stream model saved by the sequential trainer (``multistream.training``, ``form:
sequential``), whose base (with its adapter) is exactly the baseline LM. Without
``--baseline``, the model's own base model is used, run with its chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blocks_runner import BlocksRunner, is_blocks_runner_model
from .runners import MultiStreamRunner, SequentialRunner

__all__ = ["DEFAULT_SCHEMA", "Systems", "load_systems"]

DEFAULT_SCHEMA = "user,assistant"


@dataclass
class Systems:
    """The two runners and how to name them in reports.

    Args:
        model, baseline: the runners.
        model_name, baseline_name: what the user passed (or the resolved base reference).
        notes: facts a reader of the results must know (untrained wrapper, shared base...).
    """

    model: MultiStreamRunner
    baseline: SequentialRunner
    model_name: str
    baseline_name: str
    notes: list[str] = field(default_factory=list)


def _is_saved_multistream(name: str) -> bool:
    from ..loading import MULTISTREAM_MODELS
    from ..model import CONFIG_NAME

    return name in MULTISTREAM_MODELS or (Path(name).expanduser() / CONFIG_NAME).is_file()


def _load_baseline(name: str) -> tuple[Any, Any]:
    """A sequential LM and its tokenizer from a base model or a one-stream saved model."""
    from ..loading import load_base
    from ..model import MultiStreamLM

    if _is_saved_multistream(name):
        from ..loading import resolve_multistream

        wrapped, tokenizer = resolve_multistream(name)
        if wrapped.num_streams != 1:
            raise ValueError(
                f"--baseline {name!r} is a {wrapped.num_streams}-stream model {wrapped.schema.names}; "
                "a baseline must be sequential: pass a base model or a model trained with form: sequential"
            )
        if bool(wrapped.stream_embedding.weight.abs().max() > 0):
            raise ValueError(
                f"--baseline {name!r} has a non-zero stream embedding, so its base LM alone is not the "
                "trained model; train the baseline with form: sequential (which keeps it zero)"
            )
        assert isinstance(wrapped, MultiStreamLM)
        return wrapped.base_model.eval(), tokenizer
    model, tokenizer = load_base(name)
    if tokenizer is None:
        raise ValueError(
            f"--baseline {name!r} has no tokenizer files; save its tokenizer next to the weights"
        )
    return model, tokenizer


def load_systems(
    model: str,
    baseline: str | None = None,
    schema: str | None = None,
    max_new_tokens: int = 64,
    stop_silent_rows: int | None = None,
    silence_penalty: float | None = None,
) -> Systems:
    """Load ``--model`` and ``--baseline`` (see the module docstring).

    Args:
        model: multi-stream model name or directory, or a base model to wrap.
        baseline: sequential model, or None for the model's own base model.
        schema: stream spec when ``model`` is a base model (default ``user,assistant``).
        max_new_tokens: generation budget after the input, shared by both systems.
        stop_silent_rows: the multi-stream runner's silence stop rule (None: the model's
            decoding presets, like every other decoding setting).
        silence_penalty: the multi-stream runner's output silence penalty after the input
            (None: the model's decoding presets).

    Returns:
        :class:`Systems`.
    """
    from ..loading import resolve_multistream

    notes: list[str] = []
    if _is_saved_multistream(model):
        if schema is not None:
            raise ValueError(
                f"--model {model!r} is a saved multi-stream model with its own schema; drop --schema"
            )
        ms_model, ms_tokenizer = resolve_multistream(model)
    else:
        spec = schema or DEFAULT_SCHEMA
        ms_model, ms_tokenizer = resolve_multistream(model, spec)
        notes.append(
            f"--model {model!r} is a base model wrapped with an untrained stream embedding (schema {spec}): "
            "it was never trained on multi-stream grids, so its scores show the wrapper, not the method"
        )
    if baseline is None:
        reference = ms_model.config.base_model
        if not reference:
            raise ValueError(
                f"--model {model!r} records no base model to use as the baseline; pass --baseline"
            )
        baseline = str(reference)
        notes.append(
            f"baseline: the model's own base model {baseline!r}, run sequentially with its chat template"
        )
    base_model, base_tokenizer = _load_baseline(baseline)
    # A Layout B model reads blocks, not grid columns: every task runs it through BlocksRunner.
    runner_class = BlocksRunner if is_blocks_runner_model(ms_model) else MultiStreamRunner
    return Systems(
        model=runner_class(ms_model, ms_tokenizer, max_new_tokens, stop_silent_rows, silence_penalty),
        baseline=SequentialRunner(base_model, base_tokenizer, max_new_tokens),
        model_name=model,
        baseline_name=baseline,
        notes=notes,
    )
