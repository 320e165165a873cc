"""The training recipe: :class:`TrainConfig` (``TrainingArguments`` plus the multi-stream fields),
loaded strictly from YAML, with typed coercion of YAML scalars and ``--set key=value`` parsing."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

__all__ = ["FORMS", "LAYOUTS", "LAYOUT_NAMES", "TrainConfig", "TrainConfigError", "parse_overrides"]

# What is trained: the multi-stream grids, or the one-stream chat baseline built from them.
FORMS = ("multistream", "sequential")
# Kept for callers of the first release, where the switch above was called "layout".
LAYOUTS = FORMS
# How streams become one token sequence (multistream.layout's registry): "grid" is Layout A
# (row-major grid, spec §2.3), "blocks" is Layout B (spec §2.5).
LAYOUT_NAMES = ("grid", "blocks")


# Accepted for boolean fields as text (``--set lora=yes`` keeps yes/no as text, see parse_overrides).
_TRUE_WORDS = ("true", "yes", "on")
_FALSE_WORDS = ("false", "no", "off")


class TrainConfigError(ValueError):
    """A training config is invalid; the message names the field and the fix."""


@dataclass
class TrainConfig(TrainingArguments):
    """``transformers.TrainingArguments`` plus what multi-stream training needs.

    Every ``TrainingArguments`` field works as usual (``learning_rate``, ``max_steps``,
    ``gradient_accumulation_steps``, ``save_steps``, ``eval_steps``, ``lr_scheduler_type``,
    ``deepspeed``, ``fsdp``, ...). Changed defaults: ``remove_unused_columns=False`` (batches
    are grids, not columns), ``prediction_loss_only=True`` (eval logits ``[B, R, C, V]`` are
    large and unused), ``report_to="none"`` (the JSONL metrics log is always written),
    ``save_safetensors`` is irrelevant (checkpoints are ``MultiStreamLM.save_pretrained``
    directories).
    """

    # -- model --
    model: str = field(
        default="smollm2-135m",
        metadata={"help": "base causal LM: an embedded name (smollm2-135m) or a local HF model directory"},
    )
    form: str = field(
        default="multistream",
        metadata={"help": "multistream: train on the grids; sequential: the one-stream chat baseline"},
    )
    layout: str = field(
        default="grid",
        metadata={
            "help": "how streams become one token sequence: grid (Layout A, spec §2.3) or blocks "
            "(Layout B, spec §2.5). The old values multistream/sequential set `form` (deprecated)"
        },
    )
    layout_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "options of the layout (multistream.layout.get_layout)"}
    )
    mask: str = field(
        default="block_causal", metadata={"help": "attention mask kind: block_causal (paper) or an ablation"}
    )
    role_loss_weights: dict[str, float] = field(
        default_factory=lambda: {"output": 1.0, "think": 1.0},
        metadata={"help": "loss weight per generated role; input streams never get loss"},
    )
    silence_loss_weight: float = field(
        default=1.0, metadata={"help": "multiplier on silence targets (1 = paper: silence is a target)"}
    )
    # -- data --
    train_file: str = field(default="", metadata={"help": "grid JSONL file (multistream convert writes one)"})
    eval_file: str | None = field(default=None, metadata={"help": "grid JSONL for eval loss; optional"})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "hold out this fraction of train_file for eval when eval_file is unset"},
    )
    max_rows: int | None = field(
        default=None,
        metadata={"help": "drop grids longer than this many rows (memory bound); None keeps all"},
    )
    max_examples: int | None = field(
        default=None, metadata={"help": "use at most this many training grids (after filtering)"}
    )
    trailing_silence_rows: int = field(
        default=0,
        metadata={
            "help": "append this many all-silent rows to every grid, so the model learns to stay silent "
            "after its end token (a live session then stops on silence)"
        },
    )
    input_end_dropout: float = field(
        default=0.0,
        metadata={
            "help": "fraction of training grids whose input-stream end token (EOS) becomes silence, so "
            "the model also answers when a live input stops without an end token"
        },
    )
    packing: bool = field(
        default=False,
        metadata={"help": "pack each batch into one row sequence (no padding; examples stay isolated)"},
    )
    longce: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Layout B only: LongCE loss weighting (multistream.layout.LongCEConfig: gamma, "
            "positive_only, balance head|token, probability, start_step, ramp_steps); empty = off"
        },
    )
    sparse_logits: bool = field(
        default=False,
        metadata={
            "help": "compute LM-head logits only where a target exists (MultiStreamLM.forward "
            "logits_where=True): the same loss, without the head on input and prompt tokens"
        },
    )
    # -- LoRA --
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (PEFT) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "PEFT target_modules: 'all-linear' or a list of module names"}
    )
    # -- optimizer (spec §2.7) --
    lr_stream_embedding: float | None = field(
        default=None, metadata={"help": "learning rate of the stream embedding; None = learning_rate"}
    )
    lr_head: float | None = field(
        default=None,
        metadata={"help": "learning rate of the LM head when trained (full tuning); None = learning_rate"},
    )
    cooldown_ratio: float = field(
        default=0.0,
        metadata={"help": "warmup_stable_decay only: fraction of steps in the final decay"},
    )
    # -- outputs --
    save_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the final saved adapter/stream embedding: float32 or float16"},
    )
    # -- changed TrainingArguments defaults --
    remove_unused_columns: bool = False
    prediction_loss_only: bool = True
    report_to: str | list[str] | None = "none"
    logging_steps: float = 10
    save_strategy: str = "steps"

    def __post_init__(self) -> None:
        self._migrate_layout()
        if self.form not in FORMS:
            raise TrainConfigError(f"form {self.form!r} is unknown; choose one of {', '.join(FORMS)}")
        if self.layout not in LAYOUT_NAMES:
            raise TrainConfigError(
                f"layout {self.layout!r} is unknown; choose one of {', '.join(LAYOUT_NAMES)}"
            )
        if not isinstance(self.layout_options, dict):
            raise TrainConfigError(
                f"layout_options must be a mapping of option names to values, got {self.layout_options!r}"
            )
        self._check_layout_options()
        if not self.train_file:
            raise TrainConfigError("train_file is empty: set it to a grid JSONL file (multistream convert)")
        self._check_ranges()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise TrainConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.save_dtype not in ("float32", "float16"):
            raise TrainConfigError(f"save_dtype must be float32 or float16, got {self.save_dtype!r}")
        if self.trailing_silence_rows < 0:
            raise TrainConfigError(f"trailing_silence_rows must be >= 0, got {self.trailing_silence_rows}")
        if not 0.0 <= self.input_end_dropout <= 1.0:
            raise TrainConfigError(f"input_end_dropout must be in [0, 1], got {self.input_end_dropout}")
        if not 0.0 <= self.cooldown_ratio <= 1.0:
            raise TrainConfigError(f"cooldown_ratio must be in [0, 1], got {self.cooldown_ratio}")
        if self.fsdp:
            raise TrainConfigError(
                f"fsdp={self.fsdp!r}: FSDP checkpoints are not supported yet (MultiStreamLM.save_pretrained "
                "needs whole parameters, FSDP holds shards); use DDP or DeepSpeed ZeRO-1/2"
            )
        if self.load_best_model_at_end:
            raise TrainConfigError(
                "load_best_model_at_end is not supported for multi-stream checkpoints; set it to false"
            )
        super().__post_init__()

    def _check_layout_options(self) -> None:
        # Layout options and LongCE are checked here, so a typo fails before any data is read.
        from ..layout import LayoutError, LongCEConfig, get_layout

        try:
            get_layout(self.layout, **self.layout_options)
        except LayoutError as err:
            raise TrainConfigError(f"layout_options: {err}") from None
        try:
            longce = LongCEConfig.from_value(self.longce)
        except (TypeError, ValueError) as err:
            raise TrainConfigError(str(err)) from None
        if longce.enabled and self.layout != "blocks":
            raise TrainConfigError("longce needs layout: blocks (it weights Layout B heads); remove longce")

    def longce_config(self) -> Any:
        """The :class:`multistream.layout.LongCEConfig` of ``longce`` (off when empty)."""
        from ..layout import LongCEConfig

        return LongCEConfig.from_value(self.longce)

    def _check_ranges(self) -> None:
        # TrainingArguments accepts these silently and then does something else (max_steps: -3
        # trains by epochs); a recipe value out of range is a typo, so name it.
        if self.max_steps == 0 or self.max_steps < -1:
            raise TrainConfigError(
                f"max_steps must be a positive number of optimizer steps, or -1 to train for "
                f"num_train_epochs; got {self.max_steps}"
            )
        positive = {
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "max_rows": self.max_rows,
            "max_examples": self.max_examples,
            "lr_stream_embedding": self.lr_stream_embedding,
            "lr_head": self.lr_head,
        }
        for key, value in positive.items():
            if value is not None and not value > 0:
                raise TrainConfigError(f"{key} must be > 0, got {value}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TrainConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.silence_loss_weight < 0:
            raise TrainConfigError(f"silence_loss_weight must be >= 0, got {self.silence_loss_weight}")
        bad = {
            k: v for k, v in dict(self.role_loss_weights).items() if not isinstance(v, (int, float)) or v < 0
        }
        if bad:
            raise TrainConfigError(f"role_loss_weights must map roles to numbers >= 0, got {bad}")

    def _migrate_layout(self) -> None:
        # The first release called the multistream/sequential switch "layout"; "layout" now names
        # the token layout, so an old value is moved to `form`.
        if self.layout not in FORMS:
            return
        if self.form != "multistream" and self.form != self.layout:
            raise TrainConfigError(
                f"layout {self.layout!r} (the old name of `form`) contradicts form {self.form!r}; "
                "drop the layout key"
            )
        warnings.warn(
            f"layout: {self.layout} is deprecated: write form: {self.layout} (layout now selects the "
            "token layout, grid or blocks)",
            FutureWarning,
            stacklevel=4,
        )
        self.form, self.layout = self.layout, "grid"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Load a YAML recipe strictly: unknown keys fail, naming the key and the closest field.

        Args:
            path: YAML file with one mapping of field names to values.
            overrides: values that replace the file's (e.g. from ``--set key=value`` flags).

        Returns:
            The config. Relative ``train_file`` / ``eval_file`` / ``output_dir`` paths are
            taken relative to the current directory, as on the command line.
        """
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise TrainConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        data.update(overrides or {})
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a plain mapping with the same strictness as :meth:`from_yaml`."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TrainConfigError(
                f"{where}: unknown config key(s) {', '.join(hints)}; valid keys are TrainConfig and "
                "transformers.TrainingArguments fields"
            )
        try:
            return cls(**{k: _coerce(cls, k, v, where) for k, v in data.items()})
        except TrainConfigError as e:
            if str(e).startswith(f"{where}:"):
                raise
            raise TrainConfigError(f"{where}: {e}") from None


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """Convert YAML scalars to a field's declared number type.

    PyYAML reads ``1e-4`` (no dot) as a string, which would only fail deep inside the optimizer;
    convert it here and fail with the field named if it is not a number.
    """
    hints = typing.get_type_hints(cls)
    hint = hints.get(key)
    args = (
        set(typing.get_args(hint)) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else set()
    )
    if (hint is bool or bool in args) and not isinstance(value, bool) and value is not None:
        # A string is truthy: without this, `lora: flase` would train a LoRA adapter.
        word = str(value).strip().lower() if isinstance(value, str) else None
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise TrainConfigError(f"{where}: {key} must be true or false, got {value!r}")
    for number in (float, int):
        if (hint is number or number in args) and isinstance(value, str):
            try:
                return number(value)
            except ValueError:
                raise TrainConfigError(f"{where}: {key} must be a {number.__name__}, got {value!r}") from None
    if isinstance(value, bool) and hint is not bool and bool not in args and hint is not None:
        raise TrainConfigError(
            f"{where}: {key} got the boolean {value}; YAML reads unquoted no/yes/on/off as booleans, "
            f'so quote the text: {key}: "no"'
        )
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, each value parsed as YAML (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"override {pair!r} must look like key=value")
        # Flags are typed by hand: keep yes/no/on/off as text (YAML 1.1 would make them booleans,
        # and "eval_strategy=no" means the string); true/false stay booleans.
        if value.strip().lower() in ("yes", "no", "on", "off"):
            out[key.strip()] = value.strip()
        else:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out
