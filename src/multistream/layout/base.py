"""The layout interface: how a layout turns streams into one token sequence.

Every layout is a set of *cells*: one token each, with coordinates ``(stream, step)``. The layout
says, for a batch of cells (all tensors ``[B, T]``, vectorised, no loops over cells):

* ``position_ids``: the RoPE position of each cell (its step);
* ``stream_ids``: the stream embedding row of each cell;
* which keys a query may see (:meth:`Layout.allowed` over :class:`CellIndex` tensors);
* the training target of each cell's prediction (``labels``, already aligned: the logits at
  token ``i`` are scored against ``labels[i]``);
* which cells may be dropped from the training sequence because no query sees them and they
  carry no target. Dropping is done when the layout builds its sequence (:meth:`Layout.collate`),
  so it is exact by construction: every remaining query sees the same keys it saw before.

Shape letters: B batch, T tokens (queries), L keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = [
    "IGNORE_INDEX",
    "CellIndex",
    "Layout",
    "LayoutError",
    "batch_cells",
    "get_layout",
    "layout_names",
    "register_layout",
]

IGNORE_INDEX = -100


class LayoutError(ValueError):
    """A layout name, option or example is invalid; the message names it and the fix."""


@dataclass
class CellIndex:
    """Bookkeeping tensors of a set of cells (queries or keys), each ``[B, N]``.

    Attributes:
        step: the cell's step (row in Layout A, ``y`` in Layout B); the RoPE position.
        stream: the cell's stream id.
        index: order in the sequence (the flat index in the KV sequence); used for the diagonal.
        segment: packed-example id, or None (one example per batch row).
        visible: False for keys no other query may see (batch padding, hidden silence).
        cross: True for cells that take part in cross-stream attention (Layout B's eligible set
            E); None = all cells do.
    """

    step: torch.Tensor
    stream: torch.Tensor
    index: torch.Tensor
    segment: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    cross: torch.Tensor | None = None


class Layout(ABC):
    """One way of laying streams out as a token sequence (see the module docstring)."""

    name: ClassVar[str]

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The JSON-serialisable options that rebuild this layout with :func:`get_layout`."""

    @abstractmethod
    def allowed(self, q: CellIndex, k: CellIndex) -> torch.Tensor:
        """Bool ``[B, 1, Tq, Tk]``: which query may attend to which key (a query always sees
        itself, so no row is fully masked)."""

    @abstractmethod
    def collate(self, features: Sequence[Any], pad_id: int, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Examples -> one training batch for :meth:`multistream.model.MultiStreamLM.forward`,
        with the droppable cells already left out."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and (self.name, self.options()) == (other.name, other.options())

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_REGISTRY: dict[str, Callable[..., Layout]] = {}


def register_layout(name: str, factory: Callable[..., Layout]) -> None:
    """Add a layout to the registry under ``name`` (one new module per layout)."""
    _REGISTRY[name] = factory


def layout_names() -> list[str]:
    return sorted(_REGISTRY)


def get_layout(name: str = "grid", **options: Any) -> Layout:
    """The layout registered as ``name`` (``"grid"``: Layout A, ``"blocks"``: Layout B), built
    with ``options``; an unknown name or option fails with the valid choices."""
    if isinstance(name, Layout):
        return name
    if name not in _REGISTRY:
        raise LayoutError(f"unknown layout {name!r}; choose one of {', '.join(layout_names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:
        raise LayoutError(f"layout {name!r}: bad options {sorted(options)}: {err}") from None


# Fill value of each per-token field in padding (batch padding is masked out anyway; these keep
# the ids valid and the padding out of every loss).
_PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0}


def batch_cells(
    examples: Sequence[dict[str, torch.Tensor]], pad_id: int, packing: bool = False
) -> dict[str, torch.Tensor]:
    """One batch from per-example 1-D cell fields (``input_ids``, ``position_ids``,
    ``stream_ids``, ``labels``, ...; all ``[T_i]``).

    Padding (default) right-pads every field to ``[B, max T_i]`` and adds ``attention_mask``
    (1 = real token). Packing concatenates the examples into ``[1, sum T_i]`` and adds
    ``segment_ids`` so that no example sees another (positions stay per example).
    """
    if not examples:
        raise LayoutError("a batch needs at least one example")
    keys = list(examples[0])
    if packing:
        batch = {k: torch.cat([e[k] for e in examples])[None] for k in keys}
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        batch["segment_ids"] = torch.repeat_interleave(torch.arange(len(examples)), lengths)[None]
        batch["attention_mask"] = torch.ones_like(batch["segment_ids"])
        return batch
    T = max(len(e["input_ids"]) for e in examples)
    batch = {}
    for k in keys:
        fill = pad_id if k == "input_ids" else _PAD_VALUES.get(k, 0)
        out = torch.full((len(examples), T), fill, dtype=examples[0][k].dtype)
        for b, e in enumerate(examples):
            out[b, : len(e[k])] = e[k]
        batch[k] = out
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    for b, e in enumerate(examples):
        mask[b, : len(e["input_ids"])] = 1
    batch["attention_mask"] = mask
    return batch
