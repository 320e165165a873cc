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

from typing import Any

from ..data.examples import SequentialExample
from .runners import MultiStreamRunner, TimedOutput, strip_bridging

__all__ = ["BlocksRunner", "is_blocks_runner_model", "strip_all_bridging"]

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
    """A :class:`MultiStreamRunner` for Layout B models (module docstring); same settings and the
    same decoding loop, with its own input feeding, silence test and answer text."""

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

    def feed_input(self, session: Any, columns: dict[str, list[int]]) -> None:
        """The system block (when there is one), then the user block, closed."""
        if columns["system"]:
            session.feed("system", columns["system"])
        session.feed("user", columns["user"])
        session.close()

    def is_silent(self, token: int, row: Any) -> bool:
        # Layout B has no silence (spec §2.5): the schema's silence id is a placeholder that can be
        # a real token (the end token, in tiny test models); a head that says nothing in a step
        # has no cell text, while a real token has.
        return token == self.schema.require_silence_id() and row.text[self.output_stream] is None

    def finish(self, out: TimedOutput, session: Any, offset: int) -> None:
        out.streams = session.texts()
        out.text = strip_all_bridging(self._clean(out.streams[self.output_stream]))
        out.rows = session.state.generated_rows
        out.stop = session.stop
