"""Step planners: what a decode step appends for a layout, as a :class:`TokenPlan`.

The session logic (inputs, sampling, stop rules) is the same for every layout; what differs is
how a row of cells becomes tokens in the KV cache: their order, positions, stream ids, which are
hidden, and which tokens' logits give the next cells. A planner answers exactly that, so a new
layout's decoding is one module with one planner class, registered in :data:`PLANNERS`.

Layout A (``grid``, the row-major grid of paper-spec §2.3) appends the C cells of a row at the
row's position, one stream id each; the next row's cells are sampled from the logits of the
generated streams' cells (each predicts its own stream's next cell).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from .backend import TokenPlan

__all__ = ["PLANNERS", "GridPlanner", "StepPlanner", "get_planner"]


class StepPlanner(Protocol):
    """Turns rows of cells into backend appends for one layout.

    Attributes:
        generated: ``[G]`` stream indices whose next cells are sampled from the returned logits,
            in the order of ``logits_at``.
    """

    generated: torch.Tensor

    def plan(self, slots: torch.Tensor, rows: Sequence[torch.Tensor], starts: Sequence[int]) -> TokenPlan:
        """Tokens for ``rows[i]`` (``[R_i, C]`` cells, the session's rows ``starts[i]`` onward)
        of slot ``slots[i]``; ``logits_at`` points at the tokens that predict each generated
        stream's next cell after the last row."""
        ...


class GridPlanner:
    """Layout A: row r of C cells -> C tokens at position r, stream ids 0..C-1.

    Args:
        schema: the model's stream schema.
        skip_silence: silence cells are hidden keys (paper's ``block_causal_skip_silence``).
    """

    def __init__(self, schema: Any, skip_silence: bool = False) -> None:
        self.num_streams = schema.num_streams
        self.silence_id = schema.require_silence_id()
        self.skip_silence = skip_silence
        self.generated = torch.tensor(schema.generated_indices, dtype=torch.long)

    def plan(self, slots: torch.Tensor, rows: Sequence[torch.Tensor], starts: Sequence[int]) -> TokenPlan:
        C = self.num_streams
        N = len(rows)
        R = max(r.shape[0] for r in rows)
        # Left-pad: every slot's last row ends the plan, so one set of logits positions fits all.
        ids = torch.full((N, R, C), self.silence_id, dtype=torch.long)
        present = torch.zeros(N, R, dtype=torch.bool)
        positions = torch.zeros(N, R, dtype=torch.long)
        for i, (r, start) in enumerate(zip(rows, starts, strict=True)):
            n = r.shape[0]
            ids[i, R - n :] = r
            present[i, R - n :] = True
            positions[i, R - n :] = torch.arange(start, start + n)
        T = R * C
        flat = ids.reshape(N, T)
        present_t = present.repeat_interleave(C, dim=1)
        hidden = ~present_t
        if self.skip_silence:
            hidden = hidden | (flat == self.silence_id)
        return TokenPlan(
            slots=slots,
            ids=flat,
            positions=positions.repeat_interleave(C, dim=1),
            streams=torch.arange(C).repeat(R).expand(N, -1),
            present=present_t,
            hidden=hidden,
            logits_at=(T - C + self.generated).expand(N, -1),
        )


# Layout name (MultiStreamConfig.layout) -> "module:Class" of its planner, imported on use so that
# a layout whose step is a row of cells decodes with one module of this package. Layout B's step
# is not a row (interleaved blocks, spec §3.2): its module (engine/blocks_decode.py) brings its
# own session batch, which SessionBatch/Session construct for such models.
PLANNERS: dict[str, str] = {
    "grid": "multistream.engine.planner:GridPlanner",
}


def get_planner(model: Any, **options: Any) -> StepPlanner:
    """The planner of ``model``'s layout (``model.config.layout``, default ``grid``)."""
    name = getattr(model.config, "layout", "grid") or "grid"
    if name not in PLANNERS:
        raise ValueError(f"layout {name!r} has no decode planner; known: {', '.join(PLANNERS)}")
    module, cls = PLANNERS[name].split(":")
    try:
        planner_cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise NotImplementedError(
            f"decoding layout {name!r} needs {PLANNERS[name]}, which is missing: {e}"
        ) from e
    return planner_cls(model.schema, **options)
