"""Choosing the tokens of a new row: vectorised over sessions and streams, ``[B, C, V]``.

One call samples every generated cell of a row for every session of a batch at once; nothing
loops over streams and nothing syncs with the host. The steps, in order:

1. silence penalty: subtract a per-cell amount from the silence token's logit (the engine ramps
   it up once the inputs are closed, spec §3.1);
2. temperature, top-k and top-p (nucleus) per stream; temperature 0 means greedy (argmax);
3. draw with one ``torch.Generator`` per session (exponential race, so a session's draws do not
   depend on which other sessions share its batch);
4. force chosen streams silent (an ablation: the stream exists but never speaks).

Optional per-cell summaries (entropy and top-1 token/probability of the unpenalised distribution)
help to inspect what a stream was about to say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "CellSummaries",
    "SamplingConfig",
    "forced_silent_mask",
    "penalty_ramp",
    "sample_row",
    "stream_penalties",
    "summarise",
]


@dataclass
class SamplingConfig:
    """How generated cells are drawn. Defaults are greedy with the paper's silence penalty off.

    Args:
        temperature: softmax temperature of every generated stream; 0 = greedy (argmax). The
            paper's Sec 7 evaluation uses 0.6-0.8.
        stream_temperature: per-stream overrides of ``temperature``, by stream name.
        top_k: keep only the k most likely tokens before drawing; 0 = off (paper: 20).
        top_p: nucleus: keep the smallest prefix of sorted tokens whose mass reaches top_p;
            1.0 = off (paper: 0.95).
        seed: seed of each session's generator (session i of a batch uses ``seed + i``); None
            draws from a random seed.
        silence_penalty: logit subtracted from the silence token of output streams once the
            inputs are closed, ramped in over ``penalty_ramp_rows`` (paper: 2.0); 0 = off.
        think_silence_penalty: the same for thinking streams (paper default 0).
        penalty_streams: names of the output streams that get ``silence_penalty``; None = every
            output stream (the authors' models: only ``Output``).
        penalty_ramp_rows: rows over which the penalty grows linearly to its full value (paper: 5).
        silent_streams: names of generated streams forced to silence (ablation).
        summaries: attach per-cell entropy and top-1 to each row (costs a softmax over V).
    """

    temperature: float = 0.0
    stream_temperature: dict[str, float] = field(default_factory=dict)
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    silence_penalty: float = 0.0
    think_silence_penalty: float = 0.0
    penalty_streams: tuple[str, ...] | None = None
    penalty_ramp_rows: int = 5
    silent_streams: tuple[str, ...] = ()
    summaries: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        for name, value in self.stream_temperature.items():
            if value < 0:
                raise ValueError(f"stream_temperature[{name!r}] must be >= 0, got {value}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.penalty_ramp_rows < 1:
            raise ValueError(f"penalty_ramp_rows must be >= 1, got {self.penalty_ramp_rows}")
        self.silent_streams = tuple(self.silent_streams)
        if self.penalty_streams is not None:
            self.penalty_streams = tuple(self.penalty_streams)

    def temperatures(self, names: Sequence[str]) -> torch.Tensor:
        """``[C]`` temperature of each stream, in schema order; unknown override names fail."""
        unknown = sorted(set(self.stream_temperature) - set(names))
        if unknown:
            raise ValueError(f"stream_temperature names unknown streams {unknown}; streams are {list(names)}")
        return torch.tensor([float(self.stream_temperature.get(n, self.temperature)) for n in names])


@dataclass
class CellSummaries:
    """What the model thought of each cell of a row: ``[B, C]`` tensors."""

    entropy: torch.Tensor  # nats, of the softmax of the raw logits
    top1_id: torch.Tensor
    top1_prob: torch.Tensor


def summarise(logits: torch.Tensor) -> CellSummaries:
    """Entropy and top-1 of ``logits [B, C, V]`` (before penalties and temperature)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top1_prob, top1_id = probs.max(-1)
    return CellSummaries(entropy=entropy, top1_id=top1_id, top1_prob=top1_prob)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf; ``[N, V]`` -> ``[N, V]``."""
    if top_k <= 0 and top_p >= 1.0:
        return logits
    V = logits.shape[-1]
    k = min(top_k, V) if top_k > 0 else V
    # Only the k best can survive, so sorting them suffices (k = V sorts all for pure top-p).
    values, indices = torch.topk(logits, k, dim=-1)  # [N, k], descending
    if top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        # Keep a token while the mass before it is below top_p (the most likely always stays).
        before = torch.cumsum(probs, dim=-1) - probs
        values = values.masked_fill(before >= top_p, float("-inf"))
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, indices, values)


def sample_row(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    silence_id: int,
    silence_penalty: torch.Tensor | None = None,
    forced_silent: torch.Tensor | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Draw one token per cell.

    Args:
        logits: ``[B, C, V]`` next-row logits.
        temperature: ``[C]`` or ``[B, C]``; 0 = greedy for that cell.
        top_k, top_p: filters applied to every sampled cell (see :class:`SamplingConfig`).
        silence_id: the schema's silence token.
        silence_penalty: ``[B, C]`` amount subtracted from the silence logit, or None.
        forced_silent: bool ``[C]`` or ``[B, C]``: these cells get silence whatever the logits.
        generators: one generator per session (None entries use the global RNG); only needed
            when some temperature is > 0.

    Returns:
        LongTensor ``[B, C]``.

    Example:
        >>> logits = torch.tensor([[[0.0, 2.0, 1.0]]])
        >>> sample_row(logits, torch.zeros(1), silence_id=0).tolist()
        [[1]]
    """
    B, C, V = logits.shape
    logits = logits.float()
    if silence_penalty is not None:
        logits = logits.clone()
        logits[..., silence_id] -= silence_penalty.to(logits.device, logits.dtype)
    temperature = temperature.to(logits.device, logits.dtype).expand(B, C)
    greedy = logits.argmax(-1)  # [B, C]
    sampled_cells = temperature > 0
    if bool(sampled_cells.any()):
        # Greedy cells divide by 1 instead of 0; their draw is discarded below anyway.
        scaled = logits / torch.where(sampled_cells, temperature, torch.ones_like(temperature))[..., None]
        probs = torch.softmax(_filter_top_k_top_p(scaled.view(B * C, V), top_k, top_p), -1).view(B, C, V)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, and each session's
        # noise comes from its own generator, so batching does not change a session's draws.
        noise = torch.empty_like(probs)
        gens = list(generators) if generators is not None else [None] * B
        if len(gens) != B:
            raise ValueError(f"generators: got {len(gens)}, need one per session ({B})")
        for b, gen in enumerate(gens):
            noise[b].exponential_(generator=gen)
        drawn = (probs / noise).argmax(-1)
        tokens = torch.where(sampled_cells, drawn, greedy)
    else:
        tokens = greedy
    if forced_silent is not None:
        forced = forced_silent.to(tokens.device).expand(B, C)
        tokens = tokens.masked_fill(forced, silence_id)
    return tokens


def penalty_ramp(rows_since_close: torch.Tensor, ramp_rows: int) -> torch.Tensor:
    """Fraction of the full silence penalty: 0 before the inputs closed, then ``k/ramp_rows``
    at the k-th row after (k = 1, 2, ...), capped at 1 (spec §3.1: ``min(1, (row-end+1)/5)``).

    Args:
        rows_since_close: ``[B]`` rows since the inputs closed (0 = the first row without
            input), negative while they are open.
        ramp_rows: ramp length.
    """
    return ((rows_since_close + 1).clamp(min=0).float() / ramp_rows).clamp(max=1.0)


def stream_penalties(
    config: SamplingConfig,
    roles_output: torch.Tensor,
    roles_think: torch.Tensor,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """``[C]`` full silence penalty of each stream (outputs, thinking, 0 for inputs).

    ``names`` (schema order) is needed when ``config.penalty_streams`` picks output streams."""
    outputs = roles_output.bool()
    if config.penalty_streams is not None:
        if names is None:
            raise ValueError("penalty_streams needs the stream names (schema order)")
        for name in config.penalty_streams:
            if name not in names or not bool(outputs[list(names).index(name)]):
                raise ValueError(
                    f"penalty_streams: {name!r} is not an output stream; streams are {list(names)}"
                )
        outputs = outputs & torch.tensor([n in config.penalty_streams for n in names])
    return outputs.float() * config.silence_penalty + roles_think.float() * config.think_silence_penalty


def forced_silent_mask(
    config: SamplingConfig, names: Sequence[str], generated: Mapping[str, bool]
) -> torch.Tensor:
    """Bool ``[C]``: streams the config forces silent; names must be generated streams."""
    for name in config.silent_streams:
        if name not in generated:
            raise ValueError(f"silent_streams: unknown stream {name!r}; streams are {list(names)}")
        if not generated[name]:
            raise ValueError(
                f"silent_streams: {name!r} is an input stream; only generated streams are sampled"
            )
    return torch.tensor([n in config.silent_streams for n in names])
