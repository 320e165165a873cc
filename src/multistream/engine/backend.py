"""The decode-backend interface: what the engine needs from whatever runs the model.

A backend holds the KV state of a fixed or growing number of *slots* (one per live session)
and does one thing per call: append some tokens to some slots and return the logits of the
tokens the engine will sample from. Everything layout-specific (which tokens a step appends,
their positions and stream ids, which are hidden) is decided by the engine's step planner
(:mod:`multistream.engine.planner`) and arrives here as plain tensors, so one backend serves
every layout.

Visibility rule of :meth:`DecodeBackend.append` (both layouts, every decode step): a new token
(query) sees

* every cached or new key of the same slot whose position is strictly smaller than its own and
  that is not hidden, and
* itself.

That is Layout A's block-causal rows (tokens of one row share a position and do not see each
other) and Layout B's decode-time y-rule (paper-spec §3.2). The model's ablation mask kinds
(``row_visible``: also same-position keys; ``causal``: every earlier key in append order) are
honoured by :class:`~multistream.engine.hf_backend.HFBackend` through the model config. A prefill
may instead give an explicit mask between its new tokens (the layout's training mask).

Hidden tokens (``hidden``) are seen by no other query; a backend made with ``drop_hidden``
does not keep them at all (less memory and attention work, the same tokens). Tokens marked
absent (``present`` False) are padding: a stream with nothing to say at a step appends nothing.

A new backend (vLLM, SGLang, a compiled static-cache loop) is one module implementing
:class:`DecodeBackend`; see ``docs/architecture.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

__all__ = ["DecodeBackend", "TokenPlan"]


@dataclass
class TokenPlan:
    """Tokens to append to some slots in one call, ``[N, T]`` per slot (T = the most any slot
    appends; shorter slots are padded with ``present`` False).

    Args:
        slots: ``[N]`` slot of each row.
        ids: ``[N, T]`` token ids.
        positions: ``[N, T]`` position id (RoPE / learned position) of each token.
        streams: ``[N, T]`` stream id of each token (the stream embedding).
        present: bool ``[N, T]``; False = padding, appended nowhere.
        hidden: bool ``[N, T]``; True = no other query may see this key.
        logits_at: ``[N, G]`` indices into T of the tokens whose logits are wanted (G per call;
            -1 = none for that entry).
        allowed: optional bool ``[N, T, T]`` explicit mask between the new tokens (prefill with
            the layout's training mask); cached keys still follow the visibility rule.
    """

    slots: torch.Tensor
    ids: torch.Tensor
    positions: torch.Tensor
    streams: torch.Tensor
    present: torch.Tensor
    hidden: torch.Tensor
    logits_at: torch.Tensor
    allowed: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.ids.shape
        for name in ("positions", "streams", "present", "hidden"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"TokenPlan.{name} has shape {tuple(getattr(self, name).shape)}, ids {tuple(shape)}"
                )
        if self.slots.shape != shape[:1] or self.logits_at.shape[0] != shape[0]:
            raise ValueError("TokenPlan.slots and .logits_at need one row per entry of ids")


class DecodeBackend(ABC):
    """Runs the model for the engine and owns its KV state.

    Slots are opened for new sessions and freed when they end; a freed slot's keys are gone at
    once (Moshi's per-slot reset), so a running batch takes new sessions between any two steps.
    """

    @abstractmethod
    def open_slot(self) -> int:
        """A free, empty slot (a new one when none is free)."""

    @abstractmethod
    def free_slot(self, slot: int) -> None:
        """Forget a slot's keys and make it available to :meth:`open_slot`."""

    @abstractmethod
    def append(self, plan: TokenPlan) -> torch.Tensor:
        """Run ``plan``'s tokens through the model with the visibility rule, keep their keys
        (except hidden ones when dropping), and return float32 logits ``[N, G, V]`` at
        ``plan.logits_at`` (rows of -1 entries are undefined)."""

    @abstractmethod
    def cached_tokens(self, slot: int) -> int:
        """Keys a slot holds (visible or hidden, padding excluded)."""

    @abstractmethod
    def cache_bytes(self) -> int:
        """Bytes of KV state in use (keys and values of every layer, padding included)."""

    @property
    @abstractmethod
    def num_slots(self) -> int:
        """Slots allocated (open or free)."""
