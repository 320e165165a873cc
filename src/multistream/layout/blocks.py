"""Layout B (spec §2.5): y-aligned ChatML blocks, one contiguous block per stream.

A Layout B example is a :class:`BlocksExample`: a system block (stream 0, visible to all), a
user block (stream 1) and H >= 1 assistant heads (stream ``2 + h``). Every block holds ChatML-framed
token ids: ``<|im_start|>role\\n`` prefix, content, closing ``<|im_end|>`` (no trailing PAD: the
layout aligns nothing by padding, see below).

Positions are 2-D ``(stream, y)``: the system block has ``y = 0 .. y0-1`` (``y0`` = its length);
the user block and every head start again at ``y0`` and count up one per token. The stream
embedding is indexed by the stream, RoPE by ``y``.

Visibility, the y-rule (spec §2.5): a query sees itself, the earlier tokens of its own block,
and -- when both it and the key are *eligible* -- every key of another block at a strictly earlier
step. Eligible: prefix, content and (``include_im_end_in_cross_channel``) ``<|im_end|>``; never
PAD. With ``allow_assistant_cross_channel=False`` assistant keys are not eligible (no other block
sees a head), while heads still read the system and user blocks. (The released processor also
drops the heads' *queries* from the eligible set under this flag, which cuts every head off from
the user block; we follow its documented meaning, "whether assistant heads can see other
assistants".)

Targets: shift-by-1 inside each head, from ``targets_from[h]`` through the closing
``<|im_end|>``. Trailing PAD (the released processor pads heads to one length) is seen by no
other block and carries no target, so the layout leaves it out of the sequence altogether
(``drop_invisible=False`` puts it back, to test that this changes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..schema import Role, SchemaError, Stream, StreamSchema
from .base import IGNORE_INDEX, CellIndex, Layout, LayoutError, batch_cells, register_layout

__all__ = [
    "BLOCK_CONTENT",
    "BLOCK_END",
    "BLOCK_PAD",
    "BlocksExample",
    "BlocksExampleError",
    "BlocksLayout",
    "blocks_schema",
]

# What a cell of a block is (the ``block_part`` field of a batch): prefix or content, the
# closing <|im_end|>, or trailing PAD (only present when PAD is not dropped).
BLOCK_CONTENT, BLOCK_END, BLOCK_PAD = 0, 1, 2


class BlocksExampleError(LayoutError):
    """A Layout B example is malformed; the message names the field."""


def _ids(value: Any, where: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise BlocksExampleError(f"{where}: expected a list of token ids, got {type(value).__name__}")
    out = [int(v) for v in value]
    if any(v < 0 for v in out):
        raise BlocksExampleError(f"{where}: token ids must be non-negative")
    return out


@dataclass
class BlocksExample:
    """One Layout B training example (token ids, already ChatML-framed).

    Args:
        system: stream 0, ``<|im_start|>system\\n ... <|im_end|>``.
        user: stream 1, ``<|im_start|>user\\n ... <|im_end|>``.
        heads: one list per assistant head h (stream ``2 + h``), each
            ``<|im_start|>assistant\\n ... <|im_end|>``; H = ``len(heads)`` >= 1.
        targets_from: per head, the index (into that head's list) of its first supervised token:
            the length of the ChatML prefix, plus any text that must not be learned (the
            paper's optional channel intro). Every token from there to the closing
            ``<|im_end|>`` inclusive is a target (shift-by-1 inside the block).
        include_im_end_in_cross_channel: ``<|im_end|>`` tokens are visible across streams
            (spec §2.5 default True).
        allow_assistant_cross_channel: assistant heads see each other (and the user block sees
            them) at strictly earlier steps (default True); False isolates every head from the
            other heads, while each head still reads the system and user blocks.
        meta: free-form JSON-serialisable information carried along (source, id, policy).
    """

    system: list[int]
    user: list[int]
    heads: list[list[int]]
    targets_from: list[int]
    include_im_end_in_cross_channel: bool = True
    allow_assistant_cross_channel: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.system = _ids(self.system, "system")
        self.user = _ids(self.user, "user")
        if isinstance(self.heads, (str, bytes)) or not isinstance(self.heads, Sequence) or not self.heads:
            raise BlocksExampleError("heads: expected a non-empty list of assistant heads (H >= 1)")
        self.heads = [_ids(h, f"heads[{i}]") for i, h in enumerate(self.heads)]
        self.targets_from = [int(t) for t in self.targets_from]
        if len(self.targets_from) != len(self.heads):
            raise BlocksExampleError(
                f"targets_from has {len(self.targets_from)} entries for {len(self.heads)} heads; give one per head"
            )
        for name, block in (("system", self.system), ("user", self.user)):
            if len(block) < 2:
                raise BlocksExampleError(f"{name}: a block needs at least its prefix and <|im_end|>")
        for h, (block, start) in enumerate(zip(self.heads, self.targets_from, strict=True)):
            if not 1 <= start < len(block):
                raise BlocksExampleError(
                    f"targets_from[{h}] = {start} must lie inside heads[{h}] (1 .. {len(block) - 1}): the "
                    "first token is never a target and the closing <|im_end|> always is"
                )
        self.include_im_end_in_cross_channel = bool(self.include_im_end_in_cross_channel)
        self.allow_assistant_cross_channel = bool(self.allow_assistant_cross_channel)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def num_streams(self) -> int:
        """System, user and H heads."""
        return 2 + len(self.heads)

    @property
    def num_tokens(self) -> int:
        return len(self.system) + len(self.user) + sum(len(h) for h in self.heads)

    @property
    def num_targets(self) -> int:
        return sum(len(h) - t for h, t in zip(self.heads, self.targets_from, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": list(self.system),
            "user": list(self.user),
            "heads": [list(h) for h in self.heads],
            "targets_from": list(self.targets_from),
            "include_im_end_in_cross_channel": self.include_im_end_in_cross_channel,
            "allow_assistant_cross_channel": self.allow_assistant_cross_channel,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "example") -> BlocksExample:
        missing = [k for k in ("system", "user", "heads", "targets_from") if k not in data]
        if missing:
            raise BlocksExampleError(f"{where}: missing fields {missing}")
        try:
            return cls(
                system=data["system"],
                user=data["user"],
                heads=data["heads"],
                targets_from=data["targets_from"],
                include_im_end_in_cross_channel=data.get("include_im_end_in_cross_channel", True),
                allow_assistant_cross_channel=data.get("allow_assistant_cross_channel", True),
                meta=dict(data.get("meta") or {}),
            )
        except BlocksExampleError as err:
            raise BlocksExampleError(f"{where}: {err}") from None


def blocks_schema(num_heads: int, silence_id: int, names: str | Sequence[str] | None = None) -> StreamSchema:
    """The streams of a Layout B model: ``system`` and ``user`` (inputs), then one generated
    stream per head. ``names``: the heads as ``"name[:role]"`` (a comma-separated string or a
    list; roles guessed as in :meth:`StreamSchema.parse`), default ``assistant`` (output) for
    head 0, then ``audit`` (think), ``head2``, ... The silence id is unused by Layout B (no
    silence cells) but every schema carries one: pass the PAD id."""
    if num_heads < 1:
        raise LayoutError("Layout B needs at least one assistant head")
    default = ["assistant", "audit:think", *[f"head{h}:think" for h in range(2, num_heads)]][:num_heads]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    head_specs = list(names) if names else default
    if len(head_specs) != num_heads:
        raise LayoutError(
            f"layout_options.heads names {len(head_specs)} heads ({', '.join(head_specs)}) but the data has "
            f"{num_heads}; give one name per head"
        )
    try:
        heads = StreamSchema.parse(",".join(head_specs)).streams
    except SchemaError as err:
        raise LayoutError(f"layout_options.heads: {err}") from None
    if any(s.role is Role.INPUT for s in heads):
        raise LayoutError(f"heads are generated streams: {', '.join(head_specs)} names an input stream")
    streams = (Stream("system", Role.INPUT), Stream("user", Role.INPUT), *heads)
    return StreamSchema(streams, silence_id=silence_id)


@dataclass(eq=False)
class BlocksLayout(Layout):
    """Layout B behind the layout interface (see the module docstring).

    Args:
        include_im_end_in_cross_channel: ``<|im_end|>`` is eligible for cross-stream attention.
        allow_assistant_cross_channel: assistant keys are eligible (heads see each other).
        drop_invisible: leave trailing PAD out of the sequence (exact; True except in tests).
        heads: the head streams' names and roles, ``"name[:role],..."`` (see
            :func:`blocks_schema`); empty = ``assistant`` then ``audit``, ... Data whose head 0
            thinks and head 1 answers says ``"think,assistant"``.
    """

    name = "blocks"
    include_im_end_in_cross_channel: bool = True
    allow_assistant_cross_channel: bool = True
    drop_invisible: bool = True
    heads: str = ""

    def options(self) -> dict[str, Any]:
        return {
            "include_im_end_in_cross_channel": self.include_im_end_in_cross_channel,
            "allow_assistant_cross_channel": self.allow_assistant_cross_channel,
            "drop_invisible": self.drop_invisible,
            "heads": self.heads,
        }

    # -- cells of one example -------------------------------------------------------------------

    def example_cells(self, example: BlocksExample, pad_id: int = 0) -> dict[str, torch.Tensor]:
        """Flat 1-D fields of one example: ``input_ids``, ``position_ids`` (y), ``stream_ids``,
        ``block_part`` and ``labels`` (aligned: the logits at token i predict ``labels[i]``)."""
        for flag in ("include_im_end_in_cross_channel", "allow_assistant_cross_channel"):
            if getattr(example, flag) != getattr(self, flag):
                raise LayoutError(
                    f"example {example.meta.get('id', '')!r} was built with {flag}={getattr(example, flag)} "
                    f"but the layout has {flag}={getattr(self, flag)}: set layout_options.{flag} to match "
                    "the data (or convert the data again)"
                )
        y0 = len(example.system)
        heads = example.heads
        if not self.drop_invisible:  # the released processor's form: heads padded to one length
            longest = max(len(h) for h in heads)
            heads = [h + [pad_id] * (longest - len(h)) for h in heads]
        blocks = [example.system, example.user, *heads]
        lengths = torch.tensor([len(b) for b in blocks])
        ids = torch.tensor([t for b in blocks for t in b], dtype=torch.long)
        stream = torch.repeat_interleave(torch.arange(len(blocks)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        local = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)
        y = local + torch.where(stream == 0, 0, y0)
        # Real length of each block (before PAD): <|im_end|> is its last real token.
        real = torch.tensor([len(example.system), len(example.user), *[len(h) for h in example.heads]])
        real_of = torch.repeat_interleave(real, lengths)
        part = torch.full_like(ids, BLOCK_CONTENT)
        part[local == real_of - 1] = BLOCK_END
        part[local >= real_of] = BLOCK_PAD
        supervised = torch.zeros(len(ids), dtype=torch.bool)
        for h, start in enumerate(example.targets_from):
            s = int(starts[2 + h])
            supervised[s + start : s + len(example.heads[h])] = True
        unshifted = torch.where(supervised, ids, IGNORE_INDEX)
        # Shift by one: the first token of every block is never a target, so no target crosses
        # from one block into the previous one.
        labels = torch.cat([unshifted[1:], torch.tensor([IGNORE_INDEX])])
        return {
            "input_ids": ids,
            "position_ids": y,
            "stream_ids": stream,
            "block_part": part,
            "labels": labels,
        }

    def collate(
        self, features: Sequence[Any], pad_id: int, *, packing: bool = False, **_: Any
    ) -> dict[str, torch.Tensor]:
        """Examples (:class:`BlocksExample` or their dicts) -> flat cells ``[B, T]`` (padded) or
        ``[1, sum T_i]`` (packed, with ``segment_ids``)."""
        examples = [
            f if isinstance(f, BlocksExample) else BlocksExample.from_dict(f, where=f"example {i}")
            for i, f in enumerate(features)
        ]
        return batch_cells([self.example_cells(e, pad_id) for e in examples], pad_id, packing)

    # -- visibility ---------------------------------------------------------------------------

    def eligible(self, stream: torch.Tensor, block_part: torch.Tensor, as_key: bool) -> torch.Tensor:
        """Bool: the cells that take part in cross-stream attention, as keys or as queries."""
        ok = block_part != BLOCK_PAD
        if not self.include_im_end_in_cross_channel:
            ok = ok & (block_part != BLOCK_END)
        if as_key and not self.allow_assistant_cross_channel:
            ok = ok & (stream < 2)
        return ok

    def cell_index(
        self,
        step: torch.Tensor,
        stream: torch.Tensor,
        index: torch.Tensor,
        block_part: torch.Tensor,
        as_key: bool,
        segment: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> CellIndex:
        """Bookkeeping of queries (``as_key=False``) or keys for :meth:`allowed`."""
        return CellIndex(step, stream, index, segment, visible, self.eligible(stream, block_part, as_key))

    def allowed(self, q: CellIndex, k: CellIndex) -> torch.Tensor:
        """The y-rule, bool ``[B, 1, Tq, Tk]`` (see the module docstring)."""
        return yrule_allowed(q, k)

    def self_only_allowed(self, q: CellIndex, k: CellIndex) -> torch.Tensor:
        """LongCE's "self-only" view: every query sees the system block and its own block's past,
        nothing of the user block or the other heads (one forward gives every head's self-only
        distribution at once, since no head sees another here)."""
        qs, ks = q.stream[:, :, None], k.stream[:, None, :]
        earlier = k.step[:, None, :] < q.step[:, :, None]
        ok = earlier & ((qs == ks) | (ks == 0))
        return _finish(ok, q, k)


def _finish(ok: torch.Tensor, q: CellIndex, k: CellIndex) -> torch.Tensor:
    if q.segment is not None and k.segment is not None:
        ok = ok & (q.segment[:, :, None] == k.segment[:, None, :])
    if k.visible is not None:
        ok = ok & k.visible[:, None, :]
    return (ok | (q.index[:, :, None] == k.index[:, None, :]))[:, None]


def yrule_allowed(q: CellIndex, k: CellIndex) -> torch.Tensor:
    """Bool ``[B, 1, Tq, Tk]``: ``k == q``, or (same example, key visible, ``y_k < y_q``, and
    either the same stream or both cells eligible for cross-stream attention)."""
    earlier = k.step[:, None, :] < q.step[:, :, None]
    same = q.stream[:, :, None] == k.stream[:, None, :]
    if q.cross is not None and k.cross is not None:
        same = same | (q.cross[:, :, None] & k.cross[:, None, :])
    else:
        same = torch.ones_like(same)
    return _finish(earlier & same, q, k)


register_layout("blocks", BlocksLayout)
