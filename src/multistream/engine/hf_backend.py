"""The Hugging Face decode backend: the wrapped model's own forward, a slot KV cache, the CPU
fast path.

The KV cache is a preallocated buffer per layer, ``[slots, kv_heads, capacity, head_dim]``,
handed to the model as a ``transformers`` :class:`~transformers.Cache`. Each append writes the
new keys in place at every slot's own length (no ``torch.cat`` of the whole cache per step, as
``DynamicCache`` does), so a step costs the same at 2048 tokens of context as at 100, apart from
attention itself. Keys that no later query may see (dropped silence, padding) are written past
the slot's length and overwritten by the next append, so dropping them costs nothing. Freeing a
slot sets its length to 0: its old keys are invisible at once (Moshi's per-slot reset), and a
new session can take the slot before the next row.

Attention: a multi-token append (a row of C cells) with a custom mask makes ``transformers``'
SDPA path repeat every key/value head ``num_heads / num_kv_heads`` times (``repeat_kv``), a copy
of the whole cache per layer per step that grows with context; a one-token step of plain
``generate`` avoids it. During decoding forwards this backend therefore routes the model's
attention through :func:`grouped_sdpa`, which folds the query heads of one key/value head into
the query axis instead (no copy; the same dot products).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from ..fastpath import DEFAULT_MAX_ROWS, fast_path_pays, small_row_forward
from .backend import DecodeBackend, TokenPlan

__all__ = ["GROUPED_SDPA", "PREFILL_CHUNK", "HFBackend", "SlotCache", "grouped_sdpa"]

GROUPED_SDPA = "multistream_grouped_sdpa"

# Columns are added in chunks, so a growing cache is copied once every this many tokens.
_GROW = 256
# Longer appends (prefills) run in pieces of this many tokens (see HFBackend.append).
PREFILL_CHUNK = 512


def grouped_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for grouped-query attention with a mask shared by all heads, without ``repeat_kv``,
    for appends of a few tokens to a longer cache (other calls go to ``transformers``' SDPA).

    ``query [B, H, T, d]`` with ``key/value [B, Hkv, L, d]``: the H / Hkv query heads that share
    a key/value head become ``H/Hkv * T`` queries of that head, and the mask ``[B, 1, T, L]`` is
    repeated along the query axis (T x L, small) instead of the cache along heads (L x d per head).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, T, D = query.shape
    groups = H // key.shape[1]
    # Grouping pays when few queries meet a long cache (decode). For a prefill (queries about as
    # many as keys) repeating the cache is cheap and repeating the mask would not be.
    short = key.shape[2] >= 4 * T
    if groups == 1 or T == 1 or not short or attention_mask is None or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    q = query.reshape(B, key.shape[1], groups * T, D)
    mask = attention_mask[:, :, :, : key.shape[2]].repeat(1, 1, groups, 1)  # [B, 1, groups*T, L]
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling)
    return out.reshape(B, H, T, D).transpose(1, 2).contiguous(), None  # [B, T, H, d]


def _register_attention() -> None:
    from transformers import AttentionInterface

    if GROUPED_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)


class _SlotLayer(CacheLayerMixin):
    """One layer's keys and values; writes go to the columns the backend chose for this call."""

    is_compileable = False
    is_croppable = False

    def __init__(self, cache: SlotCache) -> None:
        super().__init__()
        self._cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        slots, capacity = self._cache.slots, self._cache.capacity
        _, H, _, D = key_states.shape
        self.keys = key_states.new_zeros(slots, H, capacity, D)
        self.values = value_states.new_zeros(slots, H, capacity, value_states.shape[-1])
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        dest = self._cache.dest  # [B, T], B = the leading slots taking part
        B, H, T, D = key_states.shape
        keys, values = self.keys[:B], self.values[:B]
        index = dest[:, None, :, None]
        keys.scatter_(2, index.expand(B, H, T, D), key_states)
        values.scatter_(2, index.expand(B, H, T, value_states.shape[-1]), value_states)
        span = self._cache.span
        return keys[:, :, :span], values[:, :, :span]

    def resize(self, slots: int, capacity: int) -> None:
        if not self.is_initialized:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(slots, old.shape[1], capacity, old.shape[3])
            new[: old.shape[0], :, : old.shape[2]] = old
            setattr(self, name, new)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.span, 0

    def get_seq_length(self) -> int:
        return max(0, self._cache.span - self._cache.dest.shape[1]) if self._cache.dest is not None else 0

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """A ``transformers`` cache over fixed slots with in-place writes (see the module docstring).

    Args:
        num_layers: the base model's decoder layers.
        slots, capacity: initial batch slots and token columns.
    """

    def __init__(self, num_layers: int, slots: int, capacity: int) -> None:
        self.slots = slots
        self.capacity = capacity
        self.dest: torch.Tensor | None = None  # [B, T] columns of the current append
        self.span = 0  # columns the current forward attends over
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])

    def resize(self, slots: int, capacity: int) -> None:
        for layer in self.layers:
            layer.resize(slots, capacity)
        self.slots, self.capacity = slots, capacity

    def nbytes_per_column(self) -> int:
        """Bytes one token column of one slot takes over all layers (0 before the first write)."""
        return sum(
            (layer.keys[0, :, 0].numel() * layer.keys.element_size())
            + (layer.values[0, :, 0].numel() * layer.values.element_size())
            for layer in self.layers
            if layer.is_initialized
        )


