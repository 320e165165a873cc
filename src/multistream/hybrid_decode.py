"""A decode backend for hybrid models (softmax attention + column-mode linear attention).

The engine's default backend keeps a preallocated slot KV cache, which has no place for the
recurrent and convolution states of Gated DeltaNet layers. This backend gives every slot the
model's own ``transformers`` cache (for Qwen3.5: KV for the attention layers, and per linear
layer one conv and one recurrent state per stream, since the layers run in column mode, see
:mod:`multistream.hybrid`) and runs each slot's tokens through
:meth:`MultiStreamLM.forward_tokens` with the engine's visibility rule. Sessions are therefore
forwarded one slot at a time; hybrid models are large, and one session per GPU is their use.

Column mode needs whole rows in stream order, so a plan that leaves cells out (``drop_silence``,
Layout B) is refused with a message; ``skip_silence`` works (hidden keys are masked in the
attention layers; the linear layers, as in the authors' code, read every cell of their column).
"""

from __future__ import annotations

from typing import Any

import torch

from .engine.backend import DecodeBackend, TokenPlan

__all__ = ["HybridBackend"]


class HybridBackend(DecodeBackend):
    """:class:`~multistream.engine.backend.DecodeBackend` with one model cache per slot.

    Args:
        model: a :class:`~multistream.model.MultiStreamLM` whose base has linear-attention
            layers in column mode (``model.column_mode`` set), in eval mode.
        slots: slots to open room for up front.
    """

    def __init__(self, model: Any, slots: int = 1) -> None:
        if getattr(model, "column_mode", None) is None:
            raise ValueError("HybridBackend serves models with column-mode linear-attention layers")
        self.model = model
        self.C = model.num_streams
        self.mask_kind = model.config.mask
        self._caches: list[Any] = [None] * slots
        self._k_pos = [torch.zeros(0, dtype=torch.long, device=model.device) for _ in range(slots)]
        self._k_vis = [torch.zeros(0, dtype=torch.bool, device=model.device) for _ in range(slots)]
        self._free = list(range(slots))

    # -- slots -----------------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        return len(self._caches)

    def open_slot(self) -> int:
        if self._free:
            slot = min(self._free)
            self._free.remove(slot)
            return slot
        self._caches.append(None)
        self._k_pos.append(self._k_pos[0].new_zeros(0))
        self._k_vis.append(self._k_vis[0].new_zeros(0))
        return len(self._caches) - 1

    def free_slot(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not open")
        self._caches[slot] = None
        self._k_pos[slot] = self._k_pos[slot][:0]
        self._k_vis[slot] = self._k_vis[slot][:0]
        self._free.append(slot)

    def cached_tokens(self, slot: int) -> int:
        return int(self._k_vis[slot].numel())

    def cache_bytes(self) -> int:
        total = 0
        for cache in self._caches:
            for layer in getattr(cache, "layers", ()) if cache is not None else ():
                total += sum(
                    v.numel() * v.element_size() for v in vars(layer).values() if isinstance(v, torch.Tensor)
                )
        return total

    # -- the forward -----------------------------------------------------------------------------

    def append(self, plan: TokenPlan) -> torch.Tensor:
        N, _T = plan.ids.shape
        G = plan.logits_at.shape[1]
        out: torch.Tensor | None = None
        for n in range(N):
            logits = self._append_slot(plan, n)  # [t, V]
            if out is None:
                out = logits.new_zeros(N, G, logits.shape[-1])
            present_index = plan.present[n].long().cumsum(0) - 1  # T-index -> kept-token index
            want = plan.logits_at[n]
            ok = want >= 0
            if bool(ok.any()):
                out[n, ok] = logits[present_index[want[ok]]]
        assert out is not None
        return out

    def _append_slot(self, plan: TokenPlan, n: int) -> torch.Tensor:
        slot = int(plan.slots[n])
        keep = plan.present[n]
        ids, pos = plan.ids[n][keep], plan.positions[n][keep]
        streams, hidden = plan.streams[n][keep], plan.hidden[n][keep]
        t = ids.numel()
        if t % self.C or not bool(
            (streams.view(-1, self.C) == torch.arange(self.C, device=streams.device)).all()
        ):
            raise ValueError(
                "a hybrid (linear-attention) model decodes whole rows in stream order; drop_silence and "
                "Layout B leave cells out, which its column-mode recurrent layers cannot take"
            )
        k_pos = torch.cat([self._k_pos[slot], pos])
        k_vis = torch.cat([self._k_vis[slot], ~hidden])
        L = k_pos.numel() - t
        earlier = (
            k_pos[None, :] <= pos[:, None]
            if self.mask_kind == "row_visible"
            else k_pos[None, :] < pos[:, None]
        )
        if self.mask_kind == "causal":
            earlier = (
                torch.arange(L + t, device=pos.device)[None, :]
                < (L + torch.arange(t, device=pos.device))[:, None]
            )
        allowed = earlier & k_vis[None, :]
        if plan.allowed is not None:
            allowed[:, L:] = plan.allowed[n][keep][:, keep]
        allowed[torch.arange(t), L + torch.arange(t)] = True  # every token sees itself
        logits, cache = self.model.forward_tokens(
            ids[None], pos[None], streams[None], allowed[None, None], cache=self._caches[slot], use_cache=True
        )
        self._caches[slot] = cache
        self._k_pos[slot], self._k_vis[slot] = k_pos, k_vis
        return logits[0].float()
