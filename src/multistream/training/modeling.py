"""The trainable model: the base loaded for training, an optional fresh LoRA adapter (PEFT),
wrapped into a :class:`~multistream.model.MultiStreamLM`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import MultiStreamLM
from ..schema import StreamSchema
from .config import TrainConfig

__all__ = ["build_model", "load_base_for_training"]


def _base_reference(name: str) -> str:
    from ..loading import EMBEDDED_MODELS

    return name if name in EMBEDDED_MODELS else str(Path(name).expanduser().resolve())


def load_base_for_training(name: str) -> tuple[nn.Module, Any | None]:
    """The base model and its tokenizer (None when the directory ships no tokenizer, as tiny
    test models do; grid files carry token ids, so training needs none)."""
    from ..loading import EMBEDDED_MODELS, load_base, resolve_base

    path = resolve_base(name)
    if name in EMBEDDED_MODELS or any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return load_base(name)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.multistream_base_reference = _base_reference(name)
    return model, None


def _add_lora(base: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    target = config.lora_target_modules
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora_config)


def build_model(
    config: TrainConfig, schema: StreamSchema, base: nn.Module, tokenizer: Any = None
) -> MultiStreamLM:
    """Wrap the base (with a fresh LoRA adapter when ``config.lora``) into a trainable model.

    Trainable parameters: LoRA on -> the adapter and the stream embedding; LoRA off -> all.
    The sequential form freezes its (zero) stream embedding so the trained model is exactly
    the base LM plus the adapter, usable as an ordinary causal LM after merging.
    """
    if config.lora:
        base = _add_lora(base, config)
    model = MultiStreamLM.from_base(
        base,
        schema,
        tokenizer,
        base_model=_base_reference(config.model),
        mask=config.mask,
        role_loss_weights=dict(config.role_loss_weights),
        silence_loss_weight=config.silence_loss_weight,
        # The sequential twin is an ordinary one-stream causal LM whatever the layout.
        layout=config.layout if config.form == "multistream" else "grid",
        layout_options=dict(config.layout_options) if config.form == "multistream" else {},
    )
    # PEFT freezes the base; the stream embedding is the wrapper's own parameter and is always
    # trained (multi-stream form), whatever PEFT's modules_to_save would say.
    model.stream_embedding.weight.requires_grad_(config.form == "multistream")
    return model
