"""Stop rules of a session, as pure functions of its rows (no model, no locks).

A session stops after a row when, in this order of precedence:

* ``end_token``: every stream listed in ``end_tokens`` has emitted its end token;
* ``silence``: every generated stream has been silent for ``stop_silent_rows`` rows since the
  inputs closed (0 = off);
* ``max_rows``: ``max_rows`` rows were produced by ``step()`` (prefill rows not counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["StopRules", "resolve_end_tokens"]


@dataclass(frozen=True)
class StopRules:
    """The rules, resolved once per batch.

    Args:
        silence_id: the schema's silence token.
        generated: indices of generated streams.
        outputs: indices of output streams (for ``first_visible_output_row``).
        end_ids: stream index -> end token id.
        stop_silent_rows: see :class:`~multistream.engine.SessionConfig`.
        max_rows: see :class:`~multistream.engine.SessionConfig`.
    """

    silence_id: int
    generated: tuple[int, ...]
    outputs: tuple[int, ...]
    end_ids: Mapping[int, int]
    stop_silent_rows: int
    max_rows: int

    def observe(
        self, facts: Any, index: int, ids: Sequence[int], inputs_closed: bool, generated_rows: int
    ) -> str | None:
        """Update the running facts of a session with row ``index`` and return the stop reason.

        Args:
            facts: has ``silent_rows`` (consecutive all-silent generated rows since the inputs
                closed), ``ended`` (set of streams that emitted their end token) and
                ``first_visible_output_row``; a :class:`~multistream.engine.SessionState`.
            ids: the row's token ids, in schema order.
            inputs_closed: the inputs had all closed and been read before this row.
            generated_rows: rows produced by ``step()`` so far, this one included.
        """
        silence = self.silence_id
        if facts.first_visible_output_row is None and any(ids[c] != silence for c in self.outputs):
            facts.first_visible_output_row = index
        for c, end_id in self.end_ids.items():
            if ids[c] == end_id:
                facts.ended.add(c)
        all_silent = all(ids[c] == silence for c in self.generated)
        facts.silent_rows = facts.silent_rows + 1 if inputs_closed and all_silent else 0
        if self.end_ids and set(self.end_ids) <= facts.ended:
            return "end_token"
        if self.stop_silent_rows and facts.silent_rows >= self.stop_silent_rows:
            return "silence"
        if generated_rows >= self.max_rows:
            return "max_rows"
        return None


def resolve_end_tokens(end_tokens: Mapping[str, str | int], schema: Any, tokenizer: Any) -> dict[int, int]:
    """``{stream name: text of one token or id}`` -> ``{stream index: token id}``; input
    streams and texts of more than one token fail with the reason."""
    out: dict[int, int] = {}
    for name, token in end_tokens.items():
        index = schema.index(name)
        if not schema.streams[index].generated:
            raise ValueError(
                f"end_tokens: {name!r} is an input stream; end tokens apply to generated streams"
            )
        if isinstance(token, str):
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"end_tokens[{name!r}] = {token!r} encodes to {len(ids)} tokens; give a text of "
                    "exactly one token, or a token id"
                )
            token = ids[0]
        out[index] = int(token)
    return out
