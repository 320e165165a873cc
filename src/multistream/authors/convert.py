"""Load, import and export models in the paper authors' format (see :mod:`.format`).

* :func:`load_authors` loads an authors' directory (Stream-8B / Stream-27B or a fine-tune) as a
  :class:`~multistream.model.MultiStreamLM`: the stock model with ``attn_implementation="sdpa"``,
  the channel embedding copied into our stream embedding, the fixed 10-stream schema and the
  authors' decoding presets. Every tensor in the checkpoint is accounted for: known extras go
  through an explicit allow-list, anything else is an error.
* :func:`import_authors` converts such a directory to our saved format.
* :func:`export_authors` writes a model trained here back in their format (bf16, optionally
  sharded), loadable by their code and the hub's remote code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..model import MultiStreamConfig, MultiStreamLM
from .format import (
    ALLOWED_EXTRA_KEYS,
    AUTHORS_CONFIG_DEFAULTS,
    CHANNEL_EMBEDDING_KEY,
    STREAM_NAMES,
    AuthorsFormatError,
    authors_presets,
    authors_schema,
    gate_in_norm_key,
    read_authors_config,
    split_authors_config,
)

__all__ = ["export_authors", "import_authors", "load_authors"]

_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen3_5_text": "Qwen3_5ForCausalLM"}


def _weight_files(root: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    from safetensors import safe_open

    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {name: root / file for name, file in weight_map.items()}
    out: dict[str, Path] = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), file))
    if not out:
        raise AuthorsFormatError(f"{root}: no safetensors weights (model.safetensors or an index) found")
    return out


def _read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in keys})
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    old = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(old)


def load_authors(
    directory: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    start: str = "warm",
    tokenizer: Any | None = None,
) -> tuple[MultiStreamLM, Any]:
    """Load an authors' directory as a multi-stream model.

    Args:
        directory: a local copy of ``JonasGeiping/stream-qwen3-8b`` (or ``-qwen3.5-27b``, or a
            directory :func:`export_authors` wrote).
        dtype: compute dtype (their weights are bf16; fp32 on CPU, bf16 on a GPU).
        start: default start mode of the attached presets, ``warm`` (model card) or ``seed``.
        tokenizer: use this tokenizer instead of the directory's.

    Returns:
        ``(model, tokenizer)``, the model in eval mode with ``model.decoding_presets`` set.

    Raises:
        AuthorsFormatError: the directory is not in their format, a setting is unsupported, a
            tensor is unknown or missing, or the tokenizer's silence token is not ``" -"``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = Path(directory)
    record = read_authors_config(root)
    files = _weight_files(root) if (root / "config.json").is_file() else {}
    if record is None and CHANNEL_EMBEDDING_KEY not in files:
        raise AuthorsFormatError(
            f"{root} is not in the authors' format (its config.json has no num_channels / "
            f"channel_embedding_method and its weights no {CHANNEL_EMBEDDING_KEY})"
        )
    if record is None:
        record = json.loads((root / "config.json").read_text())
    stock, _ = split_authors_config(record, where=str(root / "config.json"))
    if CHANNEL_EMBEDDING_KEY not in files:
        raise AuthorsFormatError(
            f"{root}: config.json has the multi-stream fields but the weights lack {CHANNEL_EMBEDDING_KEY}; "
            "the download is incomplete or this is a base model (wrap a base with --schema instead)"
        )
    if tokenizer is None:
        if not any((root / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise AuthorsFormatError(
                f"{root} has no tokenizer files; copy tokenizer.json and tokenizer_config.json of the "
                "base model (Qwen3 / Qwen3.5) into it"
            )
        tokenizer = AutoTokenizer.from_pretrained(root)
    schema = authors_schema().with_tokenizer(tokenizer)

    model_type = stock.pop("model_type")
    config = AutoConfig.for_model(model_type, **stock)
    with _quiet_transformers():
        # Its load report would list the extras as "UNEXPECTED"; they are checked one by one below.
        base, info = AutoModelForCausalLM.from_pretrained(
            root, config=config, dtype=dtype, attn_implementation="sdpa", output_loading_info=True
        )
    unexpected = set(info.get("unexpected_keys", ())) - {CHANNEL_EMBEDDING_KEY}
    unknown = sorted(k for k in unexpected if not any(p.match(k) for p in ALLOWED_EXTRA_KEYS))
    if unknown:
        raise AuthorsFormatError(
            f"{root}: {len(unknown)} weights are neither stock {model_type} weights nor known extras of "
            f"the authors' format, e.g. {unknown[:3]}; refusing to drop them silently (was the model "
            "trained with role gating or Medusa heads?)"
        )
    problems = {k: sorted(info.get(k, ())) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
    if problems:
        raise AuthorsFormatError(f"{root}: the weights do not match the {model_type} config: {problems}")
    gates = sorted(k for k in unexpected if k in files)
    extras = _read_tensors(files, [CHANNEL_EMBEDDING_KEY, *gates])
    for key in gates:
        if not torch.all(extras[key] == 1):
            raise AuthorsFormatError(
                f"{root}: {key} is not all ones, so role gating was trained; multistream does not "
                "implement role gating and would compute something else"
            )
    embedding = extras[CHANNEL_EMBEDDING_KEY]
    hidden = base.get_input_embeddings().weight.shape[1]
    if tuple(embedding.shape) != (len(STREAM_NAMES), hidden):
        raise AuthorsFormatError(
            f"{root}: {CHANNEL_EMBEDDING_KEY} has shape {tuple(embedding.shape)}, expected "
            f"({len(STREAM_NAMES)}, {hidden})"
        )
    base.eval()
    model = MultiStreamLM(base, MultiStreamConfig(schema=schema, base_model=None, mask="block_causal"))
    with torch.no_grad():
        model.stream_embedding.weight.copy_(embedding.to(model.stream_embedding.weight.dtype))
    model.decoding_presets = authors_presets(start)
    return model.eval(), tokenizer


def import_authors(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    start: str = "warm",
) -> Path:
    """Convert an authors' directory to our saved format (full base weights in their bf16,
    stream embedding, schema, decoding presets, tokenizer). Returns ``destination``."""
    out = Path(destination)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    model, tokenizer = load_authors(source, dtype=torch.bfloat16, start=start)
    model.save_pretrained(out, tokenizer=tokenizer, save_base=True)
    return out


def _check_exportable(model: MultiStreamLM) -> None:
    schema = model.schema
    expected = authors_schema()
    if schema.names != expected.names or [s.role for s in schema.streams] != [
        s.role for s in expected.streams
    ]:
        raise AuthorsFormatError(
            "the authors' format has a fixed schema "
            f"{[f'{s.name}:{s.role.value}' for s in expected.streams]}; this model has "
            f"{[f'{s.name}:{s.role.value}' for s in schema.streams]}"
        )
    if model.config.mask != "block_causal" or getattr(model.config, "layout", "grid") != "grid":
        raise AuthorsFormatError(
            "the authors' models are Layout A with the block_causal mask; this model uses "
            f"layout={getattr(model.config, 'layout', 'grid')!r}, mask={model.config.mask!r}"
        )
    model_type = model.get_base_model().config.model_type
    if model_type not in _ARCHITECTURES:
        raise AuthorsFormatError(
            f"the authors' format covers {', '.join(_ARCHITECTURES)} bases; this model's base is {model_type!r}"
        )


def export_authors(
    model: MultiStreamLM,
    tokenizer: Any,
    destination: str | os.PathLike[str],
    max_shard_size: int | str | None = None,
    auto_map: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` in the authors' format: stock config + their fields, stock weights +
    ``model.channel_embedding.weight`` + all-ones ``gate_in_norm`` per attention layer, bf16.

    Args:
        model: a 10-stream Layout A model with the authors' schema (e.g. one fine-tuned from an
            imported Stream-8B); a PEFT adapter must be merged first.
        tokenizer: saved alongside.
        destination: a new or empty directory; written atomically.
        max_shard_size: shard the weights (``"5GB"`` or bytes) with ``model.safetensors.index.json``;
            None = one file.
        auto_map: an ``auto_map`` for ``config.json`` when you also copy their remote-code files
            into the directory; None leaves it out (the stock class then loads the weights).
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from ..model import _is_peft

    if _is_peft(model.base_model):
        raise AuthorsFormatError(
            "the model carries a PEFT adapter; merge it first (model.base_model = "
            "model.base_model.merge_and_unload()) and export the merged model"
        )
    _check_exportable(model)
    out = Path(destination)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    base = model.get_base_model()
    config = base.config
    state: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # tied to the input embedding; a stock save leaves it out too
        state[name] = tensor.detach().to(torch.bfloat16).contiguous().cpu()
    hidden = model.stream_embedding.weight.shape[1]
    state[CHANNEL_EMBEDDING_KEY] = (
        model.stream_embedding.weight.detach().to(torch.bfloat16).contiguous().cpu()
    )
    for i, layer_type in enumerate(_layer_types(config)):
        if layer_type == "full_attention":
            state[gate_in_norm_key(i)] = torch.ones(hidden, dtype=torch.bfloat16)

    record = config.to_dict()
    for key in ("_name_or_path", "multistream_base_reference", "transformers_version", "torch_dtype"):
        record.pop(key, None)
    record.update(AUTHORS_CONFIG_DEFAULTS)
    record["dtype"] = "bfloat16"
    record["architectures"] = [_ARCHITECTURES[config.model_type]]
    if auto_map:
        record["auto_map"] = dict(auto_map)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if max_shard_size is None:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
            for file, names in split.filename_to_tensors.items():
                save_file({n: state[n] for n in names}, str(tmp / file), metadata={"format": "pt"})
            if split.is_sharded:
                index = {
                    "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                    "weight_map": split.tensor_to_filename,
                }
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        (tmp / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _layer_types(config: Any) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        # Qwen3 lists sliding/full attention per layer; both are softmax attention with a self_attn.
        return ["linear_attention" if t == "linear_attention" else "full_attention" for t in types]
    return ["full_attention"] * config.num_hidden_layers
