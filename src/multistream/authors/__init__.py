"""The paper authors' released models and data: Stream-8B (Qwen3), Stream-27B (Qwen3.5 hybrid)
and ``JonasGeiping/stream-data``.

* :func:`load_authors` / :func:`import_authors` / :func:`export_authors`: their checkpoint format.
* :func:`read_authors_data`: their ``dataset.jsonl`` and processed parquet as grids.
* :func:`authors_schema`, :func:`authors_presets`: the fixed 10-stream schema and decoding defaults.
"""

from __future__ import annotations

from .convert import export_authors, import_authors, load_authors
from .format import (
    AUTHORS_SILENCE_ID,
    STREAM_NAMES,
    WARM_START_HEADER,
    AuthorsFormatError,
    authors_presets,
    authors_schema,
    is_authors_dir,
)

__all__ = [
    "AUTHORS_SILENCE_ID",
    "STREAM_NAMES",
    "WARM_START_HEADER",
    "AuthorsFormatError",
    "authors_presets",
    "authors_schema",
    "export_authors",
    "import_authors",
    "is_authors_dir",
    "load_authors",
]
