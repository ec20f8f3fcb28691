"""The course's NumPy backpropagation equals jax.grad of the same network in jnn (float64)."""
import numpy as np
import pytest

from experiments_path import load

from_scratch = load("from_scratch")


@pytest.mark.parametrize("sizes", [(2, 4, 1), (3, 5, 4, 2), (6, 1)])
def test_hand_written_backprop_equals_jax_grad_in_float64(sizes):
    rng = np.random.default_rng(sum(sizes))
    params = from_scratch.init(sizes, seed=1)
    for layer in params:  # nonzero biases, so their gradients are exercised too
        layer["b"] = rng.normal(size=layer["b"].shape)
    x = rng.normal(size=(7, sizes[0]))
    y = rng.random((7, sizes[-1]))
    loss, grads = from_scratch.loss_and_grads(params, x, y)
    jax_loss, reference = from_scratch.jax_grads(params, x, y)
    np.testing.assert_allclose(loss, jax_loss, rtol=1e-14)
    for i, grad in enumerate(grads):
        for k in ("w", "b"):
            assert reference[f"dense_{i}"][k].dtype == np.float64
            np.testing.assert_allclose(grad[k], reference[f"dense_{i}"][k], rtol=1e-10, atol=1e-15)


def test_from_scratch_network_learns_xor(capsys):
    result = from_scratch.main(from_scratch.Config(epochs=4000))
    assert result["accuracy"] == 1.0 and result["max_grad_diff"] < 1e-12
    assert "max |gradient difference|" in capsys.readouterr().out
