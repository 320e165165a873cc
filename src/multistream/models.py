"""Compatibility module: base-model loading moved to :mod:`multistream.loading`.

``from multistream.models import load_tokenizer`` (and every other name below) keeps working.
"""

from __future__ import annotations

from .loading import (
    CACHE_ENV,
    DEMO_MODEL,
    EMBEDDED_MODELS,
    MULTISTREAM_MODELS,
    BaseModelError,
    EmbeddedModel,
    cache_root,
    check_saved_model,
    demo_model_dir,
    load_base,
    load_tokenizer,
    resolve_base,
    resolve_multistream,
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
