"""Live decoding: a :class:`Session` reads input streams and writes generated streams row by row.

Each :meth:`Session.step` runs one forward pass over the previous row (C tokens, with the KV
cache) and returns the next :class:`Row`: its input cells come from the queues filled by
:meth:`Session.feed`, its generated cells are sampled from the logits (spec §3.1). Inputs may
arrive at any time, from any thread or asyncio task; a token fed while a row is being computed
lands in the next row.

Input clocks (:attr:`SessionConfig.clock`) decide when a queued input token enters a row:

* ``lockstep`` (the paper): every row takes the next queued token of each input stream, silence
  when the queue is empty. Models trained on wait-k grids (one input token per row while the
  user speaks) expect this.
* ``realtime``: rows advance at model speed and a queued token enters only once its arrival
  time (``feed(..., at=, interval=)``) has passed; before that the cell is silence. The model
  must have been trained with input streams that contain silence gaps, as in live use.

Several independent sessions can decode together in one batched forward with
:class:`SessionBatch` (each keeps its own rows, inputs, random generator and KV slot); sessions
join and leave a running batch between any two rows (continuous batching).

Silence options: ``skip_silence`` hides silence keys from every query except themselves (the
paper's ``block_causal_skip_silence``); ``drop_silence`` additionally removes them (and padding)
from the KV cache, which gives the same tokens with less memory and attention work.

Live text is tokenised like the paper's data pipeline (spec §3.1 step 2): split on whitespace and
encode ``" " + word`` for every word, so feed whole words.

The package, one concept per module:

* :mod:`~multistream.engine.config`: :class:`SessionConfig`, :class:`Row`, :class:`GenerationResult`;
* :mod:`~multistream.engine.inputs`: input queues (with their own lock) and live tokenisation;
* :mod:`~multistream.engine.stops`: the stop rules, pure functions of the rows;
* :mod:`~multistream.engine.planner`: per-layout step planners (what a step appends);
* :mod:`~multistream.engine.backend`: the decode-backend interface (slots, append, logits);
* :mod:`~multistream.engine.hf_backend`: the Hugging Face backend (slot KV cache, CPU fast path);
* :mod:`~multistream.engine.session`: :class:`Session`, :class:`SessionBatch`, :func:`generate`.

Sampling is :mod:`multistream.sampling`, shared with the sequential baseline
(:mod:`multistream.sequential`).
"""

from __future__ import annotations

from ..sampling import SamplingConfig, sample_row
from .backend import DecodeBackend, TokenPlan
from .config import (
    INPUT_CLOCKS,
    STOP_REASONS,
    GenerationResult,
    InputClock,
    Row,
    SessionConfig,
    SessionStopped,
)
from .inputs import InputQueues, tokenize_live
from .planner import GridPlanner, StepPlanner, get_planner
from .session import Session, SessionBatch, SessionState, generate
from .stops import StopRules

__all__ = [
    "INPUT_CLOCKS",
    "STOP_REASONS",
    "DecodeBackend",
    "GenerationResult",
    "GridPlanner",
    "InputClock",
    "InputQueues",
    "Row",
    "SamplingConfig",
    "Session",
    "SessionBatch",
    "SessionConfig",
    "SessionState",
    "SessionStopped",
    "StepPlanner",
    "StopRules",
    "TokenPlan",
    "generate",
    "get_planner",
    "sample_row",
    "tokenize_live",
]
