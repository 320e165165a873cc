"""Grid JSONL files: one example per line, format documented in ``docs/grid-format.md``.

Each record stores the tokenizer-agnostic text form (segments) and, optionally, the exact token
ids with a fingerprint of the tokenizer that produced them. Reading with the same tokenizer (or
with none) uses the ids and is bit-exact; reading with another tokenizer re-tokenizes the text.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..grid import GridError, StreamGrid
from ..schema import SchemaError, StreamSchema

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GridFileError",
    "ReadReport",
    "grid_from_record",
    "grid_to_record",
    "iter_grids",
    "read_grids",
    "remove_stale_temp_files",
    "tokenizer_fingerprint",
    "write_grids",
]

FORMAT_NAME = "multistream.grid"
FORMAT_VERSION = 1

_fingerprints: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


class GridFileError(ValueError):
    """A grid file or one of its lines is malformed; the message names file and line."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable id of a tokenizer's vocabulary: ``sha256:<hex>`` of its sorted token->id map.

    Two tokenizers with the same fingerprint map text to the same ids for the purposes of grid
    files, whatever directory they were loaded from.
    """
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    value = f"sha256:{digest[:32]}"
    with contextlib.suppress(TypeError):
        _fingerprints[tokenizer] = value
    return value


def grid_to_record(grid: StreamGrid, tokenizer: Any, with_ids: bool = True) -> dict[str, Any]:
    """The JSON-serialisable record of one grid (see ``docs/grid-format.md``)."""
    record: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "schema": grid.schema.to_dict(),
        "num_rows": grid.num_rows,
        "streams": {name: [s.to_dict() for s in segs] for name, segs in grid.to_segments(tokenizer).items()},
    }
    if with_ids:
        record["tokenizer"] = tokenizer_fingerprint(tokenizer)
        record["token_ids"] = {name: grid.column(name).tolist() for name in grid.schema.names}
    if grid.meta:
        record["meta"] = grid.meta
    return record


def grid_from_record(record: Any, tokenizer: Any | None = None, where: str = "record") -> StreamGrid:
    """Inverse of :func:`grid_to_record`.

    Uses the stored ids when there is no tokenizer or its fingerprint matches; otherwise
    re-tokenizes the segments with ``tokenizer``.
    """
    if not isinstance(record, dict):
        raise GridFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if record.get("format") != FORMAT_NAME:
        raise GridFileError(f"{where}: field 'format' must be {FORMAT_NAME!r}, got {record.get('format')!r}")
    version = record.get("version")
    if version != FORMAT_VERSION:
        raise GridFileError(
            f"{where}: format version {version!r} is not supported (this multistream reads "
            f"version {FORMAT_VERSION}); upgrade multistream or re-export the file"
        )
    for key in ("schema", "num_rows", "streams"):
        if key not in record:
            raise GridFileError(f"{where}: missing field {key!r}")
    try:
        schema = StreamSchema.from_dict(record["schema"], where=f"{where}: field 'schema'")
        num_rows = record["num_rows"]
        if not isinstance(num_rows, int) or num_rows < 0:
            raise GridFileError(f"{where}: field 'num_rows' must be a non-negative int, got {num_rows!r}")
        meta = record.get("meta", {})
        ids = record.get("token_ids")
        use_ids = ids is not None and (
            tokenizer is None or record.get("tokenizer") == tokenizer_fingerprint(tokenizer)
        )
        if use_ids:
            if schema.silence_id is None:
                raise GridFileError(f"{where}: 'token_ids' given but the schema has no 'silence_id'")
            if not isinstance(ids, dict):
                raise GridFileError(f"{where}: field 'token_ids' must be an object of id lists per stream")
            columns = {name: _id_column(col, name, num_rows, tokenizer, where) for name, col in ids.items()}
            grid = StreamGrid.from_columns(columns, schema, num_rows=num_rows)
        else:
            if tokenizer is None:
                raise GridFileError(
                    f"{where}: the record has no token ids; pass a tokenizer to tokenize its text"
                )
            schema = schema.with_tokenizer(tokenizer)
            segments = record["streams"]
            if not isinstance(segments, dict):
                raise GridFileError(f"{where}: field 'streams' must be an object of segment lists")
            grid = StreamGrid.from_segments(segments, schema, tokenizer)
            if grid.num_rows < num_rows:
                grid = StreamGrid(
                    torch.cat([grid.ids, StreamGrid.silent_grid(schema, num_rows - grid.num_rows).ids]),
                    schema,
                )
        grid.meta = dict(meta)
        return grid
    except (GridError, SchemaError) as e:
        raise GridFileError(f"{where}: {e}") from None


def _vocab_size(tokenizer: Any) -> int | None:
    with contextlib.suppress(TypeError):
        return len(tokenizer)
    size = getattr(tokenizer, "vocab_size", None)
    return size if isinstance(size, int) else None


def _id_column(col: Any, name: str, num_rows: int, tokenizer: Any | None, where: str) -> list[int]:
    """One stream's token ids as a tensor, checked: whole numbers, ``num_rows`` of them, each
    in ``[0, vocabulary size)`` (the size is known when a tokenizer is given). A bad id would
    otherwise show as a blank cell or crash training at its first step."""
    fix = "re-create the file with multistream convert, or fix the ids"
    if not isinstance(col, list):
        raise GridFileError(
            f"{where}: token_ids of stream {name!r} must be a list of ids, got {type(col).__name__}"
        )
    if len(col) != num_rows:
        raise GridFileError(
            f"{where}: token_ids of stream {name!r} has {len(col)} ids, num_rows is {num_rows}"
        )
    try:
        ids = torch.tensor(col) if col else torch.zeros(0, dtype=torch.long)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        ids = None
    # torch reads [true, 5] as [1, 5]: JSON booleans are caught by identity (True is not 1).
    if ids is None or ids.dtype != torch.long or ids.dim() != 1 or any(v is True or v is False for v in col):
        bad = next((v for v in col if isinstance(v, bool) or not isinstance(v, int)), col[:1])
        raise GridFileError(
            f"{where}: token_ids of stream {name!r} must be whole numbers, got {bad!r}; {fix}"
        ) from None
    if len(ids):
        low, high = int(ids.min()), int(ids.max())
        vocab = _vocab_size(tokenizer) if tokenizer is not None else None
        if low < 0:
            raise GridFileError(f"{where}: token_ids of stream {name!r} holds the negative id {low}; {fix}")
        if vocab is not None and high >= vocab:
            raise GridFileError(
                f"{where}: token_ids of stream {name!r} holds id {high}, outside the tokenizer's "
                f"vocabulary of {vocab} ids (0..{vocab - 1}); {fix}, or read it with its own tokenizer"
            )
    return ids.tolist()


@dataclass
class ReadReport:
    """What :func:`read_grids` kept and skipped (with ``skip_bad=True``)."""

    grids: list[StreamGrid] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def iter_grids(
    path: str | os.PathLike[str],
    tokenizer: Any | None = None,
    skip_bad: bool = False,
    report: ReadReport | None = None,
) -> Iterator[StreamGrid]:
    """Yield the grids of a JSONL file one by one (memory stays flat for large files)."""
    path = Path(path)
    if path.is_dir():
        raise GridFileError(f"{path} is a directory; give a grid JSONL file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise GridFileError(
                        f"{where}: not UTF-8 text (byte {e.start + 1}); a grid file is JSON lines, "
                        "as multistream convert writes them"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GridFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                yield grid_from_record(record, tokenizer, where=where)
            except GridFileError as e:
                if not skip_bad:
                    raise
                if report is not None:
                    report.skipped.append((lineno, str(e)))


def read_grids(
    path: str | os.PathLike[str], tokenizer: Any | None = None, skip_bad: bool = False
) -> ReadReport:
    """Read every grid of a JSONL file; with ``skip_bad`` bad lines are counted, not fatal."""
    report = ReadReport()
    report.grids.extend(iter_grids(path, tokenizer, skip_bad=skip_bad, report=report))
    return report


def _temp_path(path: Path) -> Path:
    """The temporary file a write to ``path`` goes through: next to it (so the final rename is
    atomic), hidden, and named after the writing process, so a later write can tell a leftover
    of a killed run (its process is gone) from a write in progress."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes to ``path`` by processes that no longer run
    (``kill -9``, a power cut) left behind; returns what was removed."""
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = candidate.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def write_grids(
    path: str | os.PathLike[str], grids: Iterable[StreamGrid], tokenizer: Any, with_ids: bool = True
) -> int:
    """Write grids as JSONL atomically (a crash never leaves a half-written file). Returns the count.

    The file is created with the usual permissions (the umask applies). Temporary files left
    by killed earlier writes to the same path are removed first.

    Raises:
        GridFileError: ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise GridFileError(f"{path} is a directory; give a file to write, e.g. {path / 'grids.jsonl'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    count = 0
    tmp = _temp_path(path)
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp forces 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for grid in grids:
                f.write(json.dumps(grid_to_record(grid, tokenizer, with_ids), ensure_ascii=False))
                f.write("\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
