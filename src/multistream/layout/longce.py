"""LongCE: importance-weighted cross-entropy for Layout B heads (spec §2.5), release variant.

A token's weight says how much better the full model predicts it than a "self-only" model that
sees only the system block and the head's own past (:meth:`BlocksLayout.self_only_allowed`):

    lsd = log p_full(token) - log p_self(token)        (positive_only: clamped at 0)
    w   = min(exp(lsd), gamma),  then divided by its mean over the head's tokens (mean 1)
    loss = sum(w * CE) / #tokens                         (balance="token", Sec 6)
         = mean over heads of (mean of w * CE per head)  (balance="head", Sec 5)

The weights are constants (computed without gradient); the cross-entropy keeps its gradient.
This is the differentiable release variant: the cleaned-up Sec 5 trainer built its head-balanced
loss from detached all-reduced tensors, so that loss had no gradient at all.

LongCE is applied on a step with probability ``probability * clip((step - start_step) /
ramp_steps, 0, 1)``; the draw depends only on (seed, step), so a resumed run draws the same.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LONGCE_BALANCES", "LongCEConfig", "longce_loss"]

LONGCE_BALANCES = ("head", "token")


@dataclass
class LongCEConfig:
    """LongCE options (``longce:`` in a training recipe).

    Args:
        enabled: use LongCE at all (default off: plain span cross-entropy).
        gamma: cap on a token's weight (Sec 5: 2, Sec 6: 3).
        positive_only: clamp ``log p_full - log p_self`` at 0 (Sec 5: yes, Sec 6: no).
        balance: ``head`` (mean over heads of per-head means, Sec 5) or ``token`` (Sec 6).
        probability: highest probability of applying LongCE on a step (Sec 5: 0.5, Sec 6: 1).
        start_step, ramp_steps: the probability ramps linearly from 0 at ``start_step`` to
            ``probability`` at ``start_step + ramp_steps`` (Sec 5: 100 and 2000; Sec 6: 0, 0).
    """

    enabled: bool = False
    gamma: float = 2.0
    positive_only: bool = True
    balance: str = "head"
    probability: float = 0.5
    start_step: int = 100
    ramp_steps: int = 2000

    def __post_init__(self) -> None:
        if self.balance not in LONGCE_BALANCES:
            raise ValueError(f"longce.balance {self.balance!r} is unknown; choose head or token")
        if self.gamma <= 0:
            raise ValueError(f"longce.gamma must be > 0, got {self.gamma}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"longce.probability must lie in [0, 1], got {self.probability}")
        if self.ramp_steps < 0 or self.start_step < 0:
            raise ValueError("longce.start_step and longce.ramp_steps must be >= 0")

    @classmethod
    def from_value(cls, value: Any) -> LongCEConfig:
        """From a recipe value: a mapping of the fields above, a bool, or None (off)."""
        if isinstance(value, LongCEConfig):
            return value
        if value is None or value is False or value == {}:
            return cls()
        if value is True:
            return cls(enabled=True)
        if not isinstance(value, dict):
            raise ValueError(f"longce: expected a mapping of options, got {value!r}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"longce: unknown options {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{"enabled": True, **value})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def probability_at(self, step: int) -> float:
        if not self.enabled:
            return 0.0
        if self.ramp_steps == 0:
            return self.probability if step >= self.start_step else 0.0
        return self.probability * min(max((step - self.start_step) / self.ramp_steps, 0.0), 1.0)

    def active(self, step: int, seed: int = 0) -> bool:
        """Whether LongCE applies on optimizer step ``step`` (deterministic in seed and step)."""
        p = self.probability_at(step)
        return p >= 1.0 or (p > 0.0 and random.Random(seed * 1_000_003 + step).random() < p)


def longce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    self_logprobs: torch.Tensor,
    groups: torch.Tensor,
    config: LongCEConfig,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """LongCE over supervised tokens.

    Args:
        logits: ``[N, V]`` full-model logits at the supervised positions (with gradient).
        targets: ``[N]`` target ids.
        self_logprobs: ``[N]`` log-probability of each target under the self-only view.
        groups: ``[N]`` id of each token's (example, head); weights are normalised per group
            and ``balance="head"`` averages per group.
        config: gamma, positive_only, balance.
        num_items: the loss normaliser of the whole batch (across accumulation steps and
            processes); ``balance="token"`` divides by it, ``balance="head"`` scales this
            micro-batch's head mean by its share ``N / num_items`` of the tokens.
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    n = ce.numel()
    if n == 0:
        return logits.sum() * 0.0
    with torch.no_grad():
        lsd = -ce.detach() - self_logprobs.float()
        if config.positive_only:
            lsd = lsd.clamp_min(0.0)
        w = lsd.exp().clamp_max(config.gamma)
        _, group = torch.unique(groups, return_inverse=True)
        G = int(group.max()) + 1
        count = torch.zeros(G, device=w.device).index_add_(0, group, torch.ones_like(w))
        mean = torch.zeros(G, device=w.device).index_add_(0, group, w) / count
        w = w / mean[group]
    weighted = w * ce
    total = num_items if num_items is not None else n
    if isinstance(total, torch.Tensor):
        total = total.to(ce.device).clamp_min(1)
    if config.balance == "token":
        return weighted.sum() / total
    per_group = torch.zeros(G, device=ce.device, dtype=ce.dtype).index_add(0, group, weighted) / count
    return per_group.mean() * (n / total)
