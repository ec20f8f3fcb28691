"""Reader for the IDX format used by MNIST (gzip-compressed or not): a magic number
``0x00 0x00 <dtype code> <ndim>``, ``ndim`` big-endian uint32 sizes, then the row-major payload.
"""
from __future__ import annotations

import gzip
import math
import os
import pathlib
import zlib

import numpy as np

__all__ = ["read_idx"]

# IDX dtype code -> (big-endian numpy dtype, human-readable name).
_DTYPES = {0x08: (np.dtype(">u1"), "uint8"), 0x09: (np.dtype(">i1"), "int8"), 0x0B: (np.dtype(">i2"), "int16"),
           0x0C: (np.dtype(">i4"), "int32"), 0x0D: (np.dtype(">f4"), "float32"), 0x0E: (np.dtype(">f8"), "float64")}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (gzip detected from its first bytes) into a native-order array of the
    header's shape, validating it; ``ndim`` is the number of dimensions it must have. A wrong
    magic, dimension count or payload size, or a corrupt gzip stream, is a ValueError naming it.

    Example:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(f)
        array([7, 8, 9], dtype=uint8)
    """
    path = pathlib.Path(path)
    data = _read_bytes(path)
    dtype, dims = _parse_header(path, data, ndim)
    header_len = 4 + 4 * len(dims)
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header_len
    shape = "x".join(str(d) for d in dims)
    if found < expected:
        raise ValueError(f"{path}: truncated IDX file: header says {shape} = {expected} bytes, found {found}")
    if found > expected:
        raise ValueError(f"{path}: IDX file has {found - expected} unexpected trailing bytes: header says "
                         f"{shape} = {expected} bytes, found {found}")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-order copy


def _read_bytes(path: pathlib.Path) -> bytes:
    """The (decompressed) contents of ``path``."""
    with open(path, "rb") as f:
        raw = f.read()
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
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes); expected IDX magic {want}")
    magic = data[:4]
    code, file_ndim = magic[2], magic[3]
    if magic[:2] != b"\x00\x00" or code not in _DTYPES or file_ndim == 0:
        raise ValueError(f"{path}: not an IDX file: expected IDX magic {want}, got 0x{magic.hex()}")
    if ndim is not None and file_ndim != ndim:
        raise ValueError(f"{path}: expected a {ndim}-D IDX file (magic {want}), "
                         f"got {file_ndim}-D (magic 0x{magic.hex()})")
    header_len = 4 + 4 * file_ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated IDX header: {file_ndim} dimensions need {header_len} bytes, "
                         f"found {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=file_ndim, offset=4))
    return _DTYPES[code][0], dims
