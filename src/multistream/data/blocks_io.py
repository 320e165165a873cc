"""Layout B files (``multistream.blocks``, version 1): one example per JSON line.

A record keeps each block's tokenizer-agnostic text (role and text pieces) and, optionally, the
exact token ids with the fingerprint of the tokenizer that made them, as grid files do
(:mod:`~multistream.data.io`). Reading with the same tokenizer (or none) uses the ids and is
bit-exact; reading with another tokenizer re-tokenises the text with its ChatML framing. The
format is documented in ``docs/grid-format.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout.blocks import BlocksExample, BlocksExampleError
from .io import GridFileError, tokenizer_fingerprint
from .tokenize import tokenize_live_text

__all__ = [
    "BLOCKS_FORMAT_NAME",
    "BLOCKS_FORMAT_VERSION",
    "BlockText",
    "BlocksReadReport",
    "BlocksRecord",
    "Piece",
    "chatml_ids",
    "iter_blocks",
    "read_blocks",
    "record_from_json",
    "record_to_json",
    "write_blocks",
]

BLOCKS_FORMAT_NAME = "multistream.blocks"
BLOCKS_FORMAT_VERSION = 1
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Piece:
    """A run of block text and how it becomes tokens.

    Args:
        text: the text.
        live: tokenised as live input (``" " + word`` per whitespace-separated word, as a live
            session tokenises what it is fed); otherwise as generated text, one BPE piece.
    """

    text: str
    live: bool = False

    def encode(self, tokenizer: Any) -> list[int]:
        if self.live:
            return tokenize_live_text(self.text, tokenizer)
        return list(tokenizer.encode(self.text, add_special_tokens=False))

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "live": True} if self.live else {"text": self.text}


@dataclass(frozen=True)
class BlockText:
    """The text of one ChatML block: ``<|im_start|>role\\n`` + pieces + ``<|im_end|>``."""

    role: str
    pieces: tuple[Piece, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    def encode(self, tokenizer: Any) -> tuple[list[int], int]:
        """``(ids, prefix length)`` of the framed block for ``tokenizer``."""
        prefix, end = chatml_ids(self.role, tokenizer)
        return [*prefix, *(t for p in self.pieces for t in p.encode(tokenizer)), end], len(prefix)


def chatml_ids(role: str, tokenizer: Any) -> tuple[list[int], int]:
    """The ChatML prefix ids of ``role`` and the ``<|im_end|>`` id for ``tokenizer``.

    Raises:
        GridFileError: the tokenizer has no single ``<|im_start|>``/``<|im_end|>`` token.
    """
    ids = [tokenizer.convert_tokens_to_ids(special) for special in (IM_START, IM_END)]
    unk = getattr(tokenizer, "unk_token_id", None)
    for special, i in zip((IM_START, IM_END), ids, strict=True):
        if i is None or (unk is not None and i == unk):
            raise GridFileError(
                f"the tokenizer has no {special} token; Layout B frames every block in ChatML, so "
                "use a tokenizer that has it (e.g. smollm2-135m, Qwen)"
            )
    return [ids[0], *tokenizer.encode(f"{role}\n", add_special_tokens=False)], ids[1]


@dataclass
class BlocksRecord:
    """One Layout B example: its block texts and the token ids training uses.

    Args:
        system, user: text of stream 0 and stream 1.
        heads: text of every assistant head (stream ``2 + h``).
        example: the tokenised example (:class:`~multistream.layout.blocks.BlocksExample`);
            its ``meta`` is the record's meta.
    """

    system: BlockText
    user: BlockText
    heads: list[BlockText]
    example: BlocksExample

    @classmethod
    def tokenize(
        cls,
        system: BlockText,
        user: BlockText,
        heads: Sequence[BlockText],
        tokenizer: Any,
        meta: dict[str, Any] | None = None,
        include_im_end_in_cross_channel: bool = True,
        allow_assistant_cross_channel: bool = True,
    ) -> BlocksRecord:
        """Frame and tokenise the texts; every head token after its prefix is a target."""
        sys_ids, _ = system.encode(tokenizer)
        user_ids, _ = user.encode(tokenizer)
        encoded = [h.encode(tokenizer) for h in heads]
        example = BlocksExample(
            system=sys_ids,
            user=user_ids,
            heads=[ids for ids, _ in encoded],
            targets_from=[n for _, n in encoded],
            include_im_end_in_cross_channel=include_im_end_in_cross_channel,
            allow_assistant_cross_channel=allow_assistant_cross_channel,
            meta=dict(meta or {}),
        )
        return cls(system, user, list(heads), example)

    @property
    def meta(self) -> dict[str, Any]:
        return self.example.meta


def record_to_json(record: BlocksRecord, tokenizer: Any, with_ids: bool = True) -> dict[str, Any]:
    """The JSON object of one record (see ``docs/grid-format.md``)."""
    ex = record.example
    blocks = [record.system, record.user, *record.heads]
    out: dict[str, Any] = {
        "format": BLOCKS_FORMAT_NAME,
        "version": BLOCKS_FORMAT_VERSION,
        "blocks": [{"role": b.role, "text": [p.to_json() for p in b.pieces]} for b in blocks],
        "include_im_end_in_cross_channel": ex.include_im_end_in_cross_channel,
        "allow_assistant_cross_channel": ex.allow_assistant_cross_channel,
    }
    if with_ids:
        out["tokenizer"] = tokenizer_fingerprint(tokenizer)
        out["token_ids"] = [ex.system, ex.user, *ex.heads]
        out["targets_from"] = list(ex.targets_from)
    if ex.meta:
        out["meta"] = ex.meta
    return out


def _block(value: Any, where: str) -> BlockText:
    if not isinstance(value, dict) or not isinstance(value.get("text"), list):
        raise GridFileError(f"{where}: expected {{'role': ..., 'text': [{{'text': ...}}, ...]}}")
    role = value.get("role")
    if role not in ROLES:
        raise GridFileError(f"{where}: field 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    pieces = []
    for i, p in enumerate(value["text"]):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise GridFileError(f"{where}.text[{i}]: expected {{'text': str, 'live': bool (optional)}}")
        pieces.append(Piece(p["text"], bool(p.get("live", False))))
    return BlockText(role, tuple(pieces))


def record_from_json(data: Any, tokenizer: Any | None = None, where: str = "record") -> BlocksRecord:
    """Inverse of :func:`record_to_json`: stored ids when the tokenizer matches (or is None),
    otherwise the texts re-tokenised with ``tokenizer``.

    Raises:
        GridFileError: naming ``where`` and the field.
    """
    if not isinstance(data, dict):
        raise GridFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != BLOCKS_FORMAT_NAME:
        raise GridFileError(
            f"{where}: field 'format' must be {BLOCKS_FORMAT_NAME!r}, got {data.get('format')!r}"
            + (
                " (a Layout A grid file: train it with layout: grid)"
                if data.get("format") == "multistream.grid"
                else ""
            )
        )
    if data.get("version") != BLOCKS_FORMAT_VERSION:
        raise GridFileError(
            f"{where}: format version {data.get('version')!r} is not supported (this multistream reads "
            f"version {BLOCKS_FORMAT_VERSION}); upgrade multistream or re-export the file"
        )
    raw = data.get("blocks")
    if not isinstance(raw, list) or len(raw) < 3:
        raise GridFileError(f"{where}: field 'blocks' must list system, user and >= 1 assistant blocks")
    blocks = [_block(b, f"{where}: blocks[{i}]") for i, b in enumerate(raw)]
    expected = ["system", "user"] + ["assistant"] * (len(blocks) - 2)
    if [b.role for b in blocks] != expected:
        raise GridFileError(
            f"{where}: field 'blocks' roles are {[b.role for b in blocks]}, expected {expected}"
        )
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise GridFileError(f"{where}: field 'meta' must be an object")
    flags = {
        k: bool(data.get(k, True))
        for k in ("include_im_end_in_cross_channel", "allow_assistant_cross_channel")
    }
    ids = data.get("token_ids")
    use_ids = ids is not None and (
        tokenizer is None or data.get("tokenizer") == tokenizer_fingerprint(tokenizer)
    )
    try:
        if use_ids:
            if not isinstance(ids, list) or len(ids) != len(blocks):
                raise GridFileError(
                    f"{where}: field 'token_ids' must hold one id list per block ({len(blocks)})"
                )
            example = BlocksExample(
                system=ids[0], user=ids[1], heads=ids[2:], targets_from=data.get("targets_from", []),
                meta=dict(meta), **flags,
            )  # fmt: skip
            return BlocksRecord(blocks[0], blocks[1], blocks[2:], example)
        if tokenizer is None:
            raise GridFileError(
                f"{where}: the record has no token ids; pass a tokenizer to tokenize its text"
            )
        return BlocksRecord.tokenize(blocks[0], blocks[1], blocks[2:], tokenizer, dict(meta), **flags)
    except BlocksExampleError as e:
        raise GridFileError(f"{where}: {e}") from None


@dataclass
class BlocksReadReport:
    """What :func:`read_blocks` kept and skipped (with ``skip_bad=True``)."""

    records: list[BlocksRecord] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def examples(self) -> list[BlocksExample]:
        return [r.example for r in self.records]


def iter_blocks(
    path: str | os.PathLike[str],
    tokenizer: Any | None = None,
    skip_bad: bool = False,
    report: BlocksReadReport | None = None,
) -> Iterator[BlocksRecord]:
    """Yield the records of a Layout B JSONL file one by one."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GridFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                yield record_from_json(data, tokenizer, where=where)
            except GridFileError as e:
                if not skip_bad:
                    raise
                if report is not None:
                    report.skipped.append((lineno, str(e)))


def read_blocks(
    path: str | os.PathLike[str], tokenizer: Any | None = None, skip_bad: bool = False
) -> BlocksReadReport:
    """Read every record of a Layout B JSONL file (``.examples`` for training)."""
    report = BlocksReadReport()
    report.records.extend(iter_blocks(path, tokenizer, skip_bad=skip_bad, report=report))
    return report


def write_blocks(
    path: str | os.PathLike[str], records: Iterable[BlocksRecord], tokenizer: Any, with_ids: bool = True
) -> int:
    """Write records as JSONL atomically (a crash never leaves a half-written file). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record_to_json(record, tokenizer, with_ids), ensure_ascii=False))
                f.write("\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
