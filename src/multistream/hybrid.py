"""Column mode for linear-attention layers (Gated DeltaNet) of hybrid models such as Qwen3.5.

A softmax-attention layer obeys the block-causal mask; a linear-attention layer does not take a
mask at all: it folds every earlier token of the flattened sequence into one recurrent state and
a causal convolution, so run on a row-major grid it would let a token read its same-row peers.
Column mode (the released Stream-27B, spec §2.3) makes each stream's column its own sequence:
the ``R·C`` tokens ``[B, R·C, D]`` are regrouped to ``[B·C, R, D]``, so every stream keeps its own
recurrent and convolution state, in training and in cached decoding alike (the cache simply holds
``B·C`` states per linear layer). Streams then meet only in the softmax-attention layers.

The wrapping is by composition: forward hooks on the unmodified modules, no modeling code is
copied, parameter names do not change (saved weights stay stock), and :meth:`ColumnMode.remove`
returns the plain model. Positions need nothing here: a 2-D ``position_ids`` (row index) is
broadcast by Qwen3.5 to its three mRoPE axes, so T = H = W = row as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["LINEAR_ATTENTION_MODULES", "ColumnMode", "attach_column_mode", "linear_attention_modules"]

# Which submodule of a decoder layer is the linear-attention token mixer, per model_type. One
# entry per architecture (a model whose config lists "linear_attention" layers but is missing
# here fails loudly rather than leaking).
LINEAR_ATTENTION_MODULES: dict[str, str] = {
    "qwen3_5_text": "linear_attn",
    "qwen3_5": "linear_attn",
    "qwen3_5_moe_text": "linear_attn",
    "qwen3_5_moe": "linear_attn",
    "qwen3_next": "linear_attn",
}


def _text_config(base: nn.Module) -> Any:
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def linear_attention_modules(base: nn.Module) -> list[nn.Module]:
    """The linear-attention modules of ``base`` (empty for a pure softmax-attention model)."""
    config = _text_config(base)
    layer_types = list(getattr(config, "layer_types", None) or [])
    expected = layer_types.count("linear_attention")
    if not expected:
        return []
    model_type = getattr(config, "model_type", None)
    attr = LINEAR_ATTENTION_MODULES.get(model_type)
    if attr is None:
        raise ValueError(
            f"{model_type!r} has {expected} linear-attention layers but multistream does not know which "
            "module they are, so it cannot keep them stream-causal; add the model type to "
            "multistream.hybrid.LINEAR_ATTENTION_MODULES"
        )
    found = [m for name, m in base.named_modules() if name.rsplit(".", 1)[-1] == attr]
    if len(found) != expected:
        raise ValueError(
            f"{model_type}: the config lists {expected} linear-attention layers but {len(found)} "
            f"'{attr}' modules were found"
        )
    return found


def _decoder(base: nn.Module) -> nn.Module:
    get = getattr(base, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None or not hasattr(decoder, "layers"):
        decoder = next(
            (m for m in base.modules() if isinstance(getattr(m, "layers", None), nn.ModuleList)), None
        )
    if decoder is None:
        raise ValueError(f"{type(base).__name__}: no decoder with a 'layers' list found")
    return decoder


@dataclass
class ColumnMode:
    """Hooks that keep a hybrid model's linear-attention layers stream-causal.

    Args:
        num_streams: C, the streams of every row; inputs must be whole rows, row-major.
        modules: the hooked linear-attention modules.
    """

    num_streams: int
    modules: list[nn.Module]
    owner: nn.Module | None = field(default=None, repr=False)
    _handles: list[Any] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        """Detach every hook: the model is the plain base model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.owner is not None:
            self.owner._multistream_column_mode = None
            self.owner = None

    # Hooks ------------------------------------------------------------------------------------

    def _to_columns(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        C = self.num_streams
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
        else:
            hidden, args = args[0], args[1:]
        B, T, D = hidden.shape
        if T % C:
            raise ValueError(
                f"a linear-attention layer got {T} tokens, not whole rows of {C} streams; column mode "
                "needs row-major grids (Layout A)"
            )
        # [B, R·C, D] -> [B, R, C, D] -> [B, C, R, D] -> [B·C, R, D]: one sequence per column.
        kwargs = {
            **kwargs,
            "hidden_states": hidden.view(B, T // C, C, D).transpose(1, 2).reshape(B * C, T // C, D),
        }
        # The padding mask is per flattened token; padding rows only ever trail a column (or lead
        # it with zero states), and the cell outputs at padding are never used.
        kwargs["attention_mask"] = None
        return args, kwargs

    def _from_columns(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        C = self.num_streams
        out = output[0] if isinstance(output, tuple) else output
        BC, R, D = out.shape
        # [B·C, R, D] -> [B, C, R, D] -> [B, R, C, D] -> [B, R·C, D]
        merged = out.view(BC // C, C, R, D).transpose(1, 2).reshape(BC // C, R * C, D)
        return (merged, *output[1:]) if isinstance(output, tuple) else merged

    @staticmethod
    def _mask_dict(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The decoder would turn a 4-D mask into a padding mask for its linear layers; give it
        # the per-layer-type mapping instead: the block-causal mask for softmax attention, none
        # for the (column-mode) linear layers.
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            kwargs = {**kwargs, "attention_mask": {"full_attention": mask, "linear_attention": None}}
        return args, kwargs


def attach_column_mode(base: nn.Module, num_streams: int) -> ColumnMode | None:
    """Put every linear-attention layer of ``base`` in column mode; None when it has none.

    Attaching again with the same number of streams returns the existing mode (a base wrapped
    twice); with another number it is an error.

    Example:
        >>> mode = attach_column_mode(qwen35_model, num_streams=10)   # doctest: +SKIP
        >>> mode.remove()                                             # doctest: +SKIP
    """
    modules = linear_attention_modules(base)
    if not modules:
        return None
    existing = getattr(base, "_multistream_column_mode", None)
    if existing is not None:
        if existing.num_streams != num_streams:
            raise ValueError(
                f"this model's linear-attention layers are already in column mode for "
                f"{existing.num_streams} streams, not {num_streams}; call .remove() on the old mode first"
            )
        return existing
    mode = ColumnMode(num_streams=num_streams, modules=modules, owner=base)
    for module in modules:
        mode._handles.append(module.register_forward_pre_hook(mode._to_columns, with_kwargs=True))
        mode._handles.append(module.register_forward_hook(mode._from_columns, with_kwargs=True))
    mode._handles.append(_decoder(base).register_forward_pre_hook(ColumnMode._mask_dict, with_kwargs=True))
    base._multistream_column_mode = mode
    return mode
