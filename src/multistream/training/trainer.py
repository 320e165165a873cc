"""``MultiStreamTrainer``: ``transformers.Trainer`` with the few hooks multi-stream training
changes (loss normaliser, optimizer groups of spec §2.7, WSD cooldown, checkpoints as
``MultiStreamLM`` directories, a throughput log field), plus the JSONL metrics callback."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..masks import IGNORE_INDEX, next_row_targets
from ..model import ADAPTER_DIR, BASE_DIR, STREAM_EMBEDDING_NAME, MultiStreamLM
from .config import TrainConfig

__all__ = [
    "JsonlMetricsCallback",
    "MultiStreamTrainer",
    "load_checkpoint_weights",
    "optimizer_param_groups",
]


def optimizer_param_groups(model: MultiStreamLM, args: TrainConfig) -> list[dict[str, Any]]:
    """Parameter groups of spec §2.7, trainable parameters only.

    Groups (named by ``"name"``): ``backbone`` (2-D weights, weight decay), ``backbone_no_decay``
    (norms, biases), ``embeddings`` (input token embedding: no decay), ``head`` (the LM head when
    it is trained and not tied to the input embedding; ``lr_head``), ``stream_embedding``
    (``lr_stream_embedding``, no decay). Empty groups are left out; ``backbone`` comes first so
    the Trainer's logged learning rate is the backbone's.
    """
    base = model.get_base_model()
    input_embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    head_weight = None if head is None else head.weight
    stream = model.stream_embedding.weight
    groups: dict[str, dict[str, Any]] = {
        "backbone": {"params": [], "weight_decay": args.weight_decay},
        "backbone_no_decay": {"params": [], "weight_decay": 0.0},
        "embeddings": {"params": [], "weight_decay": 0.0},
        "head": {"params": [], "weight_decay": 0.0, "lr": args.lr_head or args.learning_rate},
        "stream_embedding": {
            "params": [],
            "weight_decay": 0.0,
            "lr": args.lr_stream_embedding or args.learning_rate,
        },
    }
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad:
            continue
        if p is stream:
            key = "stream_embedding"
        elif p is input_embedding:
            key = "embeddings"  # also the LM head when tied: an embedding, so no decay
        elif p is head_weight:
            key = "head"
        elif p.dim() < 2 or "norm" in name.lower() or name.endswith(".bias"):
            key = "backbone_no_decay"
        else:
            key = "backbone"
        groups[key]["params"].append(p)
    return [{"name": k, **g} for k, g in groups.items() if g["params"]]


class MultiStreamTrainer(Trainer):
    """``transformers.Trainer`` with the few changes multi-stream training needs.

    Overrides: the loss normaliser (supervised cells of next-row targets, summed over the
    accumulated micro-batches and all processes), the optimizer groups, the WSD cooldown
    length, checkpoint save/load as ``MultiStreamLM`` directories, and a throughput field in
    the logs. The training loop, distribution, accumulation and scheduling are the Trainer's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cells_since_log = 0
        self._log_clock = time.perf_counter()

    # Called by the Trainer for every optimizer step (all accumulated micro-batches) and for each
    # eval batch. HF's own count is labels != -100, which counts input-stream and first-row cells
    # that are never targets; the loss must divide by the cells it actually scores.
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        model = self.accelerator.unwrap_model(self.model)
        generated = model.generated_streams.cpu()
        count = torch.zeros((), dtype=torch.long)
        for batch in batch_samples:
            if "stream_ids" in batch:  # flat cells (a layout's collate): labels are the targets
                real = batch["attention_mask"].bool() & generated[batch["stream_ids"]]
                count += ((batch["labels"] != IGNORE_INDEX) & real).sum()
                continue
            targets = next_row_targets(
                batch["labels"], generated, batch.get("attention_mask"), batch.get("segment_ids")
            )
            count += (targets != IGNORE_INDEX).sum()
        count = count.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count[None]).sum()
        return count

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> Any:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batch_samples:  # real (unpadded) cells, for the cells_per_s log field
            per_mask = 1 if "stream_ids" in batch else batch["input_ids"].shape[-1]
            self._cells_since_log += int(batch["attention_mask"].sum()) * per_mask
        return batch_samples, num_items

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # LongCE (Layout B) on the training steps its schedule draws; the draw depends only on
        # (seed, step), so a resumed run weights the same steps.
        longce = getattr(self.args, "longce_config", lambda: None)()
        if (
            longce is not None
            and longce.enabled
            and model.training
            and longce.active(self.state.global_step, self.args.seed)
        ):
            inputs = {**inputs, "longce": longce}
        if getattr(self.args, "sparse_logits", False):
            inputs = {**inputs, "logits_where": True}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = self.accelerator.unwrap_model(model or self.model)
            groups = optimizer_param_groups(target, self.args)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, target)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            if self.args.should_log:
                summary = ", ".join(
                    f"{g['name']}: {sum(p.numel() for p in g['params']):,} params "
                    f"lr={g.get('lr', self.args.learning_rate):g} wd={g['weight_decay']:g}"
                    for g in groups
                )
                print(f"[multistream] optimizer groups: {summary}", file=sys.stderr)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        kwargs = self.args.lr_scheduler_kwargs or {}
        if (
            self.lr_scheduler is None
            and getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
            == "warmup_stable_decay"
            and isinstance(kwargs, dict)
            and "num_decay_steps" not in kwargs
        ):
            # WSD needs an absolute decay length; derive it from cooldown_ratio and the step count.
            self.args.lr_scheduler_kwargs = {
                **kwargs,
                "num_decay_steps": math.ceil(self.args.cooldown_ratio * num_training_steps),
            }
        return super().create_scheduler(num_training_steps, optimizer)

    # Checkpoints are MultiStreamLM directories (config + stream embedding + adapter or base),
    # so any checkpoint loads with MultiStreamLM.from_pretrained and holds no frozen base copy.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the throughput since the previous one
            now = time.perf_counter()
            cells = self._cells_since_log * self.args.world_size
            logs["cells_per_s"] = round(cells / max(now - self._log_clock, 1e-9), 2)
            self._cells_since_log, self._log_clock = 0, now
        super().log(logs, start_time)


