"""Decoding presets: the one set of decoding defaults a saved model carries with it.

``generate``, ``chat``, ``serve`` and the evaluation runners all start from
:class:`DecodingPresets`; a command-line flag or request field overrides one value
(:meth:`DecodingPresets.merged`). A model directory stores its presets in
``decoding_presets.json`` next to ``multistream_config.json`` (as Hugging Face keeps
``generation_config.json`` beside ``config.json``); a directory without that file gets the
defaults below, so every older save keeps loading and decoding as before.

Start rows (spec §3.1): ``start="seed"`` begins from ``seed_rows`` (None: one silent row, which
the engine makes without a forward pass), ``start="warm"`` prefills ``warm_start_rows`` (the
authors' 11-row "voice priming" header) in one pass before the first input token. A cell is a
text (its first token is used, as the authors do), a token id, or None for silence; rows list
their cells in schema order.

Example:
    >>> presets = DecodingPresets().merged(temperature=0.6, max_rows=None)
    >>> presets.temperature, presets.max_rows
    (0.6, 256)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from .schema import Role, SchemaError, StreamSchema

__all__ = ["PRESETS_NAME", "START_MODES", "Cell", "DecodingPresets"]

PRESETS_NAME = "decoding_presets.json"
PRESETS_FORMAT_VERSION = 1
START_MODES: tuple[str, ...] = ("seed", "warm")

Cell = str | int | None
StartMode = Literal["seed", "warm"]


@dataclass(frozen=True)
class DecodingPresets:
    """How a model decodes unless told otherwise. Every field has a default.

    Args:
        temperature: softmax temperature of every generated stream; 0 = greedy (authors: 0.8,
            their evaluation 0.6).
        top_p: nucleus mass kept before drawing; 1.0 = off (authors: 0.95).
        top_k: keep only the k most likely tokens; 0 = off (authors: 20).
        silence_penalty: logit subtracted from the silence token of the ``penalty_streams`` once
            the inputs closed (authors: 10 in their script, 2.0 in their evaluation).
        penalty_ramp_rows: rows over which that penalty grows linearly to full (authors: 5).
        stop_silent_rows: stop after this many all-silent rows once the inputs closed; 0 = off
            (authors: 1, which often stops before the output speaks, so ours waits longer).
        max_rows: most rows generated after the start rows (authors: 200, evaluation 512).
        start: ``"seed"`` (start from ``seed_rows``) or ``"warm"`` (prefill ``warm_start_rows``).
        seed_rows: rows of a seed start; None = one silent row made without a forward pass.
        warm_start_rows: the header rows of a warm start; required when ``start="warm"``.
        skip_silence: hide silence keys from every other query (paper's ``skip_silence``).
        penalty_streams: names of the streams the silence penalty applies to; None = every
            stream with role ``output``. Naming a thinking or input stream is an error.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    silence_penalty: float = 2.0
    penalty_ramp_rows: int = 5
    stop_silent_rows: int = 4
    max_rows: int = 256
    start: StartMode = "seed"
    seed_rows: tuple[tuple[Cell, ...], ...] | None = None
    warm_start_rows: tuple[tuple[Cell, ...], ...] | None = None
    skip_silence: bool = False
    penalty_streams: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so presets stay hashable and immutable.
        for name in ("seed_rows", "warm_start_rows"):
            rows = getattr(self, name)
            if rows is not None:
                object.__setattr__(self, name, _as_rows(rows, name))
        if self.penalty_streams is not None:
            streams = self.penalty_streams
            if isinstance(streams, str) or not all(isinstance(s, str) for s in streams):
                raise ValueError(f"penalty_streams must be a list of stream names, got {streams!r}")
            object.__setattr__(self, "penalty_streams", tuple(streams))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.silence_penalty < 0:
            raise ValueError(f"silence_penalty must be >= 0, got {self.silence_penalty}")
        if self.penalty_ramp_rows < 1:
            raise ValueError(f"penalty_ramp_rows must be >= 1, got {self.penalty_ramp_rows}")
        if self.stop_silent_rows < 0:
            raise ValueError(f"stop_silent_rows must be >= 0 (0 = off), got {self.stop_silent_rows}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.start not in START_MODES:
            raise ValueError(f"start {self.start!r} is unknown; choose one of {', '.join(START_MODES)}")
        if self.start == "warm" and not self.warm_start_rows:
            raise ValueError("start='warm' needs warm_start_rows (the header rows to prefill)")

    # -- overrides -----------------------------------------------------------------------------

    def merged(self, **overrides: Any) -> DecodingPresets:
        """A copy with the given fields replaced; a value of None keeps the preset (so unset
        command-line options pass straight through). Unknown names fail."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown decoding presets {unknown}; known: {', '.join(sorted(known))}")
        data = asdict(self)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return DecodingPresets(**data)

    def session_kwargs(self) -> dict[str, Any]:
        """Flat options for ``SessionConfig.from_kwargs`` / ``generate(**options)``: the
        session fields and the sampling fields. Start rows are not among them: pass
        :meth:`start_rows` to ``prefill``."""
        from .sampling import SamplingConfig

        out: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "silence_penalty": self.silence_penalty,
            "penalty_ramp_rows": self.penalty_ramp_rows,
            "stop_silent_rows": self.stop_silent_rows,
            "max_rows": self.max_rows,
            "skip_silence": self.skip_silence,
        }
        if self.penalty_streams is not None:
            if "penalty_streams" not in {f.name for f in fields(SamplingConfig)}:
                raise NotImplementedError(
                    "penalty_streams is set but this engine's SamplingConfig cannot restrict the "
                    "silence penalty to chosen streams"
                )
            out["penalty_streams"] = self.penalty_streams
        return out

    # -- start rows ----------------------------------------------------------------------------

    def start_rows(self, schema: StreamSchema, tokenizer: Any) -> list[list[int]] | None:
        """Token ids ``[rows][C]`` to prefill before the first input token, or None (start from
        one silent row). Texts take their first token; input-stream cells must be silent."""
        rows = self.warm_start_rows if self.start == "warm" else self.seed_rows
        if rows is None:
            return None
        self.check_schema(schema)
        silence = schema.require_silence_id()
        out = []
        for r, row in enumerate(rows):
            ids = []
            for c, cell in enumerate(row):
                token = _cell_id(
                    cell, tokenizer, silence, where=f"{self.start} start row {r}, stream {schema.names[c]!r}"
                )
                if token != silence and not schema.streams[c].generated:
                    raise SchemaError(
                        f"{self.start} start row {r}: input stream {schema.names[c]!r} must be silent "
                        f"(None or the silence text), got {cell!r}"
                    )
                ids.append(token)
            out.append(ids)
        return out

    def check_schema(self, schema: StreamSchema) -> None:
        """Fail unless the start rows have one cell per stream and ``penalty_streams`` names
        output streams of ``schema``."""
        for name in ("seed_rows", "warm_start_rows"):
            for r, row in enumerate(getattr(self, name) or ()):
                if len(row) != schema.num_streams:
                    raise SchemaError(
                        f"{name}[{r}] has {len(row)} cells; the schema has {schema.num_streams} streams "
                        f"({', '.join(schema.names)})"
                    )
        for stream in self.penalty_streams or ():
            if schema[stream].role is not Role.OUTPUT:
                raise SchemaError(
                    f"penalty_streams: {stream!r} has role {schema[stream].role.value}; the silence "
                    "penalty applies to output streams only"
                )

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("seed_rows", "warm_start_rows", "penalty_streams"):
            if data[name] is not None:
                data[name] = json.loads(json.dumps(data[name]))  # tuples -> lists
        return {"format_version": PRESETS_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = PRESETS_NAME) -> DecodingPresets:
        if not isinstance(data, dict):
            raise ValueError(
                f"{where}: expected a JSON object of decoding presets, got {type(data).__name__}"
            )
        data = dict(data)
        version = data.pop("format_version", PRESETS_FORMAT_VERSION)
        if version != PRESETS_FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version!r} is not supported")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown presets {unknown}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``decoding_presets.json`` into ``directory`` (atomically); returns its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{PRESETS_NAME}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        os.replace(tmp, out / PRESETS_NAME)
        return out / PRESETS_NAME

    @classmethod
    def load(cls, model_or_dir: Any) -> DecodingPresets:
        """The presets of a model directory or a loaded model; the defaults when it has none.

        A model loaded by ``MultiStreamLM.from_pretrained`` carries its directory's presets in
        ``model.decoding_presets``.
        """
        if isinstance(model_or_dir, (str, os.PathLike)):
            path = Path(model_or_dir) / PRESETS_NAME
            if not path.is_file():
                return cls()
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e}); fix or delete the file") from None
            return cls.from_dict(data, where=str(path))
        presets = getattr(model_or_dir, "decoding_presets", None)
        return presets if isinstance(presets, DecodingPresets) else cls()


def _as_rows(rows: Any, name: str) -> tuple[tuple[Cell, ...], ...]:
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise ValueError(f"{name} must be a list of rows (lists of cells), got {rows!r}")
    out = []
    for r, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise ValueError(f"{name}[{r}] must be a list of cells (text, token id or null), got {row!r}")
        cells = tuple(row)
        for cell in cells:
            if (cell is not None and not isinstance(cell, (str, int))) or isinstance(cell, bool):
                raise ValueError(f"{name}[{r}]: a cell is a text, a token id or null, got {cell!r}")
        out.append(cells)
    if not out:
        raise ValueError(f"{name} is empty; use null for no start rows")
    return tuple(out)


def _cell_id(cell: Cell, tokenizer: Any, silence: int, where: str) -> int:
    if cell is None:
        return silence
    if isinstance(cell, int):
        if cell < 0:
            raise SchemaError(f"{where}: token id {cell} is negative")
        return cell
    ids = tokenizer.encode(cell, add_special_tokens=False)
    if not ids:
        raise SchemaError(f"{where}: text {cell!r} encodes to no token")
    return int(ids[0])
