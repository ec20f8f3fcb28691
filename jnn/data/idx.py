"""Reader for MNIST's IDX format: magic ``00 00 <dtype code> <ndim>``, big-endian uint32 sizes, data."""
from __future__ import annotations

import gzip
import math
import os
import pathlib
import zlib

import numpy as np

from jnn import _checks as checks

__all__ = ["read_idx"]

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}   # IDX code -> dtype
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (gzip detected) into a native-order array of the header's shape, which must
    have ``ndim`` dimensions if given; a malformed file is a ValueError naming it.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(f)
        array([7, 8, 9], dtype=uint8)
    """
    path = pathlib.Path(path)
    data = _read_bytes(path)
    dtype, dims = _parse_header(path, data, ndim)
    header_len = 4 + 4 * len(dims)
    expected, found, shape = math.prod(dims) * dtype.itemsize, len(data) - header_len, "x".join(map(str, dims))
    checks.require(found >= expected, str(path), f"truncated IDX file: header says {shape} = {expected} bytes, "
                   f"found {found}")
    checks.require(found <= expected, str(path), f"IDX file has {found - expected} unexpected trailing bytes: "
                   f"header says {shape} = {expected} bytes, found {found}")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-order copy


def _read_bytes(path: pathlib.Path) -> bytes:
    """The (decompressed) contents of ``path``."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({type(e).__name__}: {e}); "
                         "delete the file so it can be downloaded again") from e


def _parse_header(path: pathlib.Path, data: bytes, ndim: int | None) -> tuple[np.dtype, tuple[int, ...]]:
    """Validates the magic number and returns ``(dtype, dims)``."""
    nn = f"{ndim:02x}" if ndim is not None else "nn"
    want = f"0x0000tt{nn} (tt = dtype code, 08 for uint8; {nn} = number of dimensions)"
    checks.require(len(data) >= 4, str(path), f"too short for an IDX header ({len(data)} bytes); expected IDX "
                   f"magic {want}")
    magic = data[:4]
    code, file_ndim = magic[2], magic[3]
    checks.require(magic[:2] == b"\x00\x00" and code in _DTYPES and file_ndim, str(path), f"not an IDX file: "
                   f"expected IDX magic {want}, got 0x{magic.hex()}")
    checks.require(ndim in (None, file_ndim), str(path), f"expected a {ndim}-D IDX file (magic {want}), got "
                   f"{file_ndim}-D (magic 0x{magic.hex()})")
    header_len = 4 + 4 * file_ndim
    checks.require(len(data) >= header_len, str(path), f"truncated IDX header: {file_ndim} dimensions need "
                   f"{header_len} bytes, found {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=file_ndim, offset=4))
    return np.dtype(_DTYPES[code]), dims
