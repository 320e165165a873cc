"""Training data: grid files -> collator examples, the sequential twin (the one-stream chat
baseline built from the same grids), and the collator for the configured layout."""

from __future__ import annotations

import os
import random
from typing import Any

import torch

from ..data.collate import GridCollator
from ..grid import StreamGrid
from ..masks import IGNORE_INDEX
from ..schema import Role, Stream, StreamSchema
from .config import TrainConfig, TrainConfigError

__all__ = [
    "SEQUENTIAL_STREAM",
    "build_collator",
    "build_examples",
    "sequential_example",
    "sequential_schema",
]

# The one stream of the sequential baseline: ordinary chat text, prompt included, answer learned.
SEQUENTIAL_STREAM = "chat"


def sequential_example(grid: StreamGrid, tokenizer: Any | None = None) -> dict[str, torch.Tensor]:
    """The same example in ordinary single-stream chat form (the sequential baseline).

    The prompt is the input streams' text (silence dropped), the answer the generated streams'
    tokens in schema order (silence dropped; an end token in the grid stays the end token).
    With a tokenizer that has a chat template, the prompt is wrapped in it (user turn, then the
    assistant header); without one the prompt ids are used as they are.

    Args:
        grid: a multi-stream grid.
        tokenizer: the base model's tokenizer, or None.

    Returns:
        ``input_ids [T, 1]`` and ``labels [T, 1]`` (``IGNORE_INDEX`` on the prompt, so only the
        answer is learned, as in ordinary SFT).
    """
    turns = grid.meta.get("turns")
    if turns and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return chat_turns_example(turns, tokenizer)
    silence = grid.silence_id
    schema = grid.schema
    prompt_ids: list[int] = []
    for c in schema.input_indices:
        prompt_ids += [t for t in grid.ids[:, c].tolist() if t != silence]
    answer_ids: list[int] = []
    for c in schema.generated_indices:
        answer_ids += [t for t in grid.ids[:, c].tolist() if t != silence]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        # The template closes the user turn itself: drop an input end token the grid carries.
        end_id = getattr(tokenizer, "eos_token_id", None)
        text = tokenizer.decode([t for t in prompt_ids if t != end_id])
        from ..sequential import chat_prompt_ids

        prompt_ids = chat_prompt_ids(tokenizer, text)
    ids = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)[:, None]  # [T, 1]
    labels = ids.clone()
    labels[: len(prompt_ids)] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}


