"""Loading models by name: base models (re-exported from :mod:`multistream.base_models`) and
named or saved multi-stream models for the CLI, the server and evaluation.

Layering: :mod:`~multistream.base_models` (no multi-stream code) <- :mod:`~multistream.model`
(which loads its base through it) <- this module (which builds ``MultiStreamLM`` objects), so
no import cycle runs through here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base_models import (
    CACHE_ENV,
    EMBEDDED_MODELS,
    BaseModelError,
    EmbeddedModel,
    cache_root,
    load_base,
    load_tokenizer,
    resolve_base,
)

__all__ = [
    "CACHE_ENV",
    "DEMO_MODEL",
    "EMBEDDED_MODELS",
    "MULTISTREAM_MODELS",
    "BaseModelError",
    "EmbeddedModel",
    "cache_root",
    "check_saved_model",
    "demo_model_dir",
    "load_base",
    "load_tokenizer",
    "resolve_base",
    "resolve_multistream",
]


# Named multi-stream models (saved MultiStreamLM directories), resolved by `--model NAME`.
# Each entry maps a name to a function returning the directory; the shipped demo model
# registers here.
MULTISTREAM_MODELS: dict[str, Callable[[], Path]] = {}

DEMO_MODEL = "demo"


def demo_model_dir() -> Path:
    """Directory of the demo model shipped inside the package: SmolLM2-135M + a LoRA adapter
    and stream embedding trained on 2-stream wait-k grids of the base's own answers
    (recipes/demo-distill-lora.yaml, docs/models.md). It needs only the embedded base model, so
    it loads offline."""
    path = Path(__file__).parent / "demo"
    if not (path / "multistream_config.json").is_file():
        raise BaseModelError(
            f"the demo model is missing from {path}: reinstall multistream (the files ship as package data)"
        )
    return path


MULTISTREAM_MODELS[DEMO_MODEL] = demo_model_dir

# More shipped models (issue 12; docs/models.md), each a saved directory under ``zoo/``: the
# sequential twins that ``multistream eval --baseline NAME`` compares against, and the models
# of the other claims. Like the demo they hold only adapters and reference the embedded base.
# Found by listing the folder, so shipping a model is copying its saved directory there.
ZOO_MODELS: tuple[str, ...] = tuple(
    sorted(
        p.name for p in (Path(__file__).parent / "zoo").iterdir() if (p / "multistream_config.json").is_file()
    )
    if (Path(__file__).parent / "zoo").is_dir()
    else ()
)


def _zoo_model_dir(name: str) -> Callable[[], Path]:
    def find() -> Path:
        path = Path(__file__).parent / "zoo" / name
        if not (path / "multistream_config.json").is_file():
            raise BaseModelError(
                f"the model {name!r} is missing from {path}: reinstall multistream (the files ship as package data)"
            )
        return path

    return find


for _name in ZOO_MODELS:
    MULTISTREAM_MODELS[_name] = _zoo_model_dir(_name)

# The names the distilled demo and its twin were trained and measured under (docs/results.md).
MULTISTREAM_MODELS["demo-distill"] = demo_model_dir
MULTISTREAM_MODELS["demo-distill-twin"] = MULTISTREAM_MODELS["demo-twin"]


def check_saved_model(directory: str | os.PathLike[str]) -> None:
    """Fail with the file named when a saved multi-stream model is incomplete.

    Reads only the headers of its safetensors files (milliseconds): a truncated adapter or
    stream embedding would otherwise fail inside safetensors with no file named.

    Raises:
        BaseModelError: naming the damaged file and what to do.
    """
    from .integrity import json_problem, safetensors_problem
    from .model import CONFIG_NAME

    root = Path(directory)
    problems = [json_problem(root / CONFIG_NAME)]
    problems += [safetensors_problem(f) for f in sorted(root.rglob("*.safetensors"))]
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise BaseModelError(
            f"the saved model {root} is damaged: {problem}. Copy the directory again, or save it again "
            "(multistream train writes final/, multistream export a merged copy)"
        )


def resolve_multistream(name_or_path: str | os.PathLike[str], schema: str | None = None) -> tuple[Any, Any]:
    """Load a multi-stream model and its tokenizer for the CLI and the server.

    Args:
        name_or_path: a registered name (:data:`MULTISTREAM_MODELS`), a directory written by
            ``MultiStreamLM.save_pretrained``, or a base model (embedded name or local HF
            directory) to wrap with an untrained stream embedding.
        schema: stream spec such as ``"user,assistant"``; required for a base model, must be
            None for a saved multi-stream model (it carries its own).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode and any LoRA adapter merged.
    """
    from .model import CONFIG_NAME, MultiStreamLM
    from .schema import StreamSchema

    name = str(name_or_path)
    if name in MULTISTREAM_MODELS:
        name = str(MULTISTREAM_MODELS[name]())
    path = Path(name).expanduser()
    if (path / CONFIG_NAME).is_file():
        if schema is not None:
            raise BaseModelError(
                f"{path} is a saved multi-stream model with its own schema; drop --schema {schema!r}"
            )
        check_saved_model(path)
        # Loaded for decoding, not training: a LoRA adapter runs merged (MultiStreamLM.merge_adapter).
        return MultiStreamLM.from_pretrained(path).merge_adapter(), MultiStreamLM.load_tokenizer(path)
    from .authors.format import is_authors_dir

    if is_authors_dir(path):
        # The paper authors' format (Stream-8B/27B): a trained 10-stream embedding that a base
        # load would drop. Load it as what it is, with its fixed schema.
        if schema is not None:
            raise BaseModelError(
                f"{path} is a multi-stream model in the paper authors' format with a fixed 10-stream "
                f"schema; drop --schema {schema!r}"
            )
        from .authors import load_authors

        return load_authors(path)
    if schema is None:
        known = ", ".join(MULTISTREAM_MODELS) or "none registered"
        raise BaseModelError(
            f"{name!r} is not a saved multi-stream model (named models: {known}); to wrap a base "
            "model with an untrained stream embedding, also pass a schema, e.g. --schema user,assistant"
        )
    base, tokenizer = load_base(name)
    model = MultiStreamLM.from_base(base, StreamSchema.parse(schema), tokenizer)
    return model.eval(), tokenizer
