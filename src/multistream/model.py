"""`MultiStreamLM`: any Hugging Face decoder-only LM, run on grids of parallel streams.

The wrapper owns exactly one new parameter, the stream embedding ``[C, D]``, added to the token
embeddings (spec §2.3). Everything else is the unmodified base model, driven through
``inputs_embeds``, explicit ``position_ids`` (= row index) and a custom 4-D attention mask
(block-causal). No modeling file is copied or patched, so any architecture whose forward accepts
those three works; tested: Llama (incl. SmolLM2), Qwen2, Qwen3, GPT-2.

``forward`` is the training / scoring path; decoding lives in the engine.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

from . import __version__
from .layout.base import IGNORE_INDEX, CellIndex, Layout, LayoutError, get_layout
from .layout.blocks import BlocksLayout
from .layout.grid import (
    MASK_KINDS,
    MaskKind,
    attention_allowed,
    cell_loss_weights,
    flatten_grid,
    next_row_loss,
    next_row_targets,
    row_layout,
    to_additive,
    unflatten,
)
from .layout.longce import LongCEConfig, longce_loss
from .schema import Role, SchemaError, StreamSchema

__all__ = [
    "CONFIG_NAME",
    "STREAM_EMBEDDING_NAME",
    "MultiStreamConfig",
    "MultiStreamLM",
    "MultiStreamOutput",
]

CONFIG_NAME = "multistream_config.json"
STREAM_EMBEDDING_NAME = "stream_embedding.safetensors"
BASE_DIR = "base"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
CONFIG_FORMAT_VERSION = 2
# Version 1 (first release) had no layout fields: it is Layout A with visible silence.
READABLE_FORMAT_VERSIONS = (1, 2)

# Attention implementations that honour an arbitrary additive 4-D mask. Flash kernels take only
# padding masks and would silently ignore block-causality.
SUPPORTED_ATTENTION = ("sdpa", "eager")

# Architectures with learned absolute position embeddings: rows beyond this config field fail
# inside the embedding lookup, so check early with a readable message. RoPE models have no limit.
_LEARNED_POSITION_FIELD = {
    "gpt2": "n_positions",
    "gpt_neo": "max_position_embeddings",
    "opt": "max_position_embeddings",
}


@dataclass
class MultiStreamConfig:
    """What a saved multi-stream model needs besides weights.

    Args:
        schema: streams, roles and the resolved silence id.
        base_model: how to load the base again: an embedded name (``"smollm2-135m"``) or a
            path; None when the base weights are saved alongside.
        mask: ``block_causal`` (paper), ``row_visible`` or ``causal`` (ablations).
        role_loss_weights: loss weight per generated role (input streams are never trained).
        silence_loss_weight: multiplier for targets that are the silence token (1 = the paper:
            silence is an ordinary target).
        layout: how streams become one sequence: ``grid`` (Layout A) or ``blocks`` (Layout B);
            see :func:`multistream.layout.get_layout`.
        layout_options: the layout's options (grid: ``hide_silence``; blocks:
            ``include_im_end_in_cross_channel``, ``allow_assistant_cross_channel``). A model
            trained with hidden silence keys must decode with them hidden: read
            :attr:`hides_silence`.
    """

    schema: StreamSchema
    base_model: str | None = None
    mask: MaskKind = "block_causal"
    role_loss_weights: dict[str, float] = field(default_factory=lambda: {"output": 1.0, "think": 1.0})
    silence_loss_weight: float = 1.0
    layout: str = "grid"
    layout_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask {self.mask!r} is unknown; choose one of {', '.join(MASK_KINDS)}")
        self.layout_options = dict(self.layout_options or {})
        try:
            self.get_layout()
        except LayoutError as err:
            raise ValueError(f"layout: {err}") from None
        for role in self.role_loss_weights:
            if role not in (Role.OUTPUT.value, Role.THINK.value):
                raise ValueError(f"role_loss_weights: {role!r} is not a generated role (output, think)")
        self.schema.require_silence_id()

    def get_layout(self) -> Layout:
        """The :class:`multistream.layout.Layout` this model lays its streams out with (for
        the grid, the ``mask`` field is its mask kind)."""
        if self.layout == "grid":
            return get_layout("grid", **{"mask": self.mask, **self.layout_options})
        return get_layout(self.layout, **self.layout_options)

    @property
    def hides_silence(self) -> bool:
        """Silence keys are hidden from other queries (trained so: decode so too)."""
        return bool(getattr(self.get_layout(), "hide_silence", False))

    def stream_loss_weights(self) -> torch.Tensor:
        """``[C]`` loss weight of each stream (0 for inputs)."""
        return torch.tensor(
            [
                self.role_loss_weights.get(s.role.value, 1.0) if s.generated else 0.0
                for s in self.schema.streams
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": CONFIG_FORMAT_VERSION,
            "multistream_version": __version__,
            "schema": self.schema.to_dict(),
            "base_model": self.base_model,
            "mask": self.mask,
            "role_loss_weights": dict(self.role_loss_weights),
            "silence_loss_weight": self.silence_loss_weight,
            "layout": self.layout,
            "layout_options": dict(self.layout_options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = CONFIG_NAME) -> MultiStreamConfig:
        known = {
            "format_version",
            "multistream_version",
            "schema",
            "base_model",
            "mask",
            "role_loss_weights",
            "silence_loss_weight",
            "layout",
            "layout_options",
            "base_weights",
            "adapter",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; was it written by a newer multistream?")
        if data.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"{where}: format_version {data.get('format_version')!r} is not supported (this multistream "
                f"reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}); upgrade multistream"
            )
        return cls(
            schema=StreamSchema.from_dict(data["schema"], where=f"{where}: schema"),
            base_model=data.get("base_model"),
            mask=data.get("mask", "block_causal"),
            role_loss_weights=data.get("role_loss_weights", {"output": 1.0, "think": 1.0}),
            silence_loss_weight=data.get("silence_loss_weight", 1.0),
            layout=data.get("layout", "grid"),
            layout_options=data.get("layout_options") or {},
        )


@dataclass
class MultiStreamOutput(ModelOutput):
    """Output of :meth:`MultiStreamLM.forward`.

    Attributes:
        loss: weighted next-row cross-entropy over generated streams, when labels were given.
        logits: ``[B, R, C, V]``; ``logits[:, r, c]`` is the distribution of token ``(r+1, c)``.
            Flat cells give ``[B, T, V]`` (token i predicts its aligned label), and
            ``logits_where`` gives ``[N, V]`` at the selected cells.
        cache: the base model's KV cache, when ``use_cache=True``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but the core must not need it to import
        return False
    return isinstance(model, PeftModel)


