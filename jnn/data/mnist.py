"""MNIST digits in ``<data_dir>/mnist/``, downloaded and MD5-checked if missing, shapes checked."""
from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jnn import _checks as checks
from jnn.data import fetch, paths
from jnn.data.errors import DatasetUnavailableError
from jnn.data.idx import read_idx

__all__ = ["MNIST_MD5", "MNIST_MIRRORS", "load_mnist", "mnist_available", "read_mnist"]

#: Default download mirrors, tried in order.
MNIST_MIRRORS: tuple[str, ...] = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                                  "https://storage.googleapis.com/cvdf-datasets/mnist/",
                                  "http://yann.lecun.com/exdb/mnist/")

#: Official MD5 checksums, checked for every file the loader downloads.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SPLITS = {"train": "train", "test": "t10k"}
_SUBDIR = "mnist"
_NUM_CLASSES = 10


def _file_names(split: str, where: str = "load_mnist") -> tuple[str, str]:
    checks.require(isinstance(split, str) and split in _SPLITS, where, f"unknown MNIST split {split!r}; expected one "
                   f"of {sorted(_SPLITS)}")
    return f"{_SPLITS[split]}-images-idx3-ubyte.gz", f"{_SPLITS[split]}-labels-idx1-ubyte.gz"


def mnist_available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether all four MNIST files are present in ``<data_dir>/mnist/`` (never downloads).

    Example:
        >>> import tempfile
        >>> mnist_available(tempfile.mkdtemp())
        False
    """
    folder = paths.resolve_data_dir(data_dir) / _SUBDIR
    return all((folder / name).is_file() for split in _SPLITS for name in _file_names(split))


def load_mnist(split: str = "train", *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
               mirrors: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST split (``"train"`` or ``"test"``): float32 images ``(N, 28, 28, 1)`` in ``[0, 1]``, int32
    labels ``(N,)``; missing files downloaded from ``mirrors`` (default :data:`MNIST_MIRRORS`) if ``download``.

    Example:
        >>> [a.shape for a in load_mnist("test", download=False)]  # doctest: +SKIP
        [(10000, 28, 28, 1), (10000,)]
    """
    images, labels = read_mnist(split, data_dir=data_dir, download=download, mirrors=mirrors, where="load_mnist")
    return (images.astype(np.float32) / np.float32(255.0))[..., None], labels.astype(np.int32)


def read_mnist(split: str = "train", *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
               mirrors: Sequence[str] | None = None, where: str = "read_mnist") -> tuple[np.ndarray, np.ndarray]:
    """One MNIST split as stored: uint8 images ``(N, 28, 28)`` and labels ``(N,)`` (see :func:`load_mnist`).

    Example:
        >>> read_mnist("test", download=False)[0].shape  # doctest: +SKIP
        (10000, 28, 28)
    """
    names = _file_names(split, where)
    fetch.check_source_args(where, download, mirrors)
    root = paths.resolve_data_dir(data_dir)
    image_path, label_path = (_ensure(root / _SUBDIR / name, root=root, download=download, mirrors=mirrors)
                              for name in names)
    images, labels = read_idx(image_path, ndim=3), read_idx(label_path, ndim=1)
    _validate(images, labels, image_path, label_path)
    return images, labels


def _ensure(path: pathlib.Path, *, root: pathlib.Path, download: bool, mirrors: Sequence[str] | None) -> pathlib.Path:
    """Returns ``path``, downloading and checksumming it first if it is missing."""
    if path.is_file():
        return path
    if not download:
        raise DatasetUnavailableError.for_file(path, root=root, note="download=False")
    urls = [base.rstrip("/") + "/" + path.name for base in (MNIST_MIRRORS if mirrors is None else mirrors)]
    return fetch.download(urls, path, md5=MNIST_MD5[path.name])


def _validate(images: np.ndarray, labels: np.ndarray, image_path: pathlib.Path, label_path: pathlib.Path) -> None:
    """Checks dtypes, shapes, counts and label range; raises ValueError naming the files."""
    for path, array in ((image_path, images), (label_path, labels)):   # float files would be scaled twice
        checks.require(array.dtype == np.uint8, str(path), f"expected uint8 values (IDX type 0x08), as in the "
                       f"published MNIST files, got {array.dtype}; replace the file with the original (delete it "
                       f"and load again with download=True)")
    checks.require(images.shape[1:] == (28, 28), str(image_path), f"expected images of shape (N, 28, 28), got "
                   f"{images.shape}")
    checks.require(images.shape[0] == labels.shape[0], "MNIST image/label count mismatch", f"{image_path} has "
                   f"{images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        bad = np.unique(labels[(labels < 0) | (labels >= _NUM_CLASSES)])
        raise ValueError(f"{label_path}: labels must be in 0..{_NUM_CLASSES - 1}, found {bad[:10].tolist()}")
