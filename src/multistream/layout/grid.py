"""Layout A (spec §2.3): the row-major grid.

Shape letters: B batch, R rows, C streams, T = R*C flattened tokens, L cached tokens, V vocab.

The grid ``[R, C]`` is flattened row-major, so flat index ``i = r*C + c``; every token of row
``r`` gets position id ``r``; stream id is ``c``. A query sees a key iff the key's row is strictly
earlier, or the key is the query itself (block-causal). The model at cell ``(r, c)`` predicts
cell ``(r+1, c)``.

Everything here is vectorised over cells. Masks are built as booleans (True = may attend) by one
function, :func:`attention_allowed`, used for training, padding, packing and decoding alike, and
converted once to an additive mask in the model's dtype by :func:`to_additive`.

:class:`GridLayout` is this layout behind the :class:`multistream.layout.base.Layout` interface.
With ``hide_silence`` (the paper's ``block_causal_skip_silence``) silence keys are hidden from
every other query; the silence cells of *input* streams then carry no target and are seen by no
query, so :meth:`GridLayout.collate` leaves them (and the last row, which no query sees and which
has no next row to predict) out of the training sequence: a flat batch of the remaining cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX, CellIndex, Layout, LayoutError, batch_cells, register_layout

__all__ = [
    "IGNORE_INDEX",
    "MASK_KINDS",
    "GridLayout",
    "MaskKind",
    "attention_allowed",
    "cell_loss_weights",
    "flatten_grid",
    "grid_attention_mask",
    "grid_cells",
    "grid_tensors",
    "next_row_loss",
    "next_row_targets",
    "pack_grids",
    "pad_grids",
    "row_layout",
    "to_additive",
    "unflatten",
]

MaskKind = Literal["block_causal", "row_visible", "causal"]
MASK_KINDS: tuple[str, ...] = ("block_causal", "row_visible", "causal")


def _check_kind(kind: str) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")


def flatten_grid(x: torch.Tensor) -> torch.Tensor:
    """``[B, R, C, ...] -> [B, R*C, ...]`` row-major (a view when possible)."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def unflatten(x: torch.Tensor, num_streams: int) -> torch.Tensor:
    """``[B, R*C, ...] -> [B, R, C, ...]``; inverse of :func:`flatten_grid`."""
    if x.shape[1] % num_streams:
        raise ValueError(f"sequence length {x.shape[1]} is not a multiple of {num_streams} streams")
    return x.reshape(x.shape[0], x.shape[1] // num_streams, num_streams, *x.shape[2:])


def row_layout(row_positions: torch.Tensor, num_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token position ids and stream ids of flattened rows.

    Args:
        row_positions: ``[B, R]`` position id of each row (usually ``arange(R)``).
        num_streams: C.

    Returns:
        ``(position_ids [B, T], stream_ids [B, T])``: each row's position repeated for its C
        tokens, and ``0..C-1`` repeated per row.
    """
    B, R = row_positions.shape
    position_ids = row_positions.repeat_interleave(num_streams, dim=1)
    stream_ids = torch.arange(num_streams, device=row_positions.device).repeat(R).expand(B, -1)
    return position_ids, stream_ids


def attention_allowed(
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    q_index: torch.Tensor,
    k_index: torch.Tensor,
    kind: MaskKind = "block_causal",
    q_segments: torch.Tensor | None = None,
    k_segments: torch.Tensor | None = None,
    k_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which query tokens may attend to which key tokens; the one mask rule of the library.

    Args:
        q_rows, k_rows: ``[B, Tq]`` / ``[B, Tk]`` row index of each token (rows of one segment
            must be ordered; only comparisons are used).
        q_index, k_index: ``[B, Tq]`` / ``[B, Tk]`` sequence order of each token (its flat index
            in the KV sequence); used for the diagonal and for the plain causal kind.
        kind: ``block_causal`` (key row < query row, or the key is the query),
            ``row_visible`` (key row <= query row: same-row peers visible, an ablation),
            ``causal`` (ordinary token-causal over the flattened sequence).
        q_segments, k_segments: optional ``[B, Tq]`` / ``[B, Tk]`` ids of packed examples; a
            query never sees another segment's keys.
        k_valid: optional ``[B, Tk]`` bool; False keys (padding, masked silence) are hidden.

    Returns:
        Bool ``[B, 1, Tq, Tk]``. A query always sees itself, so no row is fully masked.
    """
    _check_kind(kind)
    qr, kr = q_rows[:, :, None], k_rows[:, None, :]
    qi, ki = q_index[:, :, None], k_index[:, None, :]
    diagonal = qi == ki
    if kind == "block_causal":
        allowed = kr < qr
    elif kind == "row_visible":
        allowed = kr <= qr
    else:
        allowed = ki <= qi
    if q_segments is not None and k_segments is not None:
        allowed = allowed & (q_segments[:, :, None] == k_segments[:, None, :])
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]
    return (allowed | diagonal)[:, None]


def grid_attention_mask(
    num_streams: int,
    row_mask: torch.Tensor,
    kind: MaskKind = "block_causal",
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool ``[B, 1, T, T]`` mask of a (padded or packed) batch of flattened grids.

    Args:
        num_streams: C.
        row_mask: ``[B, R]``, 1 for real rows, 0 for padding rows.
        kind: see :func:`attention_allowed`.
        segment_ids: ``[B, R]`` id of the packed example each row belongs to, or None.
    """
    B, R = row_mask.shape
    device = row_mask.device
    rows = torch.arange(R, device=device).repeat_interleave(num_streams).expand(B, -1)
    index = torch.arange(R * num_streams, device=device).expand(B, -1)
    valid = row_mask.bool().repeat_interleave(num_streams, dim=1)
    segments = None if segment_ids is None else segment_ids.repeat_interleave(num_streams, dim=1)
    return attention_allowed(rows, rows, index, index, kind, segments, segments, valid)


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> additive float mask in ``dtype`` (0 where allowed, the dtype's minimum
    elsewhere), the form every HF attention implementation accepts."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def pad_grids(
    grids: Sequence[torch.Tensor], pad_id: int, max_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad grids ``[R_i, C]`` to one batch.

    Returns:
        ``(input_ids [B, R, C], attention_mask [B, R])`` with padding rows filled with
        ``pad_id`` and marked 0.
    """
    if not grids:
        raise ValueError("pad_grids needs at least one grid")
    C = grids[0].shape[1]
    R = max(g.shape[0] for g in grids) if max_rows is None else max_rows
    ids = torch.full((len(grids), R, C), pad_id, dtype=torch.long)
    mask = torch.zeros((len(grids), R), dtype=torch.long)
    for b, g in enumerate(grids):
        if g.shape[1] != C:
            raise ValueError(f"grid {b} has {g.shape[1]} streams, grid 0 has {C}")
        if g.shape[0] > R:
            raise ValueError(f"grid {b} has {g.shape[0]} rows, more than max_rows={R}")
        ids[b, : g.shape[0]] = g
        mask[b, : g.shape[0]] = 1
    return ids, mask


def pack_grids(grids: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate grids ``[R_i, C]`` into one sequence of rows without cross-talk.

    Each example keeps its own row positions (restarting at 0) and a segment id, so the
    attention mask isolates it and its logits equal those of the example alone. (The paper's
    packing lets later samples see earlier ones; isolation keeps every example's training signal
    the same whether packed or not.)

    Returns:
        ``input_ids [1, sum R_i, C]``, ``position_ids [1, sum R_i]`` (row positions),
        ``segment_ids [1, sum R_i]``, ``attention_mask [1, sum R_i]`` (all ones).
    """
    if not grids:
        raise ValueError("pack_grids needs at least one grid")
    ids = torch.cat(list(grids))[None]
    lengths = torch.tensor([g.shape[0] for g in grids])
    segment_ids = torch.repeat_interleave(torch.arange(len(grids)), lengths)[None]
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = (torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths))[None]
    return {
        "input_ids": ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "attention_mask": torch.ones_like(segment_ids),
    }


def next_row_targets(
    labels: torch.Tensor,
    generated: torch.Tensor,
    row_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targets for next-row prediction: the prediction at ``(r, c)`` is scored against
    ``labels[r+1, c]``.

    Args:
        labels: ``[B, R, C]`` token ids (usually the input ids; ``IGNORE_INDEX`` cells are not
            trained on).
        generated: ``[C]`` bool, True for streams the model generates; input streams get no loss.
        row_mask: ``[B, R]`` 1 = real row; no target crosses into or out of padding.
        segment_ids: ``[B, R]``; no target crosses from one packed example into the next.

    Returns:
        ``[B, R, C]`` targets with ``IGNORE_INDEX`` in the last row, at input streams and at
        padding / segment boundaries.

    Example (one grid, streams user(input), assistant(output), 3 rows)::

        labels  = [[[5, 1], [6, 1], [1, 7]]]  ->  targets = [[[-100, 1], [-100, 7], [-100, -100]]]
    """
    B, R, C = labels.shape
    targets = torch.full_like(labels, IGNORE_INDEX)
    if R < 2:
        return targets
    keep = generated.to(labels.device).bool()[None, None, :].expand(B, R - 1, C)
    if row_mask is not None:
        real = row_mask.bool()
        keep = keep & (real[:, :-1] & real[:, 1:])[:, :, None]
    if segment_ids is not None:
        keep = keep & (segment_ids[:, :-1] == segment_ids[:, 1:])[:, :, None]
    targets[:, :-1] = torch.where(keep, labels[:, 1:], IGNORE_INDEX)
    return targets


def cell_loss_weights(
    targets: torch.Tensor,
    stream_weights: torch.Tensor | None = None,
    silence_id: int | None = None,
    silence_weight: float = 1.0,
) -> torch.Tensor:
    """Float ``[B, R, C]`` weight of each target: 0 where ignored, else the stream's weight
    (e.g. per role), times ``silence_weight`` where the target is the silence token."""
    weights = (targets != IGNORE_INDEX).to(torch.float32)
    if stream_weights is not None:
        weights = weights * stream_weights.to(weights.device, torch.float32)[None, None, :]
    if silence_id is not None and silence_weight != 1.0:
        weights = torch.where(targets == silence_id, weights * silence_weight, weights)
    return weights


def next_row_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross-entropy ``sum(w * CE) / N`` over cells.

    Args:
        logits: ``[B, R, C, V]``; ``logits[:, r, c]`` predicts the token at ``(r+1, c)``.
        targets: ``[B, R, C]`` from :func:`next_row_targets`.
        weights: ``[B, R, C]`` from :func:`cell_loss_weights` (default 1 on every target).
        num_items: normaliser N; defaults to the number of supervised cells here. Pass the global
            count across processes / accumulation steps to make the loss independent of how the
            batch is split.
    """
    V = logits.shape[-1]
    supervised = targets != IGNORE_INDEX
    # Cross-entropy only where a target exists: the full [B, R, C, V] log-softmax is the largest
    # tensor of a training step, so skipping the ignored cells (input streams, padding) matters.
    picked = logits[supervised].float()
    ce = F.cross_entropy(picked.view(-1, V), targets[supervised], reduction="none")
    if weights is not None:
        ce = ce * weights[supervised]
    if num_items is None:
        num_items = supervised.sum()
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(ce.device)
    # A batch with nothing to learn (all inputs, all padding) gives loss 0, not NaN.
    return (
        ce.sum() / max(num_items, 1)
        if not isinstance(num_items, torch.Tensor)
        else ce.sum() / num_items.clamp_min(1)
    )


def grid_tensors(feature: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [R, C], labels [R, C])`` of one training example: a ``StreamGrid`` or a
    mapping with ``input_ids`` and optionally ``labels`` (default: the ids)."""
    ids = getattr(feature, "ids", None)
    if isinstance(ids, torch.Tensor) and hasattr(feature, "schema"):
        return ids, ids
    if not isinstance(feature, Mapping) or "input_ids" not in feature:
        raise TypeError(
            f"example {index}: expected a StreamGrid or a mapping with 'input_ids' [rows, streams], "
            f"got {type(feature).__name__}"
        )
    ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
    labels = torch.as_tensor(feature.get("labels", ids), dtype=torch.long)
    if ids.dim() != 2 or labels.shape != ids.shape:
        raise ValueError(
            f"example {index}: input_ids must be [rows, streams] and labels the same shape, got "
            f"{tuple(ids.shape)} and {tuple(labels.shape)}"
        )
    return ids, labels


def grid_cells(
    ids: torch.Tensor,
    labels: torch.Tensor,
    generated: torch.Tensor,
    silence_id: int,
    drop: bool = True,
) -> dict[str, torch.Tensor]:
    """The cells of one grid with hidden silence keys, as flat 1-D fields, row-major.

    With ``drop`` the cells that no query sees and that carry no target are left out: silence
    cells of input streams (hidden keys, never trained) and the last row (no later row sees it,
    no next row to predict). ``labels`` holds each kept cell's next-row target.
    """
    R, C = ids.shape
    generated = generated.to(ids.device).bool()
    targets = next_row_targets(labels[None], generated)[0]
    keep = torch.ones(R, C, dtype=torch.bool)
    if drop:
        keep = ~((ids == silence_id) & ~generated[None, :])
        keep[-1] = False
        if not keep.any():  # nothing to learn: keep one cell so the example is not empty
            keep[0, 0] = True
    rows = torch.arange(R)[:, None].expand(R, C)
    streams = torch.arange(C)[None, :].expand(R, C)
    return {
        "input_ids": ids[keep],
        "position_ids": rows[keep],
        "stream_ids": streams[keep],
        "labels": targets[keep],
    }


@dataclass(eq=False)
class GridLayout(Layout):
    """Layout A behind the layout interface.

    Args:
        mask: ``block_causal`` (paper), ``row_visible`` or ``causal`` (ablations).
        hide_silence: hide every silence key from all other queries (the paper's
            ``block_causal_skip_silence``). A model trained so must decode so (the engine reads
            it from the model's config).
        drop_invisible: with ``hide_silence``, leave the cells no query sees and that carry no
            target out of the training sequence (exact; off only to test that it is).
    """

    name = "grid"
    mask: str = "block_causal"
    hide_silence: bool = False
    drop_invisible: bool = True

    def __post_init__(self) -> None:
        if self.mask not in MASK_KINDS:
            raise LayoutError(
                f"grid layout: mask {self.mask!r} is unknown; choose one of {', '.join(MASK_KINDS)}"
            )

    def options(self) -> dict[str, Any]:
        return {"mask": self.mask, "hide_silence": self.hide_silence, "drop_invisible": self.drop_invisible}

    @property
    def flat(self) -> bool:
        """Batches are flat cells (some cells dropped), not ``[B, R, C]`` grids."""
        return self.hide_silence and self.drop_invisible

    def allowed(self, q: CellIndex, k: CellIndex) -> torch.Tensor:
        return attention_allowed(q.step, k.step, q.index, k.index, self.mask, q.segment, k.segment, k.visible)  # type: ignore[arg-type]

    def collate(
        self,
        features: Sequence[Any],
        pad_id: int,
        *,
        generated: torch.Tensor | None = None,
        silence_id: int | None = None,
        packing: bool = False,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """Grids -> a batch: ``[B, R, C]`` grids (rows padded or packed), or, when cells are
        dropped, flat cells ``[B, T]`` with ``position_ids`` (rows), ``stream_ids`` and
        ``labels`` (next-row targets, already aligned)."""
        if not features:
            raise ValueError("GridCollator got an empty batch")
        pairs = [grid_tensors(f, i) for i, f in enumerate(features)]
        if self.flat:
            if generated is None or silence_id is None:
                raise LayoutError(
                    "dropping hidden silence cells needs the generated streams and the silence id"
                )
            cells = [grid_cells(ids, labels, generated, silence_id) for ids, labels in pairs]
            return batch_cells(cells, pad_id, packing)
        ids = [p[0] for p in pairs]
        labels = [p[1] for p in pairs]
        if packing:
            batch = pack_grids(ids)
            batch["labels"] = torch.cat(labels)[None]  # [1, T_rows, C]
            return batch
        input_ids, attention_mask = pad_grids(ids, pad_id)  # [B, R, C], [B, R]
        padded_labels, _ = pad_grids(labels, IGNORE_INDEX)  # padding rows are never targets
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": padded_labels}


register_layout("grid", GridLayout)
