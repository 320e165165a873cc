"""Export: merge a LoRA-trained multi-stream model's adapter into its base."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..model import MultiStreamLM

__all__ = ["export_merged"]


def export_merged(
    source: str | os.PathLike[str], target: str | os.PathLike[str], tokenizer: Any = None
) -> Path:
    """Merge a LoRA-trained model's adapter into its base and save full weights.

    Args:
        source: a ``MultiStreamLM.save_pretrained`` directory with an adapter.
        target: new directory; it holds ``base/`` (merged weights), the stream embedding and
            config, and loads with :meth:`MultiStreamLM.from_pretrained` with no adapter.
        tokenizer: saved alongside when given (default: the source's tokenizer if it has one).

    Returns:
        ``target`` as a Path.

    Raises:
        BaseModelError: ``source`` is damaged (the file is named).
    """
    from ..loading import check_saved_model

    check_saved_model(source)
    model = MultiStreamLM.from_pretrained(source)
    if hasattr(model.base_model, "merge_and_unload"):
        merged = model.base_model.merge_and_unload()
        model = _rewrap(model, merged)
    if tokenizer is None and (Path(source) / "tokenizer").is_dir():
        tokenizer = MultiStreamLM.load_tokenizer(source)
    model.save_pretrained(target, tokenizer=tokenizer, save_base=True)
    return Path(target)


def _rewrap(model: MultiStreamLM, base: nn.Module) -> MultiStreamLM:
    out = MultiStreamLM(base, model.config)
    out.stream_embedding.load_state_dict(model.stream_embedding.state_dict())
    out.decoding_presets = model.decoding_presets  # the merged model decodes as the adapter did
    return out.eval()
