"""The base model as its own causality judge: from which input row could it commit to each token?

The paper judges every streamed chunk with an LLM that looks for information from input not yet
received (:mod:`~multistream.data.judge`, spec §4.1). For self-distilled data (the base's own
sequential answers laid out as streams) the base itself is a sharper judge: it wrote the answer,
so it can say how much of the input it needed for each token. With teacher forcing, the answer
token ``a_j`` is scored under the input cut after each row ``r`` (the input cells at rows ``< r``,
as the base's chat prompt) and under the whole input; ``a_j`` may sit at row ``r`` only if its
log-prob there, and at every later cut, is within ``margin`` nats of its log-prob given the whole
input, and no earlier than the token before it (so the earliest rows are monotone in ``j``).

All cuts of one example are scored in one batched forward (left padding, the LM head only on the
answer positions); long inputs use a coarse stride of cuts (``max_cuts``), which can only make a
token wait longer (a cut that is skipped is never allowed), never come earlier.

:func:`judged_grid` turns the judgement into a schedule for a converted grid (``wait-k``): the
bridging opening stays where it is (it holds no input content), and each answer token moves to
``max(its row, its earliest row)`` (``mode="no-earlier"``: the answer never starts before the base
could commit to it) or to its earliest row after the bridging (``mode="earliest"``: content as
early as the base allows, the paper's judged streaming). ``multistream`` grids of the second kind
carry policy ``self-judged`` (:func:`~multistream.data.convert.check_grid` knows it once this
module is imported).

Example:
    >>> judge = SelfJudge(base_model, tokenizer, margin=1.0)          # doctest: +SKIP
    >>> verdict = judge.judge(grid)                                    # doctest: +SKIP
    >>> new = judged_grid(grid, verdict, mode="no-earlier")            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..grid import StreamGrid
from ..schema import Role
from .causality import input_end_row
from .convert import GUARANTEES, ConversionPolicy, register_guarantee

__all__ = [
    "JudgedOutput",
    "SelfJudge",
    "commit_logprobs",
    "cut_rows",
    "earliest_cut_index",
    "judged_grid",
]

SELF_JUDGED = "self-judged"
MODES = ("no-earlier", "earliest")


def cut_rows(end_row: int, max_cuts: int) -> list[int]:
    """The rows at which the input is cut: ``0, s, 2s, ... < end_row`` and ``end_row`` itself.

    ``s`` is the smallest stride giving at most ``max_cuts`` cuts before ``end_row``; row
    ``end_row`` (the whole input) is always the last cut.
    """
    if max_cuts < 1:
        raise ValueError(f"max_cuts must be >= 1, got {max_cuts}")
    stride = max(1, -(-end_row // max_cuts))
    return [*range(0, end_row, stride), end_row]


def commit_logprobs(
    model: Any, prompts: Sequence[Sequence[int]], answer: Sequence[int], pad_id: int, batch_size: int = 8
) -> torch.Tensor:
    """Teacher-forced log-probs of ``answer`` after each prompt: ``[len(prompts), len(answer)]``.

    Prompts are left-padded so every answer sits at the end of the batch; positions count from
    each prompt's first real token, and only the answer positions go through the LM head.
    """
    n_ans = len(answer)
    if n_ans == 0 or not prompts:
        return torch.zeros(len(prompts), n_ans)
    device = next(model.parameters()).device
    answer_t = torch.tensor(list(answer), dtype=torch.long, device=device)
    out = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b : b + batch_size]
        width = max(len(p) for p in chunk) + n_ans
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for i, p in enumerate(chunk):  # one copy per prompt, not per token
            seq = torch.tensor([*p, *answer], dtype=torch.long, device=device)
            ids[i, width - len(seq) :] = seq
            mask[i, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=n_ans + 1
            ).logits[:, :-1]  # [B, A, V]: the logits before each answer token
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.append(logp.gather(-1, answer_t.expand(len(chunk), n_ans)[..., None])[..., 0])
    return torch.cat(out).cpu()


def earliest_cut_index(logprobs: torch.Tensor, margin: float) -> torch.Tensor:
    """For each answer token, the first cut from which on it is committed: ``[A]`` indices.

    Args:
        logprobs: ``[T, A]`` from :func:`commit_logprobs`; the last row is the whole input.
        margin: nats a token's log-prob may lie below its whole-input log-prob.

    Returns:
        the smallest cut index ``t`` such that the token is within ``margin`` at ``t`` and at
        every later cut, made monotone over the answer (a token never precedes the one before).
    """
    ok = logprobs >= logprobs[-1:] - margin  # [T, A]; the last cut is always ok
    # Committed from t on: ok at t and at every later cut (reverse cumulative AND).
    stable = ok.flip(0).long().cumprod(0).flip(0).bool()
    first = stable.long().argmax(0)  # the first True per column
    return first.cummax(0).values


@dataclass
class JudgedOutput:
    """The judge's verdict on the first output stream of one grid.

    Args:
        rows: the output stream's non-silent rows (bridging, answer and end token), in order.
        ids: their tokens.
        earliest: for each of them, the earliest row the base commits to it.
        answer_start: index into ``rows`` of the first answer token (after the bridging).
        cuts: the cut rows that were scored.
        logprobs: ``[len(cuts), len(ids)]`` teacher-forced log-probs.
    """

    rows: list[int]
    ids: list[int]
    earliest: list[int]
    answer_start: int
    cuts: list[int]
    logprobs: torch.Tensor

    def answer_rows_earliest(self) -> list[int]:
        return self.earliest[self.answer_start :]


class SelfJudge:
    """Score a grid's output with the base model under every cut of its input.

    Args:
        model: the base causal LM (Hugging Face), the one whose answers the grids hold.
        tokenizer: its tokenizer (the chat template, if any, wraps each cut input).
        margin: nats below the whole-input log-prob a token may score and still be committed.
        max_cuts: most cuts before the input end (long inputs get a coarse stride).
        batch_size: cuts per forward pass.
    """

    def __init__(
        self, model: Any, tokenizer: Any, margin: float = 1.0, max_cuts: int = 24, batch_size: int = 8
    ) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0 nats, got {margin}")
        self.model, self.tokenizer = model, tokenizer
        self.margin, self.max_cuts, self.batch_size = margin, max_cuts, batch_size
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def prompt_ids(self, grid: StreamGrid, row: int) -> list[int]:
        """The base's prompt for the input cells at rows ``< row`` (input streams in schema
        order, silence and the end token dropped), in its chat template."""
        from ..sequential import chat_prompt_ids

        end_id = getattr(self.tokenizer, "eos_token_id", None)
        silence = grid.silence_id
        ids: list[int] = []
        for c in grid.schema.input_indices:
            ids += [t for t in grid.ids[:row, c].tolist() if t not in (silence, end_id)]
        return chat_prompt_ids(self.tokenizer, self.tokenizer.decode(ids))

    def judge(self, grid: StreamGrid) -> JudgedOutput:
        """The earliest row of every token of the grid's first output stream.

        Raises:
            ValueError: the grid has no output stream or its output stream is silent.
        """
        if not grid.schema.output_indices:
            raise ValueError(f"grid {grid.meta.get('id')!r} has no output stream to judge")
        c = grid.schema.output_indices[0]
        rows = (grid.ids[:, c] != grid.silence_id).nonzero().flatten().tolist()
        if not rows:
            raise ValueError(
                f"grid {grid.meta.get('id')!r}: its output stream {grid.schema.names[c]!r} is silent"
            )
        ids = grid.ids[rows, c].tolist()
        end = input_end_row(grid)
        cuts = cut_rows(end, self.max_cuts)
        prompts = [self.prompt_ids(grid, r) for r in cuts]
        logprobs = commit_logprobs(self.model, prompts, ids, self.pad_id, self.batch_size)
        first = earliest_cut_index(logprobs, self.margin)
        earliest = [cuts[i] for i in first.tolist()]
        answer_row = int(grid.meta.get("answer_row", rows[0]))
        answer_start = next((j for j, r in enumerate(rows) if r >= answer_row), len(rows))
        return JudgedOutput(rows, ids, earliest, answer_start, cuts, logprobs)


def judged_grid(grid: StreamGrid, verdict: JudgedOutput, mode: str = "no-earlier") -> StreamGrid:
    """Re-place the answer of a converted grid by the judge's verdict (the bridging stays).

    Args:
        grid: a converted grid (its meta's ``answer_row`` marks where the answer starts).
        verdict: :meth:`SelfJudge.judge` of this grid.
        mode: ``no-earlier``: each answer token at ``max(its row, its earliest row)``, one token
            per row, in order (the answer never starts before the base could commit to it);
            ``earliest``: each answer token at its earliest row, but after the bridging.

    Returns:
        a new grid (rows added or removed at the end as needed); meta gains ``self_judge``
        (margin, cuts, tokens moved, the answer's first row before and after).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    c = grid.schema.output_indices[0]
    s = verdict.answer_start
    old = torch.tensor(verdict.rows[s:], dtype=torch.long)
    earliest = torch.tensor(verdict.earliest[s:], dtype=torch.long)
    if mode == "no-earlier":
        lower = torch.maximum(old, earliest)
    else:
        after_bridging = verdict.rows[s - 1] + 1 if s > 0 else 0
        lower = earliest.clamp(min=after_bridging)
    # One token per row, in order: row_j = j + max_{i <= j}(lower_i - i).
    j = torch.arange(len(lower))
    new = (lower - j).cummax(0).values + j if len(lower) else lower
    bridging_rows = verdict.rows[:s]
    input_rows = input_end_row(grid)
    others = grid.ids != grid.silence_id
    others[:, c] = False
    spoken = others.any(1).nonzero().flatten()
    num_rows = max(
        int(spoken[-1]) + 1 if spoken.numel() else 0,
        int(new[-1]) + 1 if len(new) else 0,
        bridging_rows[-1] + 1 if bridging_rows else 0,
    )
    ids = torch.full((num_rows, grid.schema.num_streams), grid.silence_id, dtype=grid.ids.dtype)
    keep = min(num_rows, grid.num_rows)
    ids[:keep] = grid.ids[:keep]
    ids[:, c] = grid.silence_id
    out_ids = torch.tensor(verdict.ids, dtype=grid.ids.dtype)
    if bridging_rows:
        ids[torch.tensor(bridging_rows), c] = out_ids[:s]
    ids[new, c] = out_ids[s:]
    new_answer_row = int(new[0]) if len(new) else num_rows
    meta = {
        **grid.meta,
        "answer_row": new_answer_row,
        "self_judge": {
            "mode": mode,
            "cuts": len(verdict.cuts),
            "moved": int((new != old).sum()),
            "answer_row_before": int(old[0]) if len(old) else None,
            "earliest_answer_row": int(earliest[0]) if len(earliest) else None,
        },
    }
    if new_answer_row < input_rows:
        meta["policy"] = SELF_JUDGED  # content before the input end: the judge vouches for it
    return StreamGrid(ids, grid.schema, meta)


def _judged_early(grid: StreamGrid, c: int, tokenizer: Any) -> list[str]:
    return []  # the base judged every answer token; check_grid's lexical check still applies


if SELF_JUDGED not in GUARANTEES:
    register_guarantee(
        ConversionPolicy(
            SELF_JUDGED,
            "answer tokens placed from the row the base itself commits to them (self-causality judge)",
            None,
            early=((Role.OUTPUT, _judged_early),),
        )
    )
