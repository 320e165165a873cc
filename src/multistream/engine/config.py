"""What a session is configured with and what it returns: :class:`SessionConfig`, :class:`Row`,
:class:`GenerationResult`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..fastpath import DEFAULT_MAX_ROWS
from ..grid import StreamGrid
from ..sampling import SamplingConfig

__all__ = [
    "INPUT_CLOCKS",
    "STOP_REASONS",
    "GenerationResult",
    "InputClock",
    "Row",
    "SessionConfig",
    "SessionStopped",
]

InputClock = Literal["lockstep", "realtime"]
INPUT_CLOCKS: tuple[str, ...] = ("lockstep", "realtime")
STOP_REASONS = ("max_rows", "silence", "end_token")


class SessionStopped(RuntimeError):
    """``step()`` was called on a session that already stopped."""


@dataclass
class SessionConfig:
    """How a session decodes. Every field has a default; unknown keys fail in :meth:`from_kwargs`.

    Args:
        sampling: token choice and silence penalty (see :class:`SamplingConfig`).
        clock: ``lockstep`` or ``realtime`` input clock (see the module docstring).
        max_rows: stop after this many rows produced by ``step()`` (prefill rows not counted).
        stop_silent_rows: stop once every generated stream has been silent for this many rows
            after the inputs closed; 0 = off. The paper stops at the first such row (1), which
            often ends before the output speaks, so the default waits longer.
        end_tokens: per generated stream, a text of one token (or a token id) that ends the
            stream: its later cells are forced silent, and the session stops once every listed
            stream has ended.
        skip_silence: hide silence keys from all other queries (paper's ``skip_silence``).
        drop_silence: also remove silence (and padding) keys from the KV cache; needs
            ``skip_silence`` (a key that is dropped cannot be visible).
        fastpath: compute small forwards on CPU with the thin-matrix kernel
            (:mod:`multistream.fastpath`) where it measured faster than ``F.linear`` on this
            machine (timed once per process); exact to fp32 rounding.
        fastpath_max_rows: largest forward (in tokens) the fast path handles.
        close_with_end_token: ``close()`` queues the tokenizer's end token (EOS) as the input's
            last cell. Grids from ``multistream convert`` end every input that way (its default
            ``--end-inputs``); the demo model was trained with and without it.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    clock: InputClock = "lockstep"
    max_rows: int = 256
    stop_silent_rows: int = 4
    end_tokens: dict[str, str | int] = field(default_factory=dict)
    skip_silence: bool = False
    drop_silence: bool = False
    fastpath: bool = True
    fastpath_max_rows: int = DEFAULT_MAX_ROWS
    close_with_end_token: bool = False

    def __post_init__(self) -> None:
        if self.clock not in INPUT_CLOCKS:
            raise ValueError(f"clock {self.clock!r} is unknown; choose one of {', '.join(INPUT_CLOCKS)}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.stop_silent_rows < 0:
            raise ValueError(f"stop_silent_rows must be >= 0 (0 = off), got {self.stop_silent_rows}")
        if self.drop_silence and not self.skip_silence:
            raise ValueError("drop_silence=True needs skip_silence=True: a dropped key cannot stay visible")

    @classmethod
    def from_kwargs(cls, **options: Any) -> SessionConfig:
        """Build from flat keyword options: session fields and :class:`SamplingConfig` fields
        mixed (``temperature=0.7, max_rows=64``). A key that is neither fails."""
        session_keys = {f.name for f in fields(cls)}
        sampling_keys = {f.name for f in fields(SamplingConfig)}
        unknown = sorted(set(options) - session_keys - sampling_keys)
        if unknown:
            raise TypeError(
                f"unknown generation options {unknown}; known: {', '.join(sorted(session_keys | sampling_keys))}"
            )
        flat_sampling = {k: options.pop(k) for k in list(options) if k in sampling_keys}
        sampling = options.pop("sampling", None)
        if sampling is not None and flat_sampling:
            raise TypeError(f"pass sampling= or sampling fields {sorted(flat_sampling)}, not both")
        sampling = sampling or SamplingConfig(**flat_sampling)
        return cls(sampling=sampling, **options)


@dataclass
class Row:
    """One row of a session, as ``step()`` returns it.

    Args:
        index: row index in the session (prefill rows included).
        ids: token id of every stream, in schema order.
        text: decoded text of every stream's cell, ``None`` for silence.
        stop: why the session stopped after this row, or None while it goes on.
        summaries: per generated stream ``{"entropy", "top1_id", "top1_prob"}`` when
            ``sampling.summaries`` is on and the row was sampled from logits, else None.
    """

    index: int
    ids: tuple[int, ...]
    text: dict[str, str | None]
    stop: str | None = None
    summaries: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The CLI's per-row JSON object: ``{"row": r, "text": {stream: cell text or null}}``."""
        return {"row": self.index, "text": dict(self.text)}


@dataclass
class GenerationResult:
    """What :func:`generate` returns.

    Args:
        texts: full text of every stream (silence removed).
        grid: all rows (prefill included) as a :class:`StreamGrid`.
        rows: the rows produced by ``step()``.
        stop: why generation stopped.
        first_visible_output_row: first row with a non-silent output cell, or None.
        inputs_closed_row: first row without input after the inputs closed, or None.
    """

    texts: dict[str, str]
    grid: StreamGrid
    rows: list[Row]
    stop: str | None
    first_visible_output_row: int | None
    inputs_closed_row: int | None

    def summary(self) -> dict[str, Any]:
        """The CLI's last JSON object (stable contract)."""
        return {
            "summary": {
                "streams": dict(self.texts),
                "rows": self.grid.num_rows,
                "first_visible_output_row": self.first_visible_output_row,
                "inputs_closed_row": self.inputs_closed_row,
            }
        }
