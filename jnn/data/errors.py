"""Errors raised by the dataset layer."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(RuntimeError):
    """A dataset file is missing and could not be downloaded.

    The message names the destination directory, the missing file, every URL
    that was tried together with its error, and how to fix the problem.

    Example:
        >>> err = DatasetUnavailableError.for_file(
        ...     "/data/mnist/t10k-labels-idx1-ubyte.gz", note="download=False")
        >>> "t10k-labels-idx1-ubyte.gz" in str(err)
        True
    """

    @classmethod
    def for_file(
        cls,
        dest: str | os.PathLike[str],
        attempts: Sequence[tuple[str, str]] = (),
        *,
        root: str | os.PathLike[str] | None = None,
        note: str | None = None,
    ) -> DatasetUnavailableError:
        """Builds the error for one missing file.

        Args:
            dest: Where the file should be.
            attempts: ``(url, error message)`` for each download tried.
            root: The data directory ``dest`` lives under, if known; used to
                tell the user which layout ``JNN_DATA_DIR`` must have.
            note: Why nothing (more) was tried, e.g. ``"download=False"``.

        Returns:
            A ``DatasetUnavailableError`` with a complete, actionable message.
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
        lines.append(
            f"To fix: copy {dest.name!r} to {str(dest)!r}, or set JNN_DATA_DIR to a folder "
            f"containing {relative!r}{current}, or allow network access (with download=True) "
            "so that it can be downloaded."
        )
        return cls("\n".join(lines))


def _relative_to(dest: pathlib.Path, root: str | os.PathLike[str] | None) -> str:
    """Path of ``dest`` inside ``root``; without a root, ``<folder>/<name>``.

    jnn's loaders keep every file at ``<data_dir>/<dataset>/<name>``, so the
    last two components are what a folder in ``JNN_DATA_DIR`` must contain.
    """
    if root is not None:
        try:
            return dest.relative_to(pathlib.Path(root)).as_posix()
        except ValueError:
            pass
    return f"{dest.parent.name}/{dest.name}" if dest.parent.name else dest.name
