"""Running a Layout B model (``layout: blocks``, spec §2.5) in an evaluation.

:class:`~multistream.evaluation.runners.MultiStreamRunner` lays an example out as grid columns;
a Layout B model instead reads a **system block** (prefilled before the first step) and a **user
block** streamed one token per step, and writes its heads beside it
(:mod:`multistream.engine.blocks_decode`). :class:`BlocksRunner` feeds an example the way the
``separated`` converter laid out its training data (:mod:`multistream.data.blocks`): the
instruction fields (``system``, ``user``) joined by a blank line form the system block, the
untrusted ``data`` the user block. An example without data streams its instruction as the user
block instead (the ``wait-k`` routing), under the default system message.

It returns the same :class:`~multistream.evaluation.runners.TimedOutput` as the grid runner, so
every scorer and latency metric applies unchanged; rows count the user block's tokens (its
``<|im_end|>`` included) as the input rows ``E``. The answer is the first head's text without
the bridging utterances it says while the data streams in (:func:`strip_all_bridging`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..data.examples import SequentialExample
from .runners import MultiStreamRunner, TimedOutput, is_visible, strip_bridging

__all__ = ["BlocksRunner", "as_blocks_runner", "is_blocks_runner_model", "strip_all_bridging"]

# Fields that form the system block when the example has data (the ``separated`` policy).
_INSTRUCTION_FIELDS = ("system", "user")


def is_blocks_runner_model(model: Any) -> bool:
    """Whether ``model`` decodes Layout B blocks (``model.config.layout == "blocks"``)."""
    return getattr(getattr(model, "config", None), "layout", "grid") == "blocks"


def strip_all_bridging(text: str) -> str:
    """``text`` without every leading bridging utterance (a Layout B head cycles through them
    while it waits), each removed as :func:`~multistream.evaluation.runners.strip_bridging` does."""
    while True:
        stripped = strip_bridging(text)
        if stripped == text:
            return text
        text = stripped


class BlocksRunner(MultiStreamRunner):
    """A :class:`MultiStreamRunner` for Layout B models (module docstring); same settings."""

    def blocks_text(self, example: SequentialExample) -> tuple[str, str]:
        """(system block text, user block text) of the example."""
        fields = example.input_fields()
        if not example.data.strip():
            return "", "\n\n".join(text for _, text in fields)
        system = "\n\n".join(text for name, text in fields if name in _INSTRUCTION_FIELDS)
        data = "\n\n".join(text for name, text in fields if name not in _INSTRUCTION_FIELDS)
        return system, data

    def input_columns(self, example: SequentialExample) -> tuple[dict[str, list[int]], int]:
        """``{"system": ids, "user": ids}`` as the session tokenises them, and ``E``: the user
        block's tokens plus its ``<|im_end|>``."""
        from ..data.tokenize import tokenize_live_text

        system, data = self.blocks_text(example)
        columns = {
            "system": list(self.tokenizer.encode(system, add_special_tokens=False)) if system else [],
            "user": tokenize_live_text(data, self.tokenizer),
        }
        return columns, len(columns["user"]) + 1

    def separated(self, example: SequentialExample) -> bool:
        """The instruction and the data land in different blocks (the example has both)."""
        system, data = self.blocks_text(example)
        return bool(system.strip()) and bool(data.strip())

    def run(self, example: SequentialExample, rate: float | None = None) -> TimedOutput:
        """Decode one example greedily (as :meth:`MultiStreamRunner.run`, on Layout B blocks)."""
        from ..engine import Session

        columns, end = self.input_columns(example)
        session = Session(self.model, self.tokenizer, self.session_config(end + self.max_new_tokens))
        if columns["system"]:
            session.feed("system", columns["system"])
        session.feed("user", columns["user"])
        session.close()
        out_index = self.schema.index(self.output_stream)
        silence = self.schema.require_silence_id()
        out = TimedOutput(text="", streams={}, input_tokens=end, input_arrivals_s=[])
        timeline: list[dict[str, str | None]] = []
        clock = 0.0
        ended = False
        with torch.inference_mode():
            while session.stop is None:
                r = len(session.state.rows)
                if r < end:
                    if rate is not None:
                        clock = max(clock, r / rate)
                    out.input_arrivals_s.append(clock)
                start = time.perf_counter()
                row = session.step()
                clock += time.perf_counter() - start
                timeline.append(dict(row.text))
                token = row.ids[out_index]
                if ended or (token == silence and row.text[self.output_stream] is None):
                    continue
                out.end_row, out.end_s = row.index, clock
                if token == self.eos_id:
                    ended = True
                    continue
                out.token_rows.append(row.index)
                out.token_reads.append(min(row.index, end))
                out.token_times_s.append(clock)
                out.token_visible.append(is_visible(row.text[self.output_stream]))
                out.token_texts.append(row.text[self.output_stream] or "")
        out.streams = session.texts()
        out.text = strip_all_bridging(self._clean(out.streams[self.output_stream]))
        out.rows = len(session.state.rows)
        out.stop = session.stop
        out.timeline = timeline
        return out


def as_blocks_runner(runner: Any) -> Any:
    """``runner`` itself, or a :class:`BlocksRunner` with its settings when its model is Layout B."""
    if isinstance(runner, BlocksRunner) or not is_blocks_runner_model(getattr(runner, "model", None)):
        return runner
    blocks = BlocksRunner.__new__(BlocksRunner)
    blocks.__dict__.update(runner.__dict__)
    return blocks
