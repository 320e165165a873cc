"""Fine-tune any Hugging Face causal LM into a multi-stream LM with ``transformers.Trainer``.

Multi-stream training is instruction tuning on grids (spec §2.3, §2.7): next-row loss on the
generated streams only, silence cells trained as ordinary targets, the loss normalised by the
global number of supervised cells, and a separate learning rate for the stream embedding. Every
thing distributed (DDP, gradient accumulation, DeepSpeed, FSDP) is the Trainer's and accelerate's
own code: launch the same config with ``accelerate launch`` to scale out.

Modules, along TRL's lines:

- :mod:`.config`: :class:`TrainConfig` (``TrainingArguments`` plus the multi-stream fields,
  loaded strictly from YAML) and ``--set`` override parsing;
- :mod:`.data`: grid files -> examples, the sequential twin, the collator for the layout;
- :mod:`.modeling`: the base loaded for training, optional LoRA (PEFT), the wrapper;
- :mod:`.trainer`: :class:`MultiStreamTrainer` (a few hook overrides), optimizer groups,
  checkpoint weights, the JSONL metrics callback;
- :mod:`.checkpoints`: which checkpoint ``--resume`` continues from (the newest whole one);
- :mod:`.recipe`: :func:`train`, the whole recipe;
- :mod:`.export`: :func:`export_merged` (merge a LoRA adapter).

Example:
    >>> config = TrainConfig.from_yaml("recipes/alpaca-2stream-lora.yaml")  # doctest: +SKIP
    >>> final_dir = train(config)                                           # doctest: +SKIP
"""

from __future__ import annotations

from .checkpoints import CheckpointWarning, choose_resume_checkpoint
from .config import FORMS, LAYOUT_NAMES, LAYOUTS, TrainConfig, TrainConfigError, parse_overrides
from .data import SEQUENTIAL_STREAM, build_collator, build_examples, sequential_example, sequential_schema
from .export import export_merged
from .modeling import build_model, load_base_for_training
from .recipe import FINAL_DIR, METRICS_FILE, train
from .trainer import JsonlMetricsCallback, MultiStreamTrainer, load_checkpoint_weights, optimizer_param_groups

__all__ = [
    "FINAL_DIR",
    "FORMS",
    "LAYOUTS",
    "LAYOUT_NAMES",
    "METRICS_FILE",
    "SEQUENTIAL_STREAM",
    "CheckpointWarning",
    "JsonlMetricsCallback",
    "MultiStreamTrainer",
    "TrainConfig",
    "TrainConfigError",
    "build_collator",
    "build_examples",
    "build_model",
    "choose_resume_checkpoint",
    "export_merged",
    "load_base_for_training",
    "load_checkpoint_weights",
    "optimizer_param_groups",
    "parse_overrides",
    "sequential_example",
    "sequential_schema",
    "train",
]