def _tied_to_input(model: MultiStreamLM) -> set[int]:
    base = model.get_base_model()
    return {id(base.get_input_embeddings().weight)}


def load_checkpoint_weights(model: MultiStreamLM, directory: str | os.PathLike[str]) -> None:
    """Load the trained weights of a ``save_pretrained`` directory into an existing model
    (same base, same adapter layout): stream embedding, then adapter or full base weights."""
    from safetensors.torch import load_file

    root = Path(directory)
    model.stream_embedding.load_state_dict(load_file(str(root / STREAM_EMBEDDING_NAME)), strict=True)
    if (root / ADAPTER_DIR).is_dir():
        from peft import set_peft_model_state_dict

        state = load_file(str(root / ADAPTER_DIR / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model.base_model, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{root}: adapter weights do not fit this model: {result.unexpected_keys[:5]}")
        return
    files = sorted((root / BASE_DIR).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{root} holds neither {ADAPTER_DIR}/ nor {BASE_DIR}/*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    base = model.get_base_model()
    missing, unexpected = base.load_state_dict(state, strict=False)
    # save_pretrained drops tied copies (the LM head of tied-embedding models): those may be absent.
    tied = {n for n, p in base.named_parameters(remove_duplicate=False) if id(p) in _tied_to_input(model)}
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"{root}/{BASE_DIR} does not fit the base model: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


class JsonlMetricsCallback(TrainerCallback):
    """Append every log (train loss, eval loss, lr, throughput) to ``output_dir/metrics.jsonl``.

    A resumed run appends to the same file, so steps between the last checkpoint and a kill
    appear twice; readers keep the last record of each step.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None, **_: Any):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
