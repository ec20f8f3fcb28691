"""Where jnn keeps datasets: ``$JNN_DATA_DIR``, else ``$XDG_CACHE_HOME/jnn``, else ``~/.cache/jnn``
(first set and non-empty), one sub-folder per dataset (``<data_dir>/mnist/``).
"""
from __future__ import annotations

import os
import pathlib

__all__ = ["data_dir", "resolve_data_dir"]


def data_dir() -> pathlib.Path:
    """The root folder in which jnn looks for (and downloads) datasets (not created here).

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
    """``root`` as a path, or :func:`data_dir` when ``root`` is None.

    Example:
        >>> str(resolve_data_dir("/srv/data"))
        '/srv/data'
    """
    if root is None:
        return data_dir()
    return pathlib.Path(root).expanduser()
