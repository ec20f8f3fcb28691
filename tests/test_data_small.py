"""The in-memory datasets: logic-gate truth tables and sklearn's 8x8 digits."""
import sys

import numpy as np
import pytest

from jnn.data import and_gate, load_digits, or_gate, xor

INPUTS = [[0, 0], [0, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize(
    "gate, outputs",
    [(xor, [0, 1, 1, 0]), (and_gate, [0, 0, 0, 1]), (or_gate, [0, 1, 1, 1])],
)
def test_logic_gates(gate, outputs):
    x, y = gate()
    assert x.shape == (4, 2) and x.dtype == np.float32
    assert y.shape == (4, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(x, np.array(INPUTS, np.float32))
    np.testing.assert_array_equal(y[:, 0], np.array(outputs, np.float32))
    # y is the gate applied to x, row by row
    a, b = x[:, 0].astype(bool), x[:, 1].astype(bool)
    expected = {xor: a ^ b, and_gate: a & b, or_gate: a | b}[gate]
    np.testing.assert_array_equal(y[:, 0].astype(bool), expected)


def test_gates_return_fresh_arrays():
    x, y = xor()
    x[:] = 7
    y[:] = 7
    x2, y2 = xor()
    np.testing.assert_array_equal(x2, np.array(INPUTS, np.float32))
    np.testing.assert_array_equal(y2[:, 0], [0, 1, 1, 0])


def test_load_digits_matches_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(np.unique(labels).tolist()) == set(range(10))
    reference = datasets.load_digits()
    np.testing.assert_allclose(images[..., 0], reference.data.reshape(-1, 8, 8) / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(labels, reference.target)


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` fail
    with pytest.raises(ImportError, match=r'pip install "jnn\[digits\]"'):
        load_digits()


def test_batches_cover_every_example_once_and_shuffle_with_a_key():
    import jax
    from jnn.data import batches

    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    plain = list(batches(x, y, batch_size=4))
    assert [len(b[1]) for b in plain] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), y)
    shuffled = list(batches(x, y, batch_size=4, key=jax.random.key(0), drop_remainder=True))
    assert [len(b[1]) for b in shuffled] == [4, 4]
    seen = np.concatenate([b[1] for b in shuffled])
    assert len(set(seen.tolist())) == 8 and not np.array_equal(seen, y[:8])
    for xb, yb in shuffled:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # rows stay aligned
    with pytest.raises(ValueError, match=r"batches: arrays must have the same number of examples, got \[10, 3\]"):
        next(batches(x, y[:3], batch_size=2))
