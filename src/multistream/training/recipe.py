"""The whole recipe: load the base, build the data and model, train with checkpoints, save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import ADAPTER_DIR, STREAM_EMBEDDING_NAME
from .checkpoints import choose_resume_checkpoint
from .config import TrainConfig, TrainConfigError
from .data import build_collator, build_examples
from .modeling import build_model, load_base_for_training
from .trainer import JsonlMetricsCallback, MultiStreamTrainer

__all__ = ["FINAL_DIR", "METRICS_FILE", "train"]

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"


def _cast_saved(directory: Path, dtype: torch.dtype) -> None:
    """Rewrite a saved model's trained tensors (adapter, stream embedding) in ``dtype`` to
    halve the files; loading copies them back into fp32 parameters."""
    from safetensors.torch import load_file, save_file

    for path in [directory / STREAM_EMBEDDING_NAME, *sorted((directory / ADAPTER_DIR).glob("*.safetensors"))]:
        state = {k: v.to(dtype) for k, v in load_file(str(path)).items()}
        save_file(state, str(path), metadata={"format": "pt"})


def _check_data_files(config: TrainConfig) -> None:
    for key in ("train_file", "eval_file"):
        value = getattr(config, key)
        if value and not Path(value).is_file():
            where = "" if Path(value).is_absolute() else f" (relative to the current directory {Path.cwd()})"
            raise TrainConfigError(
                f"{key}: {value} does not exist{where}; write it first with `multistream convert ... "
                f"--out {value}` (see the recipe's header), or fix the path"
            )


def train(
    config: TrainConfig,
    resume_from_checkpoint: str | bool | None = None,
    base: nn.Module | None = None,
    tokenizer: Any | None = None,
) -> Path:
    """Train, checkpoint and save a multi-stream (or sequential baseline) model.

    Args:
        config: the recipe.
        resume_from_checkpoint: a checkpoint directory, or True for the newest whole one in
            ``config.output_dir`` (a damaged newer one is skipped with a warning naming it, see
            :mod:`.checkpoints`); None starts fresh.
        base: an already loaded base model (tests); default: ``load_base(config.model)``.
        tokenizer: its tokenizer when ``base`` is given.

    Returns:
        The final model directory, ``output_dir/final``, loadable with
        :meth:`MultiStreamLM.from_pretrained`. Metrics are in ``output_dir/metrics.jsonl``.
    """
    from transformers import set_seed

    from ..base_models import BaseModelError

    _check_data_files(config)
    # Checked before the model loads: a damaged checkpoint is named at once, not after minutes.
    resume = choose_resume_checkpoint(config.output_dir, resume_from_checkpoint)
    set_seed(config.seed)
    pretrained = None
    if base is None:
        # A model that is already multi-stream (saved, imported, or in the authors' format) keeps
        # its trained stream embedding: fine-tune it instead of wrapping a base afresh.
        from ..authors.finetune import load_multistream_for_training, prepare_for_training

        pretrained = load_multistream_for_training(config.model) if config.form == "multistream" else None
        try:
            if pretrained is not None:
                _, tokenizer = pretrained
            else:
                base, tokenizer = load_base_for_training(config.model)
        except BaseModelError as e:
            raise TrainConfigError(f"model: {e}") from e
    train_examples, eval_examples, schema = build_examples(config, tokenizer)
    set_seed(config.seed)  # LoRA initialisation is random: seed it independently of data prep
    if pretrained is not None:
        try:
            model = prepare_for_training(pretrained[0], config.model, schema, config)
        except ValueError as e:
            raise TrainConfigError(f"model: {e}") from e
    else:
        model = build_model(config, schema, base, tokenizer)
    if config.eval_strategy != "no" and not eval_examples:
        raise TrainConfigError(
            f"eval_strategy={config.eval_strategy!r} but there is no eval data: set eval_file or eval_fraction"
        )
    trainer = MultiStreamTrainer(
        model=model,
        args=config,
        train_dataset=train_examples,
        eval_dataset=eval_examples or None,
        data_collator=build_collator(config, schema),
        callbacks=[JsonlMetricsCallback(Path(config.output_dir) / METRICS_FILE)],
    )
    trainer.train(resume_from_checkpoint=resume)
    step = trainer.state.global_step
    if eval_examples and not any(
        "eval_loss" in r and r.get("step") == step for r in trainer.state.log_history
    ):
        trainer.evaluate()  # the final eval loss, unless the schedule just computed it
    final = Path(config.output_dir) / FINAL_DIR
    if trainer.is_world_process_zero():
        # A fine-tuned multi-stream model may have no base reference to take a tokenizer from.
        model.save_pretrained(final, tokenizer=tokenizer if pretrained is not None else None)
        if config.save_dtype == "float16":
            _cast_saved(final, torch.float16)
    trainer.accelerator.wait_for_everyone()
    return final