class HFBackend(DecodeBackend):
    """:class:`DecodeBackend` over a :class:`~multistream.model.MultiStreamLM` (any HF base).

    Args:
        model: the multi-stream model in eval mode.
        slots: slots to allocate up front (more are added when needed).
        drop_hidden: do not keep hidden keys (``SessionConfig.drop_silence``).
        fastpath: route forwards of at most ``fastpath_max_rows`` tokens through
            :func:`multistream.fastpath.small_row_linear` on CPU, where it measured faster
            than ``F.linear`` on this machine (:func:`multistream.fastpath.fast_path_pays`).
        fastpath_max_rows: see above.
        pad_id: token id written into padding cells.
    """

    def __init__(
        self,
        model: Any,
        slots: int = 1,
        *,
        drop_hidden: bool = False,
        fastpath: bool = True,
        fastpath_max_rows: int = DEFAULT_MAX_ROWS,
        pad_id: int = 0,
    ) -> None:
        self.model = model
        self.device = model.device
        self.mask_kind = model.config.mask
        self.drop_hidden = drop_hidden
        self.pad_id = pad_id
        base_config = model.get_base_model().config
        self._base_config = base_config
        self._grouped = getattr(base_config, "_attn_implementation", None) == "sdpa"
        if self._grouped:
            _register_attention()
        layers = getattr(base_config, "num_hidden_layers", None) or base_config.n_layer
        self.cache = SlotCache(layers, slots, _GROW)
        device = self.device
        self.length = torch.zeros(slots, dtype=torch.long, device=device)  # kept keys per slot
        self.next_seq = torch.zeros(slots, dtype=torch.long, device=device)
        self.k_pos = torch.zeros(slots, _GROW, dtype=torch.long, device=device)
        self.k_seq = torch.zeros(slots, _GROW, dtype=torch.long, device=device)
        self.k_vis = torch.zeros(slots, _GROW, dtype=torch.bool, device=device)
        self._free = list(range(slots))
        self._fast = fastpath
        self._fast_max = fastpath_max_rows
        self.prefill_chunk = PREFILL_CHUNK
        # The fast path's per-module forwards are made once, then swapped in per forward.
        self._linears = (
            [(m, small_row_forward(m, fastpath_max_rows)) for m in model.modules() if type(m) is nn.Linear]
            if fastpath
            else []
        )

    # -- slots -----------------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        return self.cache.slots

    def open_slot(self) -> int:
        if self._free:
            slot = min(self._free)
            self._free.remove(slot)
            return slot
        slot = self.cache.slots
        self._resize(slot + 1, self.cache.capacity)
        return slot

    def free_slot(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not open")
        self.length[slot] = 0
        self.next_seq[slot] = 0
        self.k_vis[slot] = False
        self._free.append(slot)

    def _resize(self, slots: int, capacity: int) -> None:
        old_slots, old_cap = self.cache.slots, self.cache.capacity

        def grow(t: torch.Tensor) -> torch.Tensor:
            new = t.new_zeros((slots, capacity) if t.dim() == 2 else (slots,))
            if t.dim() == 2:
                new[:old_slots, :old_cap] = t
            else:
                new[:old_slots] = t
            return new

        self.length, self.next_seq = grow(self.length), grow(self.next_seq)
        self.k_pos, self.k_seq, self.k_vis = grow(self.k_pos), grow(self.k_seq), grow(self.k_vis)
        self.cache.resize(slots, capacity)

    # -- accounting ------------------------------------------------------------------------------

    def cached_tokens(self, slot: int) -> int:
        n = int(self.length[slot])
        return int(self.k_vis[slot, :n].sum())

    def cache_bytes(self) -> int:
        return self.num_slots * int(self.length.max()) * self.cache.nbytes_per_column()

    # -- the forward -----------------------------------------------------------------------------

    def _full(self, plan: TokenPlan, B: int) -> dict[str, torch.Tensor]:
        """The plan spread over slots ``0..B-1`` (slots not in the plan append padding)."""
        T = plan.ids.shape[1]
        device = self.device
        out = {
            "ids": torch.full((B, T), self.pad_id, dtype=torch.long, device=device),
            "positions": torch.zeros(B, T, dtype=torch.long, device=device),
            "streams": torch.zeros(B, T, dtype=torch.long, device=device),
            "present": torch.zeros(B, T, dtype=torch.bool, device=device),
            "hidden": torch.ones(B, T, dtype=torch.bool, device=device),
        }
        slots = plan.slots.to(device)
        for name, full in out.items():
            full[slots] = getattr(plan, name).to(device)
        return out

    @contextmanager
    def _decoding(self, tokens: int) -> Iterator[None]:
        """Fast-path linears (where they pay) and grouped attention for one forward."""
        linears = (
            self._linears
            if self._linears and tokens <= self._fast_max and fast_path_pays(self.model, tokens)
            else []
        )
        for module, forward in linears:
            module.forward = forward
        config = self._base_config
        if self._grouped:
            config._attn_implementation = GROUPED_SDPA
        try:
            yield
        finally:
            if self._grouped:
                config._attn_implementation = "sdpa"
            for module, _ in linears:
                del module.forward

    def append(self, plan: TokenPlan) -> torch.Tensor:
        T = plan.ids.shape[1]
        if plan.allowed is not None or self.prefill_chunk >= T:
            return self._append(plan)
        # A long prefill runs in chunks: each chunk attends only to keys up to its own end, so
        # attention skips the (masked) upper triangle as a causal kernel would; one forward with
        # an explicit mask computes all of it (2x the attention work at 2048 tokens).
        out: torch.Tensor | None = None
        at = plan.logits_at
        for start in range(0, T, self.prefill_chunk):
            end = min(T, start + self.prefill_chunk)
            inside = (at >= start) & (at < end)
            part = TokenPlan(
                slots=plan.slots,
                ids=plan.ids[:, start:end],
                positions=plan.positions[:, start:end],
                streams=plan.streams[:, start:end],
                present=plan.present[:, start:end],
                hidden=plan.hidden[:, start:end],
                logits_at=torch.where(inside, at - start, -1),
            )
            logits = self._append(part)
            keep = inside.to(logits.device)[..., None]
            out = logits if out is None else torch.where(keep, logits, out)
        assert out is not None
        return out

    def _append(self, plan: TokenPlan) -> torch.Tensor:
        # Only slots up to the highest one in the plan take part: open_slot hands out the lowest
        # free slot, so free slots at the end cost nothing, and the buffers' leading rows are
        # views (no copy).
        B = int(plan.slots.max()) + 1
        full = self._full(plan, B)
        present, hidden = full["present"], full["hidden"]
        T = present.shape[1]
        device = self.device
        keep = present & ~hidden if self.drop_hidden else present
        # Kept tokens first (in order), then the rest: those lie past the new length and are
        # overwritten by the next append.
        n_keep = keep.sum(1)  # [B]
        rank = torch.where(keep, keep.cumsum(1) - 1, n_keep[:, None] + (~keep).cumsum(1) - 1)
        length = self.length[:B]
        dest = length[:, None] + rank  # [B, T]
        span = int((length + T).max())
        if span > self.cache.capacity:
            self._resize(self.num_slots, -(-span // _GROW) * _GROW)
        seq = self.next_seq[:B, None] + torch.arange(T, device=device)  # [B, T]
        self.k_pos[:B].scatter_(1, dest, full["positions"])
        self.k_seq[:B].scatter_(1, dest, seq)
        self.k_vis[:B].scatter_(1, dest, present & ~hidden)
        allowed = self._mask(full["positions"], seq, dest, span, plan)  # [B, 1, T, span]
        self.cache.dest, self.cache.span = dest, span
        logits_at = plan.logits_at.to(device)
        same = bool((logits_at == logits_at[:1]).all())
        keep_index = logits_at[0] if same else torch.arange(T, device=device)
        try:
            with self._decoding(B * T):
                logits, _ = self.model.forward_tokens(
                    full["ids"],
                    full["positions"],
                    full["streams"],
                    allowed,
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=keep_index.clamp(min=0),
                )  # [B, G or T, V]
        finally:
            self.cache.dest = None
        self.length[:B] += n_keep
        self.next_seq[:B] += T
        rows = logits[plan.slots.to(device)]  # [N, G or T, V]
        if not same:
            rows = rows.gather(1, logits_at.clamp(min=0)[:, :, None].expand(-1, -1, rows.shape[-1]))
        return rows.float()

    def _mask(
        self, q_pos: torch.Tensor, q_seq: torch.Tensor, dest: torch.Tensor, span: int, plan: TokenPlan
    ) -> torch.Tensor:
        """Bool ``[B, 1, T, span]``: the visibility rule over cached and new keys."""
        B = q_pos.shape[0]
        cols = torch.arange(span, device=self.device)
        k_pos, k_seq = self.k_pos[:B, None, :span], self.k_seq[:B, None, :span]
        written = cols[None] < (self.length[:B] + q_pos.shape[1])[:, None]  # [B, span]
        visible = (self.k_vis[:B, :span] & written)[:, None]  # [B, 1, span]
        if self.mask_kind == "block_causal":
            rule = k_pos < q_pos[:, :, None]
        elif self.mask_kind == "row_visible":
            rule = k_pos <= q_pos[:, :, None]
        else:
            rule = k_seq <= q_seq[:, :, None]
        allowed = rule & visible  # [B, T, span]
        if plan.allowed is not None:
            # An explicit mask between new tokens replaces the rule there.
            slots = plan.slots.to(self.device)
            d = dest[slots]  # [N, T]
            new = allowed[slots]
            new.scatter_(2, d[:, None, :].expand(-1, d.shape[1], -1), plan.allowed.to(self.device))
            allowed[slots] = new
        allowed |= cols[None, None] == dest[:, :, None]  # a query always sees itself
        return allowed[:, None]
