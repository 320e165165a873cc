"""Streams and their roles: the only place that decides which column of a grid is which.

A multi-stream model reads and writes several parallel token streams. Each stream has a
name (``"user"``, ``"assistant"``, ``"think"``) and a role:

* ``input``  -- fed from outside (user text, tool results, untrusted data). Never sampled and
  never part of the loss.
* ``output`` -- the visible answer. Generated.
* ``think``  -- generated but internal (thinking, auditing). Generated.

The order of streams in a :class:`StreamSchema` is the column order of every grid, the order
of tokens inside a flattened row, and the index of each stream's learned embedding.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "DEFAULT_SILENCE_TEXT",
    "KNOWN_STREAM_NAMES",
    "Role",
    "SchemaError",
    "SchemaWarning",
    "Stream",
    "StreamSchema",
]

# The paper's released models fill silent cells with the BPE token for " -" (spec §2.4).
DEFAULT_SILENCE_TEXT = " -"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class SchemaError(ValueError):
    """A stream schema or a reference to one of its streams is invalid."""


class SchemaWarning(UserWarning):
    """A stream schema is valid but probably not what was meant (e.g. a misspelt stream name)."""


class Role(StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    THINK = "think"

    @property
    def generated(self) -> bool:
        return self is not Role.INPUT


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Stream:
    """One parallel token stream.

    Args:
        name: unique name, used in files, the CLI and the API (letters, digits, ``_`` and ``-``).
        role: ``input``, ``output`` or ``think`` (see the module docstring).
    """

    name: str
    role: Role

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SchemaError(
                f"stream name {self.name!r} is invalid: use letters, digits, '_' or '-', "
                "starting with a letter or '_'"
            )
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            choices = [r.value for r in Role]
            close = difflib.get_close_matches(str(self.role), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SchemaError(
                f"stream {self.name!r}: role {self.role!r} is unknown{hint}; choose one of {', '.join(choices)}"
            ) from None

    @property
    def generated(self) -> bool:
        return self.role.generated


# Role guessed from a bare stream name in ``StreamSchema.parse("user,assistant")``.
_INPUT_NAMES = {"user", "system", "data", "input", "tool", "tools", "instruction", "context"}
_THINK_PREFIXES = ("think", "reason", "audit", "plan")
# Bare names whose role is known; any other bare name becomes an output stream with a warning,
# since a misspelt input ("usr") would otherwise silently become a generated stream.
KNOWN_STREAM_NAMES: tuple[str, ...] = (
    *sorted(_INPUT_NAMES),
    "assistant", "answer", "output", "response", "reply", "chat",
    "think", "thinking", "reasoning", "audit", "plan",
)  # fmt: skip


def _guess_role(name: str) -> Role:
    lowered = name.lower()
    if lowered in _INPUT_NAMES:
        return Role.INPUT
    if lowered.startswith(_THINK_PREFIXES):
        return Role.THINK
    return Role.OUTPUT


def _warn_unknown_name(name: str) -> None:
    lowered = name.lower()
    if lowered in KNOWN_STREAM_NAMES or lowered.startswith(_THINK_PREFIXES):
        return
    close = difflib.get_close_matches(lowered, KNOWN_STREAM_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    warnings.warn(
        f"stream {name!r} is not a known stream name, so it becomes an output stream; {hint}"
        f"known names: {', '.join(KNOWN_STREAM_NAMES)}; write {name}:output (or :input, :think) "
        "to set the role explicitly",
        SchemaWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class StreamSchema:
    """The ordered streams of a multi-stream model plus its silence token.

    Args:
        streams: the streams, in column order.
        silence_text: text whose single token fills a silent cell. Default ``" -"`` as in the
            paper's released models.
        silence_id: the silence token id, once resolved against a tokenizer
            (:meth:`with_tokenizer`). Models and grids need it; text-only code does not.

    Example:
        >>> schema = StreamSchema.parse("user,think,assistant")
        >>> [s.role.value for s in schema.streams]
        ['input', 'think', 'output']
        >>> schema.index("assistant")
        2
    """

    streams: tuple[Stream, ...]
    silence_text: str = DEFAULT_SILENCE_TEXT
    silence_id: int | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        streams = tuple(self.streams)
        object.__setattr__(self, "streams", streams)
        if not streams:
            raise SchemaError("a schema needs at least one stream")
        for s in streams:
            if not isinstance(s, Stream):
                raise SchemaError(f"schema streams must be Stream objects, got {s!r}")
        names = [s.name for s in streams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"stream names must be unique; repeated: {', '.join(duplicates)}")
        if not any(s.generated for s in streams):
            raise SchemaError(
                f"schema {names} has no generated stream: give at least one stream the role "
                "'output' or 'think'"
            )
        if self.silence_id is not None and (not isinstance(self.silence_id, int) or self.silence_id < 0):
            raise SchemaError(f"silence_id must be a non-negative int, got {self.silence_id!r}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str, silence_text: str = DEFAULT_SILENCE_TEXT) -> StreamSchema:
        """Build a schema from ``"name[:role],name[:role],..."``.

        Without an explicit role, ``user``/``system``/``data``/``tool`` are inputs, names starting
        with ``think``/``reason``/``audit``/``plan`` are thinking streams, anything else is output.
        A bare name that is none of :data:`KNOWN_STREAM_NAMES` (``assistent``) warns with a
        :class:`SchemaWarning` that suggests the closest known name; ``name:role`` never warns.
        """
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:
            raise SchemaError(f"empty schema spec {spec!r}; expected e.g. 'user,assistant'")
        streams = []
        for part in parts:
            name, _, role = part.partition(":")
            name = name.strip()
            if not role:
                _warn_unknown_name(name)
            streams.append(Stream(name, role.strip() if role else _guess_role(name)))
        return cls(tuple(streams), silence_text=silence_text)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "schema") -> StreamSchema:
        """Inverse of :meth:`to_dict`; ``where`` names the source in error messages."""
        if not isinstance(data, dict) or "streams" not in data:
            raise SchemaError(f"{where}: expected an object with a 'streams' list, got {data!r}")
        try:
            streams = tuple(Stream(s["name"], s["role"]) for s in data["streams"])
        except (KeyError, TypeError) as e:
            raise SchemaError(f"{where}: each stream needs 'name' and 'role' fields ({e!r})") from None
        except SchemaError as e:
            raise SchemaError(f"{where}: {e}") from None
        return cls(
            streams,
            silence_text=data.get("silence_text", DEFAULT_SILENCE_TEXT),
            silence_id=data.get("silence_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streams": [{"name": s.name, "role": s.role.value} for s in self.streams],
            "silence_text": self.silence_text,
        }
        if self.silence_id is not None:
            out["silence_id"] = self.silence_id
        return out

    def with_tokenizer(self, tokenizer: _Tokenizer) -> StreamSchema:
        """Return a copy whose ``silence_id`` is the first token of ``silence_text``.

        The paper takes the first id of ``encode(" -")``; a SentencePiece tokenizer that has no
        token for ``" -"`` falls back to ``"-"`` (spec §2.4).
        """
        ids = tokenizer.encode(self.silence_text, add_special_tokens=False)
        if len(ids) != 1 and self.silence_text.startswith(" "):
            ids = tokenizer.encode(self.silence_text.lstrip(" "), add_special_tokens=False)
        if not ids:
            raise SchemaError(
                f"silence text {self.silence_text!r} encodes to no token with this tokenizer; "
                "choose another silence_text"
            )
        return StreamSchema(self.streams, silence_text=self.silence_text, silence_id=ids[0])

    # -- queries ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.streams]

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    def __len__(self) -> int:
        return len(self.streams)

    def index(self, name: str) -> int:
        """Column of stream ``name``; a clear error lists the known names."""
        try:
            return self._index[name]
        except KeyError:
            raise SchemaError(f"unknown stream {name!r}; this schema has: {', '.join(self.names)}") from None

    def __getitem__(self, name: str) -> Stream:
        return self.streams[self.index(name)]

    def indices(self, *roles: Role | str) -> list[int]:
        wanted = {Role(r) for r in roles}
        return [i for i, s in enumerate(self.streams) if s.role in wanted]

    @property
    def input_indices(self) -> list[int]:
        return self.indices(Role.INPUT)

    @property
    def generated_indices(self) -> list[int]:
        return self.indices(Role.OUTPUT, Role.THINK)

    @property
    def output_indices(self) -> list[int]:
        return self.indices(Role.OUTPUT)

    def require_silence_id(self) -> int:
        if self.silence_id is None:
            raise SchemaError(
                "this schema's silence token id is not resolved; call "
                "schema.with_tokenizer(tokenizer) or pass silence_id"
            )
        return self.silence_id