def chat_turns_example(turns: list[dict[str, str]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """A multi-turn chat (``grid.meta["turns"]``: user, assistant, user, assistant, ...) as one
    sequential example that learns every assistant turn (its text and end of turn).

    Grids whose sequential form is not one prompt and one answer carry it: an answer the user
    corrects mid-stream is, sequentially, a whole first answer, the correction as a new user turn,
    and the continuation (``scripts/build_demo_interrupt.py``).
    """
    from ..sequential import chat_prompt_ids

    ids = chat_prompt_ids(tokenizer, turns, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        start = len(chat_prompt_ids(tokenizer, turns[:k], add_generation_prompt=True))
        end = len(chat_prompt_ids(tokenizer, turns[: k + 1], add_generation_prompt=False))
        labels[start:end] = ids[start:end]
    return {"input_ids": torch.tensor(ids)[:, None], "labels": torch.tensor(labels)[:, None]}


def sequential_schema(schema: StreamSchema) -> StreamSchema:
    """The one-stream schema of the sequential baseline (same silence token)."""
    return StreamSchema(
        (Stream(SEQUENTIAL_STREAM, Role.OUTPUT),),
        silence_text=schema.silence_text,
        silence_id=schema.silence_id,
    )


def _drop_input_end(grids: list[StreamGrid], config: TrainConfig, tokenizer: Any | None) -> list[StreamGrid]:
    """Replace the end token of the input streams by silence in a seeded random subset.

    Converted grids close each input with the end token (the turn is over), and a model trained
    only on those waits for it. A live session whose input simply stops shows silence in that
    row instead; with both forms in training the model answers one row after either signal.
    """
    end_id = getattr(tokenizer, "eos_token_id", None)
    if end_id is None:
        raise TrainConfigError("input_end_dropout needs a tokenizer with an eos_token_id; set it to 0")
    rng = random.Random(config.seed)
    out = []
    for g in grids:
        if rng.random() < config.input_end_dropout:
            ids = g.ids.clone()
            inputs = ids[:, g.schema.input_indices]  # [R, C_in]
            ids[:, g.schema.input_indices] = torch.where(inputs == end_id, g.silence_id, inputs)
            g = StreamGrid(ids, g.schema, {**g.meta, "input_end": "silence"})
        out.append(g)
    return out


def _read(path: str, tokenizer: Any | None) -> list[StreamGrid]:
    from ..data.io import read_grids

    grids = read_grids(path, tokenizer=tokenizer).grids
    if not grids:
        raise TrainConfigError(f"{path} holds no grids")
    return grids


def build_examples(
    config: TrainConfig, tokenizer: Any | None = None
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], StreamSchema]:
    """Read, filter and split the grids, and turn them into collator examples.

    Returns:
        ``(train_examples, eval_examples, schema)``; each example holds ``input_ids`` and
        ``labels`` ``[R, C]``; the schema is the data's (one stream for the sequential form).
    """
    if config.layout == "blocks":
        return _build_blocks_examples(config, tokenizer)
    grids = _read(config.train_file, tokenizer)
    schema = grids[0].schema
    for k, g in enumerate(grids):
        if g.schema != schema:
            raise TrainConfigError(
                f"{config.train_file}: grid {k} has streams {g.schema.names}, grid 0 has {schema.names}; "
                "one file must use one schema"
            )
    if config.max_rows is not None:
        kept = [g for g in grids if g.num_rows <= config.max_rows]
        if not kept:
            raise TrainConfigError(
                f"max_rows={config.max_rows} drops every grid of {config.train_file} "
                f"(shortest has {min(g.num_rows for g in grids)} rows); raise max_rows"
            )
        grids = kept
    if config.eval_file:
        eval_grids = _read(config.eval_file, tokenizer)
    elif config.eval_fraction > 0:
        # A fixed shuffle (the training seed) so resumed and distributed runs hold out the same grids.
        order = list(range(len(grids)))
        random.Random(config.seed).shuffle(order)
        n_eval = max(1, round(len(grids) * config.eval_fraction))
        eval_grids = [grids[i] for i in sorted(order[:n_eval])]
        grids = [grids[i] for i in sorted(order[n_eval:])]
    else:
        eval_grids = []
    if config.max_examples is not None:
        grids = grids[: config.max_examples]
    if config.input_end_dropout > 0:
        grids = _drop_input_end(grids, config, tokenizer)

    def convert(g: StreamGrid) -> dict[str, torch.Tensor]:
        if config.form == "sequential":
            return sequential_example(g, tokenizer)
        ids = g.ids
        if config.trailing_silence_rows:
            silent = torch.full((config.trailing_silence_rows, ids.shape[1]), g.silence_id, dtype=ids.dtype)
            ids = torch.cat([ids, silent])  # [R + trailing, C]
        return {"input_ids": ids, "labels": ids}

    if config.form == "sequential":
        schema = sequential_schema(schema)
    return [convert(g) for g in grids], [convert(g) for g in eval_grids], schema


def build_collator(config: TrainConfig, schema: StreamSchema) -> Any:
    """The data collator for ``config.layout`` (the one place the layout reaches the batches).

    ``grid`` (Layout A) batches ``[B, R, C]`` grids with :class:`GridCollator`, or, with hidden
    silence (``layout_options: {hide_silence: true}``), flat cells without the invisible
    untrained ones; ``blocks`` (Layout B) batches flat cells. The sequential form is a one-stream
    grid, so it takes the grid path.
    """
    from ..data.collate import LayoutCollator
    from ..layout import get_layout

    pad_id = schema.require_silence_id()
    if config.form == "sequential":
        return GridCollator(pad_id=pad_id, packing=config.packing)
    options = dict(config.layout_options)
    if config.layout == "grid":
        options.setdefault("mask", config.mask)
    layout = get_layout(config.layout, **options)
    if config.layout == "grid" and not getattr(layout, "flat", False):
        return GridCollator(pad_id=pad_id, packing=config.packing)
    generated = torch.tensor([s.generated for s in schema.streams])
    return LayoutCollator(layout, pad_id, config.packing, generated, pad_id)


def blocks_sequential_example(example: Any) -> dict[str, torch.Tensor]:
    """A Layout B example as its sequential twin: the same blocks, one after the other, as
    one ordinary causal ChatML conversation (one-stream grid ``[T, 1]``) with the same targets
    (each head's tokens from ``targets_from`` through its ``<|im_end|>``)."""
    ids: list[int] = [*example.system, *example.user]
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for head, start in zip(example.heads, example.targets_from, strict=True):
        ids += head
        labels += [IGNORE_INDEX] * start + head[start:]
    return {"input_ids": torch.tensor(ids)[:, None], "labels": torch.tensor(labels)[:, None]}


def _build_blocks_examples(config: TrainConfig, tokenizer: Any | None) -> tuple[list, list, StreamSchema]:
    """Layout B: examples from a blocks file (``multistream convert --layout blocks``)."""
    from ..data.blocks_io import read_blocks
    from ..layout import blocks_schema

    def read(path: str) -> list[Any]:
        if not os.path.isfile(path):
            raise TrainConfigError(
                f"{path} does not exist: this recipe trains Layout B on converted data; make it first with "
                "`multistream convert --layout blocks ...` (see docs/grid-format.md)"
            )
        examples = read_blocks(path, tokenizer=tokenizer).examples
        if not examples:
            raise TrainConfigError(f"{path} holds no Layout B examples")
        return examples

    examples = read(config.train_file)
    heads = examples[0].num_heads
    for k, e in enumerate(examples):
        if e.num_heads != heads:
            raise TrainConfigError(
                f"{config.train_file}: example {k} has {e.num_heads} heads, example 0 has {heads}; "
                "one file must use one number of heads"
            )
    if config.eval_file:
        eval_examples = read(config.eval_file)
    elif config.eval_fraction > 0:
        order = list(range(len(examples)))
        random.Random(config.seed).shuffle(order)
        n_eval = max(1, round(len(examples) * config.eval_fraction))
        eval_examples = [examples[i] for i in sorted(order[:n_eval])]
        examples = [examples[i] for i in sorted(order[n_eval:])]
    else:
        eval_examples = []
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    schema = blocks_schema(heads, int(pad_id), config.layout_options.get("heads"))
    if config.form == "sequential":
        convert = blocks_sequential_example
        return [convert(e) for e in examples], [convert(e) for e in eval_examples], sequential_schema(schema)
    return examples, eval_examples, schema
