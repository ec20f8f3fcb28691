"""The error raised when a dataset file is missing and cannot be obtained."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(RuntimeError):
    """A dataset file is missing and could not be downloaded (the message names the URLs tried and the fix).

    Example:
        >>> err = DatasetUnavailableError.for_file("/data/mnist/t10k-labels-idx1-ubyte.gz", note="download=False")
        >>> "t10k-labels-idx1-ubyte.gz" in str(err)
        True
    """

    @classmethod
    def for_file(cls, dest: str | os.PathLike[str], attempts: Sequence[tuple[str, str]] = (), *,
                 root: str | os.PathLike[str] | None = None, note: str | None = None) -> DatasetUnavailableError:
        """The error for ``dest`` after ``attempts`` ``[(url, error)]``; ``root``: the data directory."""
        dest = pathlib.Path(dest)
        relative = (dest.relative_to(root).as_posix() if root is not None and dest.is_relative_to(root)
                    else f"{dest.parent.name}/{dest.name}".lstrip("/"))
        lines = [f"Dataset file {dest.name!r} is not in {str(dest.parent)!r} and could not be obtained."]
        lines += ["Tried:", *(f"  - {url}: {error}" for url, error in attempts)] if attempts else []
        lines += [f"No download was attempted ({note})."] if note else []
        current = f" (the data directory is now {str(root)!r})" if root is not None else ""
        lines.append(f"To fix: copy {dest.name!r} to {str(dest)!r}, or set JNN_DATA_DIR to a folder "
                     f"containing {relative!r}{current}, or allow network access (with download=True) "
                     "so that it can be downloaded.")
        return cls("\n".join(lines))
