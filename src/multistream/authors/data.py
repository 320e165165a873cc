"""The authors' training data (``JonasGeiping/stream-data``) as grids.

Two forms exist (spec §2.3, §4.2):

* ``dataset.jsonl``: one conversation per line, ``{"num_rows": R, "token_ids": [[R ids] x 10]}``,
  column-major in stream order;
* the hub dataset's ``processed`` config: parquet with one column per stream name (``User``,
  ``Output``, ...), each a list of R token ids.

Both are read with the Hugging Face ``datasets`` library (what the authors' users use). The files
carry token ids but no record of the tokenizer that made them, and the 8B model used Qwen3's
while the data card mentions Qwen3.5's, so :func:`read_authors_data` checks the tokenizer before
trusting any id: the silence id must be the tokenizer's ``" -"``, every id must be in its
vocabulary, and the User column (made as ``encode(" " + word)`` per word) must re-tokenise to
exactly the same ids. A wrong tokenizer fails with the grid and the first differing token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..grid import StreamGrid
from .format import AUTHORS_SILENCE_ID, STREAM_NAMES, AuthorsFormatError, authors_schema

__all__ = ["AuthorsDataReport", "authors_data_files", "read_authors_data"]


@dataclass
class AuthorsDataReport:
    """What :func:`read_authors_data` read and checked."""

    files: list[str] = field(default_factory=list)
    grids: int = 0
    rows: int = 0
    checked_grids: int = 0
    tokenizer_fingerprint: str = ""


def authors_data_files(source: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """``(kind, files)`` for a ``dataset.jsonl``, a parquet file, or a dataset directory (a hub
    snapshot: ``processed/*.parquet`` preferred, else ``*.jsonl``)."""
    path = Path(source)
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet", [str(path)]
        if path.suffix in (".jsonl", ".json"):
            return "json", [str(path)]
        raise AuthorsFormatError(f"{path}: expected a .jsonl or .parquet file of the authors' data")
    if path.is_dir():
        processed = sorted(path.glob("processed/*.parquet")) or sorted(path.glob("**/processed/**/*.parquet"))
        if processed:
            return "parquet", [str(p) for p in processed]
        parquet = [p for p in sorted(path.rglob("*.parquet")) if "raw" not in p.parts]
        if parquet:
            return "parquet", [str(p) for p in parquet]
        jsonl = sorted(path.rglob("*.jsonl"))
        if jsonl:
            return "json", [str(p) for p in jsonl]
    raise AuthorsFormatError(
        f"{path}: no dataset.jsonl or processed parquet found (download the 'processed' config of "
        "JonasGeiping/stream-data)"
    )


def _columns(record: dict[str, Any], kind: str, where: str) -> list[list[int]]:
    if kind == "json":
        columns = record.get("token_ids")
        if not isinstance(columns, list) or len(columns) != len(STREAM_NAMES):
            got = len(columns) if isinstance(columns, list) else type(columns).__name__
            raise AuthorsFormatError(
                f"{where}: 'token_ids' must hold {len(STREAM_NAMES)} columns (one per stream), got {got}"
            )
    else:
        missing = [n for n in STREAM_NAMES if n not in record]
        if missing:
            raise AuthorsFormatError(
                f"{where}: columns {missing} are missing; the processed config has one column per stream "
                f"({', '.join(STREAM_NAMES)}); the 'raw' config holds text, use 'processed'"
            )
        columns = [record[n] for n in STREAM_NAMES]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise AuthorsFormatError(f"{where}: stream columns have different lengths {sorted(lengths)}")
    num_rows = record.get("num_rows")
    if num_rows is not None and num_rows != lengths.pop():
        raise AuthorsFormatError(
            f"{where}: num_rows is {num_rows} but the columns hold {len(columns[0])} rows"
        )
    for c, column in enumerate(columns):
        if any(isinstance(x, str) for x in column[:1]):
            raise AuthorsFormatError(
                f"{where}: stream {STREAM_NAMES[c]} holds text, not token ids; use the 'processed' config"
            )
    return columns


def _retokenises(user_ids: list[int], silence: int, tokenizer: Any) -> tuple[bool, str]:
    ids = [t for t in user_ids if t != silence]
    if not ids:
        return True, ""
    text = tokenizer.decode(ids)
    again: list[int] = []
    for word in text.split():
        again.extend(tokenizer.encode(" " + word, add_special_tokens=False))
    if again == ids:
        return True, ""
    at = next(
        (i for i, (a, b) in enumerate(zip(ids, again, strict=False)) if a != b), min(len(ids), len(again))
    )
    return (
        False,
        f"User token {at}: the data has {ids[at : at + 3]}, this tokenizer gives {again[at : at + 3]}",
    )


def read_authors_data(
    source: str | os.PathLike[str],
    tokenizer: Any,
    limit: int | None = None,
    check_grids: int = 32,
    expected_fingerprint: str | None = None,
    report: AuthorsDataReport | None = None,
) -> list[StreamGrid]:
    """Read the authors' ``dataset.jsonl`` or processed parquet as grids of the authors' schema.

    Args:
        source: a ``.jsonl``/``.parquet`` file or a dataset directory.
        tokenizer: the tokenizer of the model that will train on the grids (the one the data
            was made with; checked).
        limit: read at most this many conversations.
        check_grids: re-tokenise the User column of this many grids (0 = skip that check).
        expected_fingerprint: fail unless the tokenizer has this
            :func:`~multistream.data.io.tokenizer_fingerprint` (pin the exact tokenizer).
        report: filled with counts and the tokenizer fingerprint.

    Raises:
        AuthorsFormatError: a malformed record (file and record named) or a tokenizer that does
            not match the data.
    """
    from datasets import Dataset

    from ..data.io import tokenizer_fingerprint

    report = report if report is not None else AuthorsDataReport()
    fingerprint = tokenizer_fingerprint(tokenizer)
    report.tokenizer_fingerprint = fingerprint
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise AuthorsFormatError(
            f"the tokenizer's fingerprint is {fingerprint}, the data expects {expected_fingerprint}; "
            "load the tokenizer the data was made with"
        )
    schema = authors_schema().with_tokenizer(tokenizer)
    if schema.silence_id != AUTHORS_SILENCE_ID:
        raise AuthorsFormatError(
            f"this tokenizer encodes ' -' as id {schema.silence_id}, but the authors' data uses "
            f"{AUTHORS_SILENCE_ID} for silence: it is not a Qwen3 / Qwen3.5 tokenizer"
        )
    vocab = len(tokenizer)
    kind, files = authors_data_files(source)
    report.files = files
    grids: list[StreamGrid] = []
    for file in files:
        dataset = (
            Dataset.from_json(file, keep_in_memory=True)
            if kind == "json"
            else Dataset.from_parquet(file, keep_in_memory=True)
        )
        for i, record in enumerate(dataset):
            if limit is not None and len(grids) >= limit:
                break
            where = f"{file}: record {i}" if kind == "parquet" else f"{file}:{i + 1}"
            columns = _columns(record, kind, where)
            ids = torch.tensor(columns, dtype=torch.long).T.contiguous()  # [10, R] -> [R, 10]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise AuthorsFormatError(
                    f"{where}: token ids span [{int(ids.min())}, {int(ids.max())}] but the tokenizer has "
                    f"{vocab} tokens: the data was made with another tokenizer"
                )
            if report.checked_grids < check_grids:
                ok, detail = _retokenises(columns[0], AUTHORS_SILENCE_ID, tokenizer)
                if not ok:
                    raise AuthorsFormatError(
                        f"{where}: the User stream does not re-tokenise with this tokenizer ({detail}); the "
                        "data was made with another tokenizer (Stream-8B: Qwen3's; Stream-27B: Qwen3.5's)"
                    )
                report.checked_grids += 1
            grids.append(StreamGrid(ids, schema, meta={"source": "authors", "file": file, "index": i}))
            report.rows += ids.shape[0]
    report.grids = len(grids)
    return grids
