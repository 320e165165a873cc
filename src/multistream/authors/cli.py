"""The bodies of ``multistream import`` and ``multistream export --format authors``.

Kept here so the command module stays thin and the authors' format stays in one package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer

from .format import AuthorsFormatError, is_authors_dir

__all__ = ["export_authors_command", "import_command"]


def import_command(
    source: Path,
    target: Path,
    tokenizer: str | None,
    start: str,
    limit: int | None,
    fail: Callable[[str], NoReturn],
) -> None:
    """A model directory becomes a saved multi-stream model; data becomes a grid JSONL file."""
    from .convert import import_authors

    if source.is_dir() and is_authors_dir(source):
        if start not in ("warm", "seed"):
            fail(f"--start {start!r} is unknown; choose warm or seed")
        try:
            out = import_authors(source, target, start=start)
        except (AuthorsFormatError, FileExistsError) as e:
            fail(str(e))
        typer.echo(f"saved {out} (10 streams, decoding presets: {start} start)")
        return
    if source.is_dir() and (source / "config.json").is_file():
        fail(
            f"{source} is a Hugging Face model directory but not in the authors' format (no num_channels / "
            "channel_embedding); wrap a base model with --schema instead"
        )
    _import_data(source, target, tokenizer, limit, fail)


def _import_data(
    source: Path, target: Path, tokenizer: str | None, limit: int | None, fail: Callable[[str], NoReturn]
) -> None:
    from ..data.io import write_grids
    from .data import AuthorsDataReport, read_authors_data

    if tokenizer is None:
        fail(
            "importing data needs --tokenizer: the model directory (or tokenizer directory) whose "
            "tokenizer made the ids, e.g. the imported Stream-8B"
        )
    tok = _load_tokenizer(tokenizer, fail)
    import datasets

    datasets.disable_progress_bars()  # one summary line below says what was read
    report = AuthorsDataReport()
    try:
        grids = read_authors_data(source, tok, limit=limit, report=report)
    except AuthorsFormatError as e:
        fail(str(e))
    written = write_grids(target, grids, tok)
    typer.echo(
        f"wrote {written} grids ({report.rows} rows) from {len(report.files)} file(s) to {target}; "
        f"tokenizer {report.tokenizer_fingerprint}, User stream re-tokenised in {report.checked_grids} grids"
    )


def _load_tokenizer(name: str, fail: Callable[[str], NoReturn]):
    from transformers import AutoTokenizer

    from ..model import CONFIG_NAME, MultiStreamLM

    path = Path(name)
    if (path / CONFIG_NAME).is_file():
        return MultiStreamLM.load_tokenizer(path)
    if path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(path)
    from ..loading import BaseModelError, load_tokenizer

    try:
        return load_tokenizer(name)
    except BaseModelError as e:
        fail(str(e))


def export_authors_command(
    source: Path, target: Path, max_shard_size: str | None, fail: Callable[[str], NoReturn]
) -> None:
    from ..model import MultiStreamLM, _is_peft
    from .convert import export_authors

    try:
        model = MultiStreamLM.from_pretrained(source)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if _is_peft(model.base_model):
        # Their format has no adapters: fold the LoRA weights in (the stream embedding is kept).
        model.base_model = model.base_model.merge_and_unload()
    try:
        out = export_authors(
            model, MultiStreamLM.load_tokenizer(source), target, max_shard_size=max_shard_size
        )
    except (AuthorsFormatError, FileExistsError) as e:
        fail(str(e))
    typer.echo(f"saved {out} in the authors' format (bf16{', sharded' if max_shard_size else ''})")
