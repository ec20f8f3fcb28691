"""Safe file writing: whole or not at all, and never over something the user saved."""
from __future__ import annotations

import os
import pathlib
import tempfile

__all__ = ["atomic_write", "fresh_path"]


def atomic_write(path, data: bytes | str, *, overwrite: bool = False) -> pathlib.Path:
    """Writes ``data`` to ``path`` through a temporary file in the same directory and an
    atomic rename, so a crash leaves either the old file or the new one, never half of one.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fresh_path(path) -> pathlib.Path:
    """``path`` if nothing is there yet, else ``name-2.ext``, ``name-3.ext``, ... (first free)."""
    path = pathlib.Path(path)
    candidate, i = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        i += 1
    return candidate
