"""Errors raised by the dataset layer."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(RuntimeError):
    """A dataset file is missing and could not be downloaded; the message names the file, each URL
    tried with its error, and how to fix it.

    Example:
        >>> err = DatasetUnavailableError.for_file(
        ...     "/data/mnist/t10k-labels-idx1-ubyte.gz", note="download=False")
        >>> "t10k-labels-idx1-ubyte.gz" in str(err)
        True
    """

    @classmethod
    def for_file(cls, dest: str | os.PathLike[str], attempts: Sequence[tuple[str, str]] = (), *,
                 root: str | os.PathLike[str] | None = None, note: str | None = None) -> DatasetUnavailableError:
        """The error for one missing file: ``attempts`` are ``(url, error)`` pairs, ``root`` the data
        directory (to show the layout ``JNN_DATA_DIR`` needs), ``note`` why nothing (more) was tried.
        """
        dest = pathlib.Path(dest)
        relative = _relative_to(dest, root)
        lines = [f"Dataset file {dest.name!r} is not in {str(dest.parent)!r} and could not be obtained."]
        if attempts:
            lines.append("Tried:")
            lines.extend(f"  - {url}: {error}" for url, error in attempts)
        if note:
            lines.append(f"No download was attempted ({note}).")
        current = f" (the data directory is now {str(root)!r})" if root is not None else ""
        lines.append(f"To fix: copy {dest.name!r} to {str(dest)!r}, or set JNN_DATA_DIR to a folder "
                     f"containing {relative!r}{current}, or allow network access (with download=True) "
                     "so that it can be downloaded.")
        return cls("\n".join(lines))


def _relative_to(dest: pathlib.Path, root: str | os.PathLike[str] | None) -> str:
    """Path of ``dest`` inside ``root``; without a root, ``<folder>/<name>``."""
    if root is not None:
        try:
            return dest.relative_to(pathlib.Path(root)).as_posix()
        except ValueError:
            pass
    return f"{dest.parent.name}/{dest.name}" if dest.parent.name else dest.name
