"""Cheap checks that saved files are whole, so a damaged file is named before a library fails
deep inside with an error that names neither the file nor the fix.

Each check reads only headers or directories (never the tensors), so it costs milliseconds even
for a full model, and returns why the file is unusable, or None.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

__all__ = ["json_problem", "safetensors_problem", "torch_file_problem"]


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a complete safetensors file (missing, truncated, not one), or None.

    A safetensors file is an 8-byte header length, a JSON header giving every tensor's byte
    range, then the data; the file must reach the end of the last range.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is truncated ({size} bytes, less than a header)"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"{path} is truncated or not a safetensors file (header of {length:,} bytes, file {size:,})"
            header = json.loads(f.read(length))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path} is not a safetensors file (its header is not a tensor table)"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated: {size:,} of {expected:,} bytes"
    return None


def torch_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` file, or None.

    ``torch.save`` writes a zip archive whose directory sits at the very end, so a truncated
    file has no directory; the archive's member list is read, not the tensors.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    except zipfile.BadZipFile:
        return f"{path} is truncated or damaged (not a complete torch.save archive)"
    return None


def json_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a readable JSON file, or None."""
    path = Path(path)
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    except (ValueError, UnicodeDecodeError) as e:
        return f"{path} is not valid JSON ({e})"
    return None
