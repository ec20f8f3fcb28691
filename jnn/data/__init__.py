"""Datasets for jnn: MNIST, Tiny Shakespeare, sklearn digits and logic gates.

Loaders return numpy arrays (or a string); files are kept under
:func:`data_dir` (``$JNN_DATA_DIR``, else ``$XDG_CACHE_HOME/jnn`` or
``~/.cache/jnn``) and downloaded, verified and atomically written on demand.

Example:
    >>> from jnn import data
    >>> x, y = data.xor()
    >>> x.shape, y.shape
    ((4, 2), (4, 1))
"""
from jnn.data import augment, grain
from jnn.data.batching import batches
from jnn.data.errors import DatasetUnavailableError
from jnn.data.fetch import download
from jnn.data.idx import read_idx
from jnn.data.mnist import load_mnist, mnist_available
from jnn.data.paths import data_dir
from jnn.data.shakespeare import load_tiny_shakespeare
from jnn.data.text import CharVocab, lm_windows, random_windows
from jnn.data.small import and_gate, load_digits, or_gate, xor

__all__ = [
    "augment",
    "grain",
    "batches",
    "CharVocab",
    "lm_windows",
    "random_windows",
    "DatasetUnavailableError",
    "and_gate",
    "data_dir",
    "download",
    "load_digits",
    "load_mnist",
    "load_tiny_shakespeare",
    "mnist_available",
    "or_gate",
    "read_idx",
    "xor",
]
