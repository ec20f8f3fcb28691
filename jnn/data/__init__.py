"""Datasets (MNIST, Tiny Shakespeare, digits, logic gates) as NumPy arrays, files under :func:`data_dir`."""
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

__all__ = ["augment", "grain", "batches", "CharVocab", "lm_windows", "random_windows", "DatasetUnavailableError",
           "and_gate", "data_dir", "download", "load_digits", "load_mnist", "load_tiny_shakespeare", "mnist_available",
           "or_gate", "read_idx", "xor"]
