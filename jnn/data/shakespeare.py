"""Tiny Shakespeare (1,115,394 characters) at ``<data_dir>/tinyshakespeare/input.txt``, checked by SHA-256."""
from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence

from jnn import _checks as checks
from jnn.data import fetch, paths
from jnn.data.errors import DatasetUnavailableError

__all__ = ["SHAKESPEARE_MIRRORS", "SHAKESPEARE_SHA256", "SHAKESPEARE_SIZE", "load_tiny_shakespeare"]

#: Default download URLs (full URLs of ``input.txt``), tried in order.
SHAKESPEARE_MIRRORS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",)
#: SHA-256 and size in bytes of the published ``input.txt``.
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_SIZE = 1_115_394

_SUBDIR = "tinyshakespeare"
_FILE = "input.txt"


def load_tiny_shakespeare(*, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
                          mirrors: Sequence[str] | None = None, verify: bool = True) -> str:
    """The Tiny Shakespeare corpus as one string; ``mirrors``: full URLs of ``input.txt``; ``verify=False``
    reads a present file even if it is not the published one (a downloaded file is always checked).

    Example:
        >>> load_tiny_shakespeare(download=False)[:14]  # doctest: +SKIP
        'First Citizen:'
    """
    fetch.check_source_args("load_tiny_shakespeare", download, mirrors)
    checks.flag("load_tiny_shakespeare", "verify", verify)
    path = (root := paths.resolve_data_dir(data_dir)) / _SUBDIR / _FILE
    if not path.is_file():
        if not download:
            raise DatasetUnavailableError.for_file(path, root=root, note="download=False")
        fetch.download(list(SHAKESPEARE_MIRRORS if mirrors is None else mirrors), path, sha256=SHAKESPEARE_SHA256)
    text = read_text_file(path)
    if verify:
        digest = hashlib.sha256(data := text.encode("utf-8")).hexdigest()
        checks.require(digest == SHAKESPEARE_SHA256, "load_tiny_shakespeare", f"{path} is not the published Tiny "
                       f"Shakespeare file: it has {len(data):,} bytes and sha256 {digest[:16]}..., the published "
                       f"file {SHAKESPEARE_SIZE:,} bytes and sha256 {SHAKESPEARE_SHA256[:16]}... (truncated or "
                       f"changed?); delete it and load again with download=True, or copy the original file there "
                       f"(verify=False reads your own text at this path)")
    return text


def read_text_file(path) -> str:
    """The UTF-8 text of ``path``; an empty or undecodable file is a ValueError naming it."""
    data = pathlib.Path(path).read_bytes()
    checks.require(data, str(path), "the file is empty; delete it and load again with download=True, or copy the "
                   "original file there")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 4]!r}); "
                         f"re-save it as UTF-8, or delete it and load again with download=True") from None
