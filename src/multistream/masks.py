"""Compatibility module: Layout A's functions now live in :mod:`multistream.layout.grid`.

Every name this module exported before the layout package stays importable from here.
"""

from __future__ import annotations

from .layout.grid import (
    IGNORE_INDEX,
    MASK_KINDS,
    MaskKind,
    attention_allowed,
    cell_loss_weights,
    flatten_grid,
    grid_attention_mask,
    next_row_loss,
    next_row_targets,
    pack_grids,
    pad_grids,
    row_layout,
    to_additive,
    unflatten,
)

__all__ = [
    "IGNORE_INDEX",
    "MASK_KINDS",
    "MaskKind",
    "attention_allowed",
    "cell_loss_weights",
    "flatten_grid",
    "grid_attention_mask",
    "next_row_loss",
    "next_row_targets",
    "pack_grids",
    "pad_grids",
    "row_layout",
    "to_additive",
    "unflatten",
]