class MultiStreamLM(nn.Module):
    """A multi-stream LM made from a Hugging Face causal LM by composition.

    Args:
        base_model: a ``PreTrainedModel`` for causal LM (optionally wrapped by PEFT).
        config: :class:`MultiStreamConfig` (schema with resolved silence id, mask kind, ...).

    Example:
        >>> from multistream import MultiStreamLM, StreamSchema
        >>> model = MultiStreamLM.from_base("smollm2-135m", StreamSchema.parse("user,assistant"))  # doctest: +SKIP
        >>> out = model(grid_ids[None])          # [1, R, C] -> out.logits [1, R, C, V]  # doctest: +SKIP
    """

    def __init__(self, base_model: nn.Module, config: MultiStreamConfig) -> None:
        super().__init__()
        base_config = base_model.config
        if getattr(base_config, "is_encoder_decoder", False):
            raise ValueError("MultiStreamLM wraps decoder-only models; got an encoder-decoder model")
        attn = getattr(base_config, "_attn_implementation", None) or "eager"
        if attn not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"the base model uses attn_implementation={attn!r}, which cannot apply a block-causal "
                f"mask; load it with attn_implementation='sdpa' (or 'eager')"
            )
        embeddings = base_model.get_input_embeddings()
        vocab = embeddings.num_embeddings
        silence = config.schema.require_silence_id()
        if silence >= vocab:
            raise SchemaError(f"silence id {silence} is outside the base model's vocabulary ({vocab})")
        # Hybrid bases (Qwen3.5): linear-attention layers take no mask, so run them per stream
        # (multistream.hybrid); a no-op for pure softmax-attention models.
        from .hybrid import attach_column_mode, linear_attention_modules

        if config.layout != "grid" and linear_attention_modules(base_model):
            raise ValueError(
                f"linear-attention (hybrid) base models support the grid layout only, not {config.layout!r}"
            )
        self.column_mode = attach_column_mode(base_model, config.schema.num_streams)
        self.base_model = base_model
        self.config = config
        weight = embeddings.weight
        # Zero-initialised so the untrained wrapper computes exactly what the base model does
        # (the paper uses the HF default normal init; zero keeps a 1-stream wrapper exact).
        self.stream_embedding = nn.Embedding(
            config.schema.num_streams, weight.shape[1], device=weight.device, dtype=weight.dtype
        )
        nn.init.zeros_(self.stream_embedding.weight)
        self.register_buffer(
            "_generated", torch.tensor([s.generated for s in config.schema.streams]), persistent=False
        )
        # Follow the base model's mode: wrapping a base in eval mode gives a wrapper in eval mode.
        self.train(base_model.training)
        # Decoding defaults saved with the model (multistream.presets.DecodingPresets); None = defaults.
        self.decoding_presets: Any = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_base(
        cls,
        model_or_path: nn.Module | str | os.PathLike[str],
        schema: StreamSchema,
        tokenizer: Any | None = None,
        **config_kwargs: Any,
    ) -> MultiStreamLM:
        """Wrap a base model (object, embedded name such as ``"smollm2-135m"``, or local path).

        The schema's silence id is resolved with ``tokenizer`` when not set (a path or name
        brings its own tokenizer). Extra keyword arguments go to :class:`MultiStreamConfig`.
        """
        reference = config_kwargs.pop("base_model", None)
        if isinstance(model_or_path, (str, os.PathLike)):
            from .base_models import load_base

            base, base_tokenizer = load_base(model_or_path)
            tokenizer = tokenizer or base_tokenizer
            reference = reference or str(model_or_path)
        else:
            base = model_or_path
            reference = reference or getattr(base.config, "multistream_base_reference", None)
        if schema.silence_id is None:
            if tokenizer is None:
                raise SchemaError(
                    "the schema has no silence_id: pass tokenizer= (or a schema made with "
                    "schema.with_tokenizer(tokenizer))"
                )
            schema = schema.with_tokenizer(tokenizer)
        return cls(base, MultiStreamConfig(schema=schema, base_model=reference, **config_kwargs))

    # -- accessors ----------------------------------------------------------------------------

    @property
    def schema(self) -> StreamSchema:
        return self.config.schema

    @property
    def num_streams(self) -> int:
        return self.config.schema.num_streams

    @property
    def generated_streams(self) -> torch.Tensor:
        """``[C]`` bool, on the model's device: which streams the model generates (loss targets)."""
        return self._generated

    @property
    def dtype(self) -> torch.dtype:
        return self.stream_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.stream_embedding.weight.device

    def get_base_model(self) -> nn.Module:
        """The plain transformers model (unwrapped from PEFT if needed)."""
        return self.base_model.get_base_model() if _is_peft(self.base_model) else self.base_model

    def merge_adapter(self) -> MultiStreamLM:
        """Fold a PEFT (LoRA) adapter into the base weights, for decoding; no-op without one.

        A merged layer is a plain ``nn.Linear``: one product per layer instead of three, and
        the engine's CPU fast path applies (a demo row cost 1.37x more unmerged). The adapter
        cannot be trained or switched off afterwards (``adapter_merged`` records it), so models
        loaded for training keep it separate. Returns ``self``.
        """
        if _is_peft(self.base_model):
            self.base_model = self.base_model.merge_and_unload()
            self.adapter_merged = True
        return self

    # -- forward ------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, stream_ids: torch.Tensor) -> torch.Tensor:
        """Token plus stream embedding: ``[B, T] -> [B, T, D]``."""
        tokens = self.base_model.get_input_embeddings()(input_ids)
        return tokens + self.stream_embedding(stream_ids).to(tokens.dtype)

    def forward_tokens(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        stream_ids: torch.Tensor,
        allowed: torch.Tensor,
        cache: Any | None = None,
        use_cache: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, Any]:
        """Run flattened tokens through the base model with an explicit mask.

        Args:
            input_ids, position_ids, stream_ids: ``[B, T]``.
            allowed: bool ``[B, 1, T, L+T]`` from :func:`multistream.masks.attention_allowed`
                (L = tokens already in ``cache``).
            cache: the base model's KV cache (``transformers.DynamicCache``) or None.
            use_cache: return the updated cache.
            logits_to_keep: if > 0, only the last that many positions get logits; a 1-D
                LongTensor keeps those positions (the engine skips input streams' cells).

        Returns:
            ``(logits [B, T or the kept positions, V], cache)``.
        """
        self._check_positions(position_ids)
        embeds = self.embed(input_ids, stream_ids)
        out = self.base_model(
            inputs_embeds=embeds,
            attention_mask=to_additive(allowed, embeds.dtype),
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        return out.logits, (out.cache if use_cache else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        cache: Any | None = None,
        use_cache: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
        stream_ids: torch.Tensor | None = None,
        block_part: torch.Tensor | None = None,
        logits_where: torch.Tensor | bool | None = None,
        longce: LongCEConfig | None = None,
        # A **kwargs parameter tells transformers.Trainer that this forward normalises its own
        # loss (model_accepts_loss_kwargs): the trainer then passes num_items_in_batch and does
        # not rescale the loss across processes again (tests/test_training.py, two processes).
        **_: Any,
    ) -> MultiStreamOutput:
        """Score a batch of grids (Layout A) or of flat cells (any layout).

        Args:
            input_ids: LongTensor ``[B, R, C]`` (grids), or ``[B, T]`` flat cells together with
                ``stream_ids`` (what :meth:`multistream.layout.Layout.collate` builds when it
                drops cells, and always for Layout B; see :meth:`_forward_cells`).
            attention_mask: ``[B, R]``, 1 = real row, 0 = padding (default: all real).
            labels: ``[B, R, C]`` token ids aligned with ``input_ids`` (pass ``input_ids``
                itself, or ``IGNORE_INDEX`` where a cell must not be learned). The model shifts
                by one row and ignores input streams, padding and packed-example boundaries.
            position_ids: ``[B, R]`` row positions (default ``arange(R)``, continuing after
                the cached rows when ``cache`` is given); packing restarts them per example.
            segment_ids: ``[B, R]`` packed-example ids (see :func:`multistream.masks.pack_grids`).
            cache: KV cache holding complete earlier rows of every sequence (all visible).
            use_cache: return the updated cache in ``.cache``.
            num_items_in_batch: loss normaliser across devices / accumulation steps.
            stream_ids, block_part: flat cells only (see :meth:`_forward_cells`).
            logits_where: opt-in: compute LM-head logits only at these cells (bool, the shape
                of the targets: ``[B, R, C]`` or ``[B, T]``), or ``True`` for "where a target
                exists" (needs ``labels``). ``logits`` is then ``[N, V]``, the selected cells
                in order; cells outside it get no loss. Saves the ``[.., V]`` head on every
                cell without a target (input streams, padding).
            longce: Layout B only: weight the loss with LongCE on this call (the trainer passes
                it on the steps its schedule selects).

        Returns:
            :class:`MultiStreamOutput` with ``logits [B, R, C, V]`` and ``loss``.
        """
        if input_ids.dim() == 2 and stream_ids is not None:
            if cache is not None or use_cache:
                raise ValueError(
                    "flat cells are a training / scoring batch: decode with the engine, not a cache"
                )
            return self._forward_cells(
                input_ids,
                attention_mask,
                labels,
                position_ids=position_ids,
                segment_ids=segment_ids,
                stream_ids=stream_ids,
                block_part=block_part,
                num_items_in_batch=num_items_in_batch,
                logits_where=logits_where,
                longce=longce,
            )
        if self.config.layout != "grid":
            raise ValueError(
                f"this model uses the {self.config.layout!r} layout: pass flat cells (input_ids "
                "[batch, tokens] with position_ids, stream_ids, ...) as its layout's collate() builds them"
            )
        if input_ids.dim() != 3 or input_ids.shape[2] != self.num_streams:
            raise ValueError(
                f"input_ids must be [batch, rows, {self.num_streams} streams], got {tuple(input_ids.shape)}"
            )
        B, R, C = input_ids.shape
        device = input_ids.device
        past = cache.get_seq_length() if cache is not None else 0
        if past % C:
            raise ValueError(f"the cache holds {past} tokens, not whole rows of {C} streams")
        if position_ids is None:
            position_ids = (torch.arange(R, device=device) + past // C).expand(B, -1)
        row_mask = (
            torch.ones(B, R, dtype=torch.long, device=device) if attention_mask is None else attention_mask
        )
        tok_positions, stream_ids = row_layout(position_ids, C)
        q_index = torch.arange(past, past + R * C, device=device).expand(B, -1)
        q_valid = row_mask.bool().repeat_interleave(C, dim=1)
        if self.config.hides_silence:
            if past:
                raise ValueError(
                    "this model hides silence keys, and a cache does not say which cached keys are silence: "
                    "decode with multistream.engine (it hides them)"
                )
            q_valid = q_valid & (flatten_grid(input_ids) != self.schema.require_silence_id())
        q_segments = None if segment_ids is None else segment_ids.repeat_interleave(C, dim=1)
        if past:
            # Cached rows are earlier, real and of the same example: only their row order matters.
            cached_rows = torch.arange(past, device=device).div(C, rounding_mode="floor") - past // C
            k_rows = torch.cat([tok_positions[:, :1] + cached_rows, tok_positions], 1)
            k_valid = torch.cat([torch.ones(B, past, dtype=torch.bool, device=device), q_valid], 1)
            k_index = torch.arange(past + R * C, device=device).expand(B, -1)
            k_segments = (
                None if q_segments is None else torch.cat([q_segments[:, :1].expand(B, past), q_segments], 1)
            )
        else:
            k_rows, k_valid, k_index, k_segments = tok_positions, q_valid, q_index, q_segments
        allowed = attention_allowed(
            tok_positions, k_rows, q_index, k_index, self.config.mask, q_segments, k_segments, k_valid
        )
        targets = None if labels is None else next_row_targets(labels, self._generated, row_mask, segment_ids)
        where = self._where(logits_where, targets, None)
        if where is not None:
            if use_cache:
                raise ValueError("logits_where is for scoring; it cannot be combined with use_cache")
            logits = self._logits_at(
                flatten_grid(input_ids), tok_positions, stream_ids, allowed, flatten_grid(where), cache
            )  # [N, V]
            new_cache = None
        else:
            logits, new_cache = self.forward_tokens(
                flatten_grid(input_ids), tok_positions, stream_ids, allowed, cache=cache, use_cache=use_cache
            )
            logits = unflatten(logits, C)  # [B, R, C, V]
        loss = None
        if targets is not None:
            weights = cell_loss_weights(
                targets,
                self.config.stream_loss_weights(),
                self.schema.silence_id,
                self.config.silence_loss_weight,
            )
            if where is not None:
                targets, weights = targets[where], weights[where]
            loss = next_row_loss(logits, targets, weights, num_items_in_batch)
        return MultiStreamOutput(loss=loss, logits=logits, cache=new_cache)

    @staticmethod
    def _where(
        logits_where: torch.Tensor | bool | None, targets: torch.Tensor | None, valid: torch.Tensor | None
    ) -> torch.Tensor | None:
        if logits_where is None or logits_where is False:
            return None
        if logits_where is True:
            if targets is None:
                raise ValueError("logits_where=True means 'where a target exists': pass labels too")
            where = targets != IGNORE_INDEX
            return where if valid is None else where & valid
        if targets is not None and logits_where.shape != targets.shape:
            raise ValueError(
                f"logits_where must have the shape of the targets {tuple(targets.shape)}, "
                f"got {tuple(logits_where.shape)}"
            )
        return logits_where.bool()

    def _logits_at(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        stream_ids: torch.Tensor,
        allowed: torch.Tensor,
        where: torch.Tensor,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """LM-head logits ``[N, V]`` only at the ``where`` tokens (``[B, T]`` bool)."""
        self._check_positions(position_ids)
        embeds = self.embed(input_ids, stream_ids)
        out = self.base_model(
            inputs_embeds=embeds,
            attention_mask=to_additive(allowed, embeds.dtype),
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=True,
            logits_to_keep=1,  # the head on one position only; the rest below, where needed
        )
        # The last hidden state is after the final norm (checked for Llama, Qwen2/3, GPT-2 in
        # tests/test_layout.py), so the output embedding alone finishes the logits.
        hidden = out.hidden_states[-1][where]
        return self.get_base_model().get_output_embeddings()(hidden)

    def _forward_cells(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        position_ids: torch.Tensor | None,
        segment_ids: torch.Tensor | None,
        stream_ids: torch.Tensor,
        block_part: torch.Tensor | None,
        num_items_in_batch: int | torch.Tensor | None,
        logits_where: torch.Tensor | bool | None,
        longce: LongCEConfig | None,
    ) -> MultiStreamOutput:
        """Score flat cells ``[B, T]``: ``position_ids`` (step), ``stream_ids``, ``labels``
        (aligned targets: the logits at token i are scored against ``labels[i]``),
        ``attention_mask`` (1 = real token), ``segment_ids`` (packing) and, for Layout B,
        ``block_part``. The mask is the layout's :meth:`~multistream.layout.Layout.allowed`."""
        shape = input_ids.shape
        if position_ids is None or position_ids.shape != shape or stream_ids.shape != shape:
            raise ValueError(
                "flat cells need position_ids and stream_ids of the shape of input_ids [batch, tokens]"
            )
        if int(stream_ids.max()) >= self.num_streams:
            raise ValueError(
                f"stream id {int(stream_ids.max())} is outside this model's {self.num_streams} streams "
                f"({', '.join(self.schema.names)})"
            )
        if getattr(self, "column_mode", None) is not None:
            # Column mode reshapes whole rows of C tokens; flat cells have dropped some.
            raise ValueError(
                "linear-attention (hybrid) base models need whole grid rows: train them with "
                "layout_options.drop_invisible: false"
            )
        B, T = input_ids.shape
        device = input_ids.device
        layout = self.config.get_layout()
        valid = (
            torch.ones(B, T, dtype=torch.bool, device=device)
            if attention_mask is None
            else attention_mask.bool()
        )
        index = torch.arange(T, device=device).expand(B, -1)
        if isinstance(layout, BlocksLayout):
            if block_part is None:
                raise ValueError("Layout B cells need block_part (BlocksLayout.collate adds it)")
            q = layout.cell_index(position_ids, stream_ids, index, block_part, False, segment_ids)
            k = layout.cell_index(position_ids, stream_ids, index, block_part, True, segment_ids, valid)
        else:
            visible = valid
            if self.config.hides_silence:
                visible = valid & (input_ids != self.schema.require_silence_id())
            q = CellIndex(position_ids, stream_ids, index, segment_ids)
            k = CellIndex(position_ids, stream_ids, index, segment_ids, visible)
        allowed = layout.allowed(q, k)
        targets = None
        if labels is not None:
            targets = torch.where(valid & self._generated[stream_ids], labels, IGNORE_INDEX)
        where = self._where(logits_where, targets, valid)
        if where is None:
            logits, _ = self.forward_tokens(input_ids, position_ids, stream_ids, allowed)
            supervised_logits = None if targets is None else logits[targets != IGNORE_INDEX]
        else:
            logits = self._logits_at(input_ids, position_ids, stream_ids, allowed, where)
            supervised_logits = None if targets is None else logits[(targets != IGNORE_INDEX)[where]]
            if targets is not None:
                targets = torch.where(where, targets, IGNORE_INDEX)
        loss = None
        if targets is not None:
            supervised = targets != IGNORE_INDEX
            picked = targets[supervised]
            if longce is not None and longce.enabled:
                if not isinstance(layout, BlocksLayout):
                    raise ValueError("LongCE needs Layout B (heads in blocks); this model uses the grid")
                with torch.no_grad():
                    self_logits = self._logits_at(
                        input_ids, position_ids, stream_ids, layout.self_only_allowed(q, k), supervised
                    )
                    self_lp = torch.log_softmax(self_logits.float(), -1).gather(1, picked[:, None])[:, 0]
                example = torch.arange(B, device=device)[:, None].expand(B, T)
                if segment_ids is not None:
                    example = example * (int(segment_ids.max()) + 1) + segment_ids
                groups = (example * self.num_streams + stream_ids)[supervised]
                loss = longce_loss(supervised_logits, picked, self_lp, groups, longce, num_items_in_batch)
            else:
                weights = self.config.stream_loss_weights().to(device)[stream_ids]
                silence = self.schema.silence_id
                if self.config.silence_loss_weight != 1.0 and self.config.layout == "grid":
                    weights = torch.where(
                        targets == silence, weights * self.config.silence_loss_weight, weights
                    )
                loss = next_row_loss(supervised_logits, picked, weights[supervised], num_items_in_batch)
        return MultiStreamOutput(loss=loss, logits=logits, cache=None)

    def generate_streams(
        self, inputs: dict[str, Any] | None = None, tokenizer: Any | None = None, **options: Any
    ) -> Any:
        """Decode live until a stop rule fires; a thin call of :func:`multistream.engine.generate`.

        Args:
            inputs: text (or token ids) per input stream, fed one token per row and then closed.
            tokenizer: default: the base model's tokenizer.
            **options: ``prefill=``, ``on_row=``, ``config=`` or flat session / sampling
                options (``max_rows=64, temperature=0.7, silence_penalty=2.0``, ...).

        Returns:
            :class:`multistream.engine.GenerationResult` (``.texts`` per stream, ``.grid``).

        Example:
            >>> result = model.generate_streams({"user": "What is 2+2?"}, tok)   # doctest: +SKIP
            >>> result.texts["assistant"]                                        # doctest: +SKIP
        """
        from .engine import generate

        return generate(self, tokenizer, inputs, **options)

    def _check_positions(self, position_ids: torch.Tensor) -> None:
        base_config = self.get_base_model().config
        field_name = _LEARNED_POSITION_FIELD.get(getattr(base_config, "model_type", ""))
        limit = getattr(base_config, field_name, None) if field_name else None
        if limit is not None and position_ids.numel() and int(position_ids.max()) >= limit:
            raise ValueError(
                f"row position {int(position_ids.max())} exceeds this {base_config.model_type} model's "
                f"{limit} learned positions ({field_name}); use fewer rows"
            )

    # -- persistence --------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        tokenizer: Any | None = None,
        save_base: bool | None = None,
    ) -> None:
        """Save config, stream embedding and the base weights or adapter.

        Files: ``multistream_config.json``, ``stream_embedding.safetensors``, then either
        ``adapter/`` (PEFT-wrapped base: only the adapter, the base is loaded from
        ``config.base_model``) or ``base/`` (full base weights). ``save_base=False`` writes only
        the reference (for an unchanged base); ``None`` picks: adapter if PEFT, else full.
        ``tokenizer`` is saved under ``tokenizer/`` when given.
        """
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} is a file; save_pretrained needs a directory")
        out.mkdir(parents=True, exist_ok=True)
        peft = _is_peft(self.base_model)
        if peft:
            if save_base:
                raise ValueError(
                    "a PEFT-wrapped base is saved as its adapter; merge it first to save full weights"
                )
            if not self.config.base_model:
                raise ValueError(
                    "a PEFT adapter needs a reloadable base: set model.config.base_model to the base "
                    "model's name or path before saving"
                )
            self.base_model.save_pretrained(out / ADAPTER_DIR)
            base_weights = "reference"
        else:
            full = True if save_base is None else save_base
            if not full and not self.config.base_model:
                raise ValueError("save_base=False needs config.base_model to reload the base from")
            if full:
                self.base_model.save_pretrained(out / BASE_DIR)
            base_weights = "full" if full else "reference"
        save_file(
            {"weight": self.stream_embedding.weight.detach().contiguous().cpu()},
            str(out / STREAM_EMBEDDING_NAME),
            metadata={"format": "pt"},
        )
        if tokenizer is not None:
            tokenizer.save_pretrained(out / TOKENIZER_DIR)
        if self.decoding_presets is not None:
            self.decoding_presets.save(out)
        record = {**self.config.to_dict(), "base_weights": base_weights, "adapter": peft}
        # The config goes last and atomically: a directory with a config is a complete save.
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{CONFIG_NAME}.")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(tmp, out / CONFIG_NAME)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        dtype: torch.dtype = torch.float32,
        is_trainable: bool = False,
    ) -> MultiStreamLM:
        """Load what :meth:`save_pretrained` wrote (base weights or reference, adapter, stream
        embedding). ``is_trainable`` keeps a PEFT adapter trainable."""
        from transformers import AutoModelForCausalLM

        root = Path(directory)
        config_path = root / CONFIG_NAME
        if not config_path.is_file():
            from .authors.format import is_authors_dir

            if is_authors_dir(root):
                raise FileNotFoundError(
                    f"{root} is a model in the paper authors' format, not a multistream save: load it with "
                    f"multistream.authors.load_authors({str(root)!r}) or convert it once with "
                    f"`multistream import {root} OUT`"
                )
            raise FileNotFoundError(
                f"{config_path} not found: {root} is not a saved multi-stream model "
                "(MultiStreamLM.save_pretrained writes it)"
            )
        record = json.loads(config_path.read_text())
        config = MultiStreamConfig.from_dict(record, where=str(config_path))
        if record.get("base_weights") == "full":
            base, info = AutoModelForCausalLM.from_pretrained(
                root / BASE_DIR, dtype=dtype, attn_implementation="sdpa", output_loading_info=True
            )
            # A base/ with extra or missing tensors (e.g. a multi-stream weight saved into it) would
            # otherwise load with those weights dropped or left at their init: refuse instead.
            problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
            if problems:
                raise ValueError(
                    f"{root / BASE_DIR}: the base weights do not match its config.json: {problems}; "
                    "re-save the model with MultiStreamLM.save_pretrained"
                )
        else:
            from .base_models import load_base

            base, _ = load_base(config.base_model, dtype=dtype)
        if record.get("adapter"):
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, root / ADAPTER_DIR, is_trainable=is_trainable)
        model = cls(base, config)
        if not (root / STREAM_EMBEDDING_NAME).is_file():
            # Never fall back to the zero initialisation: the model would look fine and be wrong.
            raise FileNotFoundError(
                f"{root / STREAM_EMBEDDING_NAME} is missing, so the trained stream embedding is lost; the "
                "save is incomplete: copy the file from the original or save the model again"
            )
        state = load_file(str(root / STREAM_EMBEDDING_NAME))
        model.stream_embedding.load_state_dict(state, strict=True)
        from .presets import DecodingPresets

        model.decoding_presets = DecodingPresets.load(root)
        model.eval()
        return model

    @staticmethod
    def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
        """The tokenizer saved with a model, else that of its base model."""
        from transformers import AutoTokenizer

        root = Path(directory)
        if (root / TOKENIZER_DIR).is_dir():
            return AutoTokenizer.from_pretrained(root / TOKENIZER_DIR)
        record = json.loads((root / CONFIG_NAME).read_text())
        if record.get("base_weights") == "full" and (root / BASE_DIR / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(root / BASE_DIR)
        from .base_models import load_tokenizer

        if not record.get("base_model"):
            raise FileNotFoundError(f"{root} has no tokenizer/ and no base model reference to take one from")
        return load_tokenizer(record["base_model"])
