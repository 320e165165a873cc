"""Quality filters for rewritten (LLM-made) streaming answers, each returning a drop reason or None.

* ``role_consistency`` -- the answer talks like an assistant answer: no chat-role markers, no
  meta-commentary about streaming, bridging or tokens (rewrite rule "no meta-commentary").
* ``length_ratio`` -- the answer is neither much shorter nor much longer than the reference
  (rule "no omission"; the released processor also filters by length ratio, spec §4.1).
* ``fluency`` -- perplexity of the answer under the base model stays below a bound.
* ``causality_precheck`` -- the grid keeps its guarantee
  (:func:`~multistream.data.convert.check_grid`: numbers and rare words never precede the input
  row that introduces them, bridging only before the input ends).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FilterConfig", "Perplexity", "length_ratio_reason", "role_consistency_reason"]

_META_RE = re.compile(
    r"<\|im_(start|end)\|>|^\s*(user|assistant|system)\s*:|\bbridging\b|\bwait-?k\b|"
    r"\b(tokens?|words?) (seen|received|arrived)\b|\bas an ai\b|\bstreaming (process|mechanism)\b",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class FilterConfig:
    """Thresholds of the quality filters (``None`` disables a filter).

    Args:
        min_length_ratio: answer words / reference words must be at least this.
        max_length_ratio: ... and at most this.
        max_perplexity: perplexity of the answer under ``fluency_model`` must stay below this.
        fluency_model: base model for perplexity (embedded name or local directory).
        role_consistency: drop answers with role markers or streaming meta-commentary.
    """

    min_length_ratio: float | None = 0.3
    max_length_ratio: float | None = 3.0
    max_perplexity: float | None = 200.0
    fluency_model: str | None = "smollm2-135m"
    role_consistency: bool = True


def role_consistency_reason(answer: str) -> str | None:
    """``"role_consistency"`` if the answer has role markers or streaming meta-commentary."""
    return "role_consistency" if _META_RE.search(answer) else None


def length_ratio_reason(answer: str, reference: str, config: FilterConfig) -> str | None:
    """``"length_ratio"`` if answer/reference word counts fall outside the configured bounds."""
    ref = max(1, len(reference.split()))
    ratio = len(answer.split()) / ref
    if config.min_length_ratio is not None and ratio < config.min_length_ratio:
        return "length_ratio"
    if config.max_length_ratio is not None and ratio > config.max_length_ratio:
        return "length_ratio"
    return None


class Perplexity:
    """Perplexity of texts under a causal LM (the fluency filter).

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        max_tokens: texts are truncated to this many tokens.
    """

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 1024) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def load(cls, name: str) -> Perplexity:
        from ..base_models import load_base

        model, tokenizer = load_base(name)
        return cls(model, tokenizer)

    def __call__(self, text: str) -> float:
        """``exp(mean NLL)`` of the text's tokens after the first; ``inf`` for texts under 2 tokens."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)[: self.max_tokens]
        if len(ids) < 2:
            return math.inf
        device = next(self.model.parameters()).device
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            logits = self.model(input_ids=x).logits[0, :-1].float()  # [T-1, V]
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:])
        return float(torch.exp(nll))
