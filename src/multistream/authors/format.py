"""What the paper authors' released models look like on disk (Stream-8B, Stream-27B).

A directory holds a stock Hugging Face ``config.json`` (``model_type`` ``qwen3`` or
``qwen3_5_text``) with extra multi-stream fields, the stock weights plus
``model.channel_embedding.weight [10, hidden]`` and an unused all-ones
``model.layers.{i}.self_attn.gate_in_norm.weight`` per layer, in bf16, single-file or sharded
(``model.safetensors.index.json``). Their forward is the stock model plus the additive stream
embedding, positions = row index and the block-causal mask: our :class:`MultiStreamLM` with the
embedding copied in (spec §2.3, §6.2).

This module only describes the format (names, schema, decoding presets, detection); loading and
writing live in :mod:`multistream.authors.convert`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..presets import DecodingPresets
from ..schema import Role, Stream, StreamSchema

__all__ = [
    "ALLOWED_EXTRA_KEYS",
    "AUTHORS_CONFIG_DEFAULTS",
    "AUTHORS_SILENCE_ID",
    "CHANNEL_EMBEDDING_KEY",
    "SEED_ROW",
    "STREAM_NAMES",
    "WARM_START_HEADER",
    "AuthorsFormatError",
    "authors_presets",
    "authors_schema",
    "authors_weight_keys",
    "is_authors_dir",
    "read_authors_config",
    "split_authors_config",
]


class AuthorsFormatError(ValueError):
    """A directory claims (or seems) to be in the authors' format but is not loadable as one;
    the message says what is wrong and what to do."""


# The ten streams in column order and their roles (spec §3.1). Roles are fixed here: guessing
# from names would call the eight thinking streams outputs and put the Output silence penalty
# on them.
STREAM_NAMES: tuple[str, ...] = (
    "User", "Output", "Analytical", "Skeptical", "Intuitive",
    "Between", "Curious", "Void", "Instinct", "Synthesis",
)  # fmt: skip
_ROLES = (Role.INPUT, Role.OUTPUT) + (Role.THINK,) * 8

# " -" in the Qwen3 and Qwen3.5 tokenizers; checked against the tokenizer on load.
AUTHORS_SILENCE_ID = 481

CHANNEL_EMBEDDING_KEY = "model.channel_embedding.weight"
# Weights the authors' checkpoints carry that multistream does not use, by exact pattern. Any
# other key the base model does not know is an error, never silently dropped.
ALLOWED_EXTRA_KEYS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^model\.layers\.\d+\.self_attn\.gate_in_norm\.weight$"),  # role gating, off
)
_GATE_IN_NORM = "model.layers.{i}.self_attn.gate_in_norm.weight"

# config.json fields their code adds to the stock config, with the values of the released runs;
# export writes them, import checks the ones that change the numerics.
AUTHORS_CONFIG_DEFAULTS: dict[str, Any] = {
    "num_channels": 10,
    "channel_embedding_method": "additive",
    "role_gating_enabled": False,
    "role_gating_granularity": "layer",
    "role_gating_num_roles": 10,
    "role_gating_hidden_size": 64,
    "role_gating_temperature": 2.0,
    "role_gating_uniform_mix": 0.05,
    "role_gating_beta": 0.8,
    "role_gating_clip_min": -6.0,
    "role_gating_eps": 1e-4,
    "deltanet_block_causal": "column",
    "deltanet_conv": "column",
    "medusa_num_heads": 0,
    "medusa_num_layers": 0,
    "use_cache": False,
}
_EXTRA_FIELD = re.compile(r"^(num_channels|channel_embedding_method|role_gating_.*|deltanet_.*|medusa_.*)$")
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_5_text")

# Seed start (spec §3.1): User and Output silent, one word per thinking stream.
SEED_ROW: tuple[str | None, ...] = (
    None, None, " thinking", " checking", " feeling", " relating", " asking", " drifting", " watching",
    " integrating",
)  # fmt: skip

# Warm start (spec §3.1 table): 11 header rows; User silent throughout. Columns Output..Synthesis.
_WARM = """\
-|idle|quiet|resting|still|what|from|waiting|settling
-|ready|clear|calm|space|comes|the|alert|into
-|for|so|breath|open|next|form|steady|readiness
-|anything|far|easy|for|wonder|less*|patient|all
-|think|check|present|whoever|who|void|careful|voices
-|through|every|here|arrives|needs|gaping|grounded|finding
OK|each|angle|letting|welcome|something|m*|before|their
I|problem|first|it|them|fresh|aw*|acting|rhythm
'm*|carefully|honestly|happen|openly|perhaps|springs|measured|listening
ready|consider|then|now|ready|always|an|aware|together
-|now|always|open|-|always|entity|now|here"""


def _warm_cell(word: str) -> str | None:
    # "-" is silence; a trailing "*" marks the words written without a leading space.
    if word == "-":
        return None
    return word[:-1] if word.endswith("*") else " " + word


WARM_START_HEADER: tuple[tuple[str | None, ...], ...] = tuple(
    (None, *(_warm_cell(w) for w in line.split("|"))) for line in _WARM.splitlines()
)


def authors_schema(silence_id: int = AUTHORS_SILENCE_ID) -> StreamSchema:
    """The fixed 10-stream schema: User (input), Output (output), eight thinking streams."""
    return StreamSchema(
        tuple(Stream(n, r) for n, r in zip(STREAM_NAMES, _ROLES, strict=True)),
        silence_text=" -",
        silence_id=silence_id,
    )


def authors_presets(start: str = "warm") -> DecodingPresets:
    """Decoding defaults for the authors' models.

    The model card's recommendation (warm start, temperature 0.6, silence penalty 5,
    ``skip_silence``) with the authors' script for the rest (top-p 0.95, top-k 20, 5-row ramp,
    penalty on Output only, stop at the first all-silent row) and their evaluation's 512 rows.
    """
    return DecodingPresets(
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        silence_penalty=5.0,
        penalty_ramp_rows=5,
        stop_silent_rows=1,
        max_rows=512,
        start=start,  # type: ignore[arg-type]
        seed_rows=(SEED_ROW,),
        warm_start_rows=WARM_START_HEADER,
        skip_silence=True,
        penalty_streams=("Output",),
    )


# -- detection ---------------------------------------------------------------------------------


def read_authors_config(directory: str | Path) -> dict[str, Any] | None:
    """``config.json`` of an authors' directory, or None when ``directory`` is not one."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    return config if "num_channels" in config or "channel_embedding_method" in config else None


