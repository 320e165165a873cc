"""Collators: a list of examples -> one batch of tensors for :meth:`MultiStreamLM.forward`.

:class:`GridCollator` batches Layout A grids as they are (row positions, the block-causal mask
and next-row targets are derived inside the model from ``attention_mask`` / ``position_ids`` /
``segment_ids``). :class:`LayoutCollator` asks a layout to build the batch
(:meth:`multistream.layout.Layout.collate`): Layout B's flat cells, or Layout A with hidden
silence, where the cells no query sees and that carry no target are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..grid import StreamGrid
from ..layout.base import Layout
from ..layout.grid import GridLayout

__all__ = ["GridCollator", "GridFeature", "LayoutCollator"]

# One training example: a grid, or a mapping with ``input_ids [R, C]`` and optionally
# ``labels [R, C]`` (token ids, ``IGNORE_INDEX`` where a cell must not be learned; default: the ids).
GridFeature = StreamGrid | Mapping[str, Any]


@dataclass
class GridCollator:
    """Batch grids by padding rows (default) or by packing them into one sequence of rows.

    Args:
        pad_id: token id written into padding cells (any valid id: padding rows are masked out
            of attention and loss; the silence id is a natural choice).
        packing: concatenate the batch's grids into one ``[1, sum R_i, C]`` sequence with
            per-example row positions and segment ids (no padding, no cross-example
            attention; see :func:`multistream.masks.pack_grids`).

    Returns (from ``__call__``):
        padding: ``input_ids [B, R, C]``, ``attention_mask [B, R]``, ``labels [B, R, C]``.
        packing: ``input_ids [1, T_rows, C]``, ``attention_mask``, ``position_ids`` and
        ``segment_ids [1, T_rows]``, ``labels [1, T_rows, C]``.

    Example (2 streams, silence/pad id 3; the labels are the unshifted ids, the model shifts
    them by one row and drops the input stream)::

        >>> import torch
        >>> a = {"input_ids": torch.tensor([[5, 3], [6, 3], [3, 7]])}
        >>> b = {"input_ids": torch.tensor([[8, 3], [3, 9]])}
        >>> batch = GridCollator(pad_id=3)([a, b])
        >>> batch["input_ids"].tolist()
        [[[5, 3], [6, 3], [3, 7]], [[8, 3], [3, 9], [3, 3]]]
        >>> batch["attention_mask"].tolist()
        [[1, 1, 1], [1, 1, 0]]
        >>> batch["labels"].tolist()
        [[[5, 3], [6, 3], [3, 7]], [[8, 3], [3, 9], [-100, -100]]]
        >>> packed = GridCollator(pad_id=3, packing=True)([a, b])
        >>> packed["input_ids"].tolist()
        [[[5, 3], [6, 3], [3, 7], [8, 3], [3, 9]]]
        >>> packed["position_ids"].tolist(), packed["segment_ids"].tolist()
        ([[0, 1, 2, 0, 1]], [[0, 0, 0, 1, 1]])
    """

    pad_id: int
    packing: bool = False

    def __call__(self, features: Sequence[GridFeature]) -> dict[str, torch.Tensor]:
        return GridLayout().collate(features, self.pad_id, packing=self.packing)


@dataclass
class LayoutCollator:
    """Batch examples the way ``layout`` lays them out.

    Args:
        layout: a :class:`multistream.layout.Layout` (``get_layout(name, **options)``).
        pad_id: token id of batch padding (masked out of attention and loss).
        packing: one packed sequence per batch instead of padded rows.
        generated: ``[C]`` bool, the generated streams (Layout A with hidden silence needs it to
            know which silence cells carry no target).
        silence_id: the silence token (Layout A).

    Example (Layout B, one example; the labels are aligned: position i predicts labels[i])::

        >>> from multistream.layout import BlocksExample, get_layout
        >>> ex = BlocksExample(system=[1, 9, 2], user=[1, 4, 7, 2], heads=[[1, 5, 8, 2]], targets_from=[2])
        >>> batch = LayoutCollator(get_layout("blocks"), pad_id=0)([ex])
        >>> batch["position_ids"].tolist(), batch["stream_ids"].tolist()
        ([[0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6]], [[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]])
        >>> batch["labels"].tolist()
        [[-100, -100, -100, -100, -100, -100, -100, -100, 8, 2, -100]]
    """

    layout: Layout
    pad_id: int
    packing: bool = False
    generated: torch.Tensor | None = None
    silence_id: int | None = None

    def __call__(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.layout.collate(
            features, self.pad_id, packing=self.packing, generated=self.generated, silence_id=self.silence_id
        )
