"""Where jnn keeps datasets: one sub-folder per dataset (``<data_dir>/mnist/``) of :func:`data_dir`."""
from __future__ import annotations

import os
import pathlib

__all__ = ["data_dir", "resolve_data_dir"]


def data_dir() -> pathlib.Path:
    """The datasets folder: ``$JNN_DATA_DIR``, else ``$XDG_CACHE_HOME/jnn``, else ``~/.cache/jnn``.

    Example:
        >>> import os
        >>> env = os.environ.get("JNN_DATA_DIR")
        >>> data_dir() == pathlib.Path(env) if env else data_dir().name == "jnn"
        True
    """
    env, xdg = os.environ.get("JNN_DATA_DIR"), os.environ.get("XDG_CACHE_HOME")
    if env:
        return pathlib.Path(env).expanduser()
    return (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "jnn"


def resolve_data_dir(root: str | os.PathLike[str] | None) -> pathlib.Path:
    """``root`` as a path, or :func:`data_dir` when ``root`` is None.

    Example:
        >>> str(resolve_data_dir("/srv/data"))
        '/srv/data'
    """
    return data_dir() if root is None else pathlib.Path(root).expanduser()