def authors_weight_keys(directory: str | Path) -> set[str]:
    """Names of all tensors in a directory's safetensors files (headers only, no data read)."""
    from safetensors import safe_open

    root = Path(directory)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    keys: set[str] = set()
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys.update(f.keys())
    return keys


def is_authors_dir(directory: str | Path) -> bool:
    """A Hugging Face model directory that carries the authors' multi-stream config fields or a
    ``channel_embedding`` weight (a directory whose config was stripped still counts)."""
    root = Path(directory)
    if not (root / "config.json").is_file() or (root / "multistream_config.json").is_file():
        return False
    if read_authors_config(root) is not None:
        return True
    try:
        return CHANNEL_EMBEDDING_KEY in authors_weight_keys(root)
    except Exception:  # unreadable weights are the loader's error to report, not detection's
        return False


def split_authors_config(config: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an authors' ``config.json`` into the stock config and the multi-stream fields,
    failing on settings whose numerics multistream does not reproduce."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise AuthorsFormatError(
            f"{where}: model_type {model_type!r} is not an authors' format multistream can load "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    extra = {k: v for k, v in config.items() if _EXTRA_FIELD.match(k)}
    stock = {k: v for k, v in config.items() if k not in extra and k != "auto_map"}
    # use_cache=false is a training setting of theirs; decoding here always uses the cache.
    stock.pop("use_cache", None)
    channels = extra.get("num_channels", len(STREAM_NAMES))
    if channels != len(STREAM_NAMES):
        raise AuthorsFormatError(
            f"{where}: num_channels is {channels}; the authors' released format has "
            f"{len(STREAM_NAMES)} streams ({', '.join(STREAM_NAMES)})"
        )
    method = extra.get("channel_embedding_method", "additive")
    if method != "additive":
        raise AuthorsFormatError(
            f"{where}: channel_embedding_method {method!r}; only 'additive' (the released models) is supported"
        )
    if extra.get("role_gating_enabled"):
        raise AuthorsFormatError(
            f"{where}: role_gating_enabled is true; multistream does not implement role gating "
            "(the released models have it off)"
        )
    if extra.get("medusa_num_heads"):
        raise AuthorsFormatError(f"{where}: medusa_num_heads > 0; Medusa heads are not supported")
    if model_type == "qwen3_5_text":
        for name in ("deltanet_block_causal", "deltanet_conv"):
            if extra.get(name, "column") != "column":
                raise AuthorsFormatError(
                    f"{where}: {name} is {extra[name]!r}; multistream runs linear-attention layers in "
                    "'column' mode only (the released Stream-27B)"
                )
    return stock, extra


def gate_in_norm_key(layer: int) -> str:
    return _GATE_IN_NORM.format(i=layer)
