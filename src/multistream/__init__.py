"""multistream: turn decoder-only language models into multi-stream language models.

The public names below load their modules on first use, so ``import multistream`` (and the
``multistream --help`` command) stays fast and does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .engine import Session, SessionConfig, generate
    from .grid import GridError, Segment, StreamGrid
    from .model import MultiStreamConfig, MultiStreamLM, MultiStreamOutput
    from .sampling import SamplingConfig
    from .schema import Role, SchemaError, Stream, StreamSchema

_LAZY = {
    "GridError": "grid",
    "Segment": "grid",
    "StreamGrid": "grid",
    "MultiStreamConfig": "model",
    "MultiStreamLM": "model",
    "MultiStreamOutput": "model",
    "Role": "schema",
    "SchemaError": "schema",
    "Stream": "schema",
    "StreamSchema": "schema",
    "Session": "engine",
    "SessionConfig": "engine",
    "generate": "engine",
    "SamplingConfig": "sampling",
}

__all__ = [
    "GridError",
    "MultiStreamConfig",
    "MultiStreamLM",
    "MultiStreamOutput",
    "Role",
    "SamplingConfig",
    "SchemaError",
    "Segment",
    "Session",
    "SessionConfig",
    "Stream",
    "StreamGrid",
    "StreamSchema",
    "__version__",
    "generate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'multistream' has no attribute {name!r}")
