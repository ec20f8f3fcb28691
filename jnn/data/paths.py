"""Where jnn keeps datasets on disk.

The data directory is chosen, in order of precedence, from:

1. ``$JNN_DATA_DIR`` if it is set and non-empty;
2. ``$XDG_CACHE_HOME/jnn`` if ``$XDG_CACHE_HOME`` is set and non-empty;
3. ``~/.cache/jnn`` otherwise.

Each dataset lives in its own sub-folder, e.g. ``<data_dir>/mnist/`` and
``<data_dir>/tinyshakespeare/``. To use data on a machine without internet
access, point ``JNN_DATA_DIR`` at a folder with that layout.
"""
from __future__ import annotations

import os
import pathlib

__all__ = ["data_dir", "resolve_data_dir"]


def data_dir() -> pathlib.Path:
    """Returns the root folder in which jnn looks for (and downloads) datasets.

    The folder is not created; loaders create the sub-folders they need when
    they download something.

    Returns:
        The data directory as a ``pathlib.Path`` (``~`` expanded).

    Example:
        >>> import os
        >>> folder = data_dir()  # e.g. PosixPath('/home/me/.cache/jnn')
        >>> env = os.environ.get("JNN_DATA_DIR")
        >>> folder == pathlib.Path(env) if env else folder.name == "jnn"
        True
    """
    env = os.environ.get("JNN_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "jnn"


def resolve_data_dir(root: str | os.PathLike[str] | None) -> pathlib.Path:
    """Returns ``root`` as a path, or :func:`data_dir` when ``root`` is None.

    Args:
        root: An explicit data directory, or None for the default.

    Returns:
        The data directory to use.

    Example:
        >>> str(resolve_data_dir("/srv/data"))
        '/srv/data'
    """
    if root is None:
        return data_dir()
    return pathlib.Path(root).expanduser()
