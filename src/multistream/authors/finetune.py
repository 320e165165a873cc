"""Continue training a model that is already multi-stream: a directory in the authors' format
(Stream-8B/27B) or one ``multistream import`` / ``save_pretrained`` wrote.

``multistream train`` normally wraps a *base* model with a fresh, zero stream embedding. When its
``model:`` is such a directory, the trained stream embedding must be kept instead (starting from
zero would throw it away), and the data's streams must be the model's. The training recipe asks
:func:`load_multistream_for_training` first and, when it returns a model, fine-tunes that with
:func:`prepare_for_training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..model import BASE_DIR, CONFIG_NAME, MultiStreamLM
from ..schema import StreamSchema
from .format import is_authors_dir

__all__ = ["load_multistream_for_training", "prepare_for_training"]


def load_multistream_for_training(name: str) -> tuple[MultiStreamLM, Any] | None:
    """``(model, tokenizer)`` in fp32 when ``name`` is a saved multi-stream or authors' directory;
    None for a base model (the recipe then wraps it as usual)."""
    path = Path(name).expanduser()
    if (path / CONFIG_NAME).is_file():
        return MultiStreamLM.from_pretrained(path, dtype=torch.float32), MultiStreamLM.load_tokenizer(path)
    if path.is_dir() and is_authors_dir(path):
        from .convert import load_authors

        return load_authors(path, dtype=torch.float32)
    return None


def prepare_for_training(
    model: MultiStreamLM, source: str, schema: StreamSchema, config: Any
) -> MultiStreamLM:
    """Make a loaded multi-stream model trainable under a ``TrainConfig``.

    The data's schema must be the model's (same names and roles, in order). With ``lora: true``
    a fresh adapter goes on the base; the adapter then needs a reloadable base, which a directory
    in our format has (its ``base/``): import an authors' directory first. The model's loss
    settings follow the config; its mask and layout stay the model's own.
    """
    ours = [(s.name, s.role) for s in model.schema.streams]
    data = [(s.name, s.role) for s in schema.streams]
    if ours != data:
        raise ValueError(
            f"the training data's streams {[f'{n}:{r.value}' for n, r in data]} differ from the model's "
            f"{[f'{n}:{r.value}' for n, r in ours]}; convert the data with this model's schema"
        )
    if config.lora:
        base_dir = Path(source).expanduser() / BASE_DIR
        if not (base_dir / "config.json").is_file():
            raise ValueError(
                f"lora: true needs a reloadable base model, and {source} has no {BASE_DIR}/ directory; "
                f"convert it first with `multistream import {source} OUT` and train from OUT"
            )
        from peft import LoraConfig, get_peft_model

        target = config.lora_target_modules
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target if isinstance(target, str) else list(target),
            task_type="CAUSAL_LM",
        )
        model.base_model = get_peft_model(model.base_model, lora)
        model.config.base_model = str(base_dir.resolve())
    model.config.role_loss_weights = dict(config.role_loss_weights)
    model.config.silence_loss_weight = config.silence_loss_weight
    model.stream_embedding.weight.requires_grad_(True)
    return model.train()
