"""How streams become one token sequence: the layouts (spec §2.3 Layout A, §2.5 Layout B).

``get_layout("grid")`` is Layout A (row-major grid, :mod:`.grid`), ``get_layout("blocks")`` is
Layout B (y-aligned ChatML blocks, :mod:`.blocks`). A new layout is one new module that
subclasses :class:`Layout` and calls :func:`register_layout`.
"""

from .base import (
    IGNORE_INDEX,
    CellIndex,
    Layout,
    LayoutError,
    batch_cells,
    get_layout,
    layout_names,
    register_layout,
)
from .blocks import BlocksExample, BlocksExampleError, BlocksLayout, blocks_schema, yrule_allowed
from .grid import GridLayout
from .longce import LongCEConfig, longce_loss

__all__ = [
    "IGNORE_INDEX",
    "BlocksExample",
    "BlocksExampleError",
    "BlocksLayout",
    "CellIndex",
    "GridLayout",
    "Layout",
    "LayoutError",
    "LongCEConfig",
    "batch_cells",
    "blocks_schema",
    "get_layout",
    "layout_names",
    "longce_loss",
    "register_layout",
    "yrule_allowed",
]
