"""Misuse of the data layer is refused up front, naming the function, what it expected and what
it got: Grain pipelines and sources, write_npy, and the dataset loaders' arguments."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

grain = pytest.importorskip("grain")
G = jnn.data.grain
SOURCE = G.ArraySource(np.arange(10))


def _exactly(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("kw,error,message", [
    ({"source": 5}, TypeError, "source must support len() and indexing (e.g. jnn.data.grain.ArraySource), got int"),
    ({"num_epochs": 0}, ValueError, "num_epochs must be a positive integer or None, got 0"),
    ({"num_epochs": 1.5}, ValueError, "num_epochs must be a positive integer or None, got 1.5"),
    ({"num_epochs": True}, ValueError, "num_epochs must be a positive integer or None, got True"),
    ({"shuffle": "no"}, ValueError, "shuffle must be True or False, got 'no'"),
    ({"drop_remainder": None}, ValueError, "drop_remainder must be True or False, got None"),
    ({"worker_count": -1}, ValueError, "worker_count must be an integer >= 0, got -1"),
    ({"worker_count": True}, ValueError, "worker_count must be an integer >= 0, got True"),
    ({"read_threads": -1}, ValueError, "read_threads must be an integer >= 0, got -1"),
    ({"prefetch": -1}, ValueError, "prefetch must be an integer >= 0, got -1"),
    ({"transform": 3}, TypeError, "transform must be a function or None, got int"),
    ({"random_transform": "flip"}, TypeError, "random_transform must be a function or None, got str"),
])
def test_pipeline_arguments(kw, error, message):
    with pytest.raises(error, match=_exactly("jnn.data.grain.pipeline: " + message)):
        G.pipeline(**{"source": SOURCE, "batch_size": 2, "seed": 0, **kw})


def test_pipeline_accepts_what_it_documents():
    pipe = G.pipeline(SOURCE, batch_size=2, seed=np.int64(3), num_epochs=np.int32(1), shuffle=False, prefetch=0)
    assert [b.tolist() for b in pipe.dataset] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.mark.parametrize("args,kw,error,message", [
    (((np.zeros(3), np.zeros(4)),), {}, TypeError, "ArraySource: each array must be a NumPy array, memmap or "
     "NpySource with records on axis 0; argument 0 is a tuple (pass several arrays as separate "
     "arguments: ArraySource(x, y))"),
    ((np.float32(3),), {}, TypeError, "ArraySource: each array must be a NumPy array, memmap or NpySource with "
     "records on axis 0; argument 0 is float32 of shape ()"),
    ((np.zeros(3), np.zeros(4)), {}, ValueError, "ArraySource: the arrays must have the same number of records, "
     "got [3, 4]"),
    ((np.zeros(3),), {"transform": 3}, TypeError, "ArraySource: transform must be a function or None, got int"),
])
def test_array_source_arguments(args, kw, error, message):
    with pytest.raises(error, match=_exactly(message)):
        G.ArraySource(*args, **kw)


def test_write_npy_never_replaces_a_file_unless_asked(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(3))
    with pytest.raises(FileExistsError, match=_exactly(f"write_npy: {path} exists; pass overwrite=True to replace it")):
        G.write_npy(path, (2,), np.int32, [np.ones(2, np.int32)])
    np.testing.assert_array_equal(np.load(path), np.arange(3))          # untouched
    with pytest.raises(ValueError, match="write_npy: the chunks hold 1 records, the shape says 2"):
        G.write_npy(path, (2,), np.int32, [np.ones(1, np.int32)], overwrite=True)
    np.testing.assert_array_equal(np.load(path), np.arange(3))          # a failed rewrite leaves it as it was
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]                    # and no temporary file
    G.write_npy(path, (2,), np.int32, [np.ones(2, np.int32)], overwrite=True)
    np.testing.assert_array_equal(np.load(path), [1, 1])


@pytest.mark.parametrize("shape", [(-1, 3), (), 5, (2.0, 3), (True, 3)])
def test_write_npy_shape(tmp_path, shape):
    message = f"write_npy: shape must be a tuple of non-negative integers (records first), got {shape!r}"
    with pytest.raises(ValueError, match=_exactly(message)):
        G.write_npy(tmp_path / "a.npy", shape, np.float32, [])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("call,message", [
    (lambda: jnn.data.load_mnist("valid"), "load_mnist: unknown MNIST split 'valid'; expected one of ['test', 'train']"),
    (lambda: jnn.data.load_mnist(["train"]),
     "load_mnist: unknown MNIST split ['train']; expected one of ['test', 'train']"),
    (lambda: jnn.data.load_mnist("test", download="no"), "load_mnist: download must be True or False, got 'no'"),
    (lambda: jnn.data.load_mnist("test", mirrors="https://example.org/mnist/"),
     "load_mnist: mirrors must be a list of URL strings (or None), got 'https://example.org/mnist/'"),
    (lambda: jnn.data.load_tiny_shakespeare(mirrors="https://example.org/input.txt"),
     "load_tiny_shakespeare: mirrors must be a list of URL strings (or None), got 'https://example.org/input.txt'"),
    (lambda: jnn.data.load_tiny_shakespeare(download=1), "load_tiny_shakespeare: download must be True or False, "
     "got 1"),
    (lambda: G.mnist_source("valid"), "mnist_source: unknown MNIST split 'valid'; expected one of ['test', 'train']"),
    (lambda: G.mnist_source("test", download=None), "mnist_source: download must be True or False, got None"),
])
def test_dataset_loader_arguments(call, message, tmp_path, monkeypatch):
    monkeypatch.setenv("JNN_DATA_DIR", str(tmp_path))   # nothing there: no file is read or fetched first
    with pytest.raises(ValueError, match=_exactly(message)):
        call()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("call,error,message", [
    (lambda: list(jnn.data.batches(np.arange(6), batch_size=3, drop_remainder="yes")), ValueError,
     "batches: drop_remainder must be True or False, got 'yes'"),
    (lambda: list(jnn.data.batches(np.arange(6), batch_size=3, key=0)), TypeError,
     "batches: key must be one PRNG key (jax.random.key(0)) or None, got 0"),
    (lambda: list(jnn.data.batches(np.arange(6), batch_size=3, key=jax.random.split(jax.random.key(0), 2))),
     TypeError, "batches: key must be one PRNG key (jax.random.key(0)) or None, got key<fry>[2]"),
    (lambda: jnn.data.augment.translate(jnp.zeros((4, 4, 1)), (1, 2, 3)), ValueError,
     "translate: shift must be a pair (dy, dx), got (1, 2, 3)"),
    (lambda: jnn.data.augment.affine(jnp.zeros((4, 4)), 10.0), ValueError,
     "affine: expected one image of shape [H, W, C] (vmap it over a batch), got shape (4, 4)"),
    (lambda: jnn.data.augment.augment_layer("flip", name="aug"), TypeError,
     "aug: expected augmentations (key, images) -> images, got str"),
])
def test_batches_and_augmentation_arguments(call, error, message):
    with pytest.raises(error, match=_exactly(message)):
        call()


def test_batches_takes_typed_and_legacy_keys_alike():
    typed = [b[0].tolist() for b in jnn.data.batches(np.arange(7), batch_size=3, key=jax.random.key(0))]
    legacy = [b[0].tolist() for b in jnn.data.batches(np.arange(7), batch_size=3, key=jax.random.PRNGKey(0))]
    assert typed == legacy and sorted(sum(typed, [])) == list(range(7))
