"""Activations against independent NumPy references (values and derivatives)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

X = np.linspace(-6, 6, 97).astype(np.float64)
_erf = np.vectorize(math.erf)

REFERENCES = {
    "step": (jnn.step, lambda x: (x >= 0).astype(x.dtype)),
    "sigmoid": (jnn.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (jnn.tanh, np.tanh),
    "relu": (jnn.relu, lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda: jnn.leaky_relu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    "elu": (lambda: jnn.elu(0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    "gelu": (jnn.gelu, lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    "gelu_tanh": (lambda: jnn.gelu(approximate=True),
                  lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    "softplus": (jnn.softplus, lambda x: np.log1p(np.exp(x))),
    "silu": (jnn.silu, lambda x: x / (1 + np.exp(-x))),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_matches_numpy(name):
    make, ref = REFERENCES[name]
    y, _ = make().apply({}, {}, jnp.asarray(X, jnp.float32))
    np.testing.assert_allclose(y, ref(X), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(set(REFERENCES) - {"step"}))
def test_activation_derivative_matches_central_difference_of_reference(name):
    make, ref = REFERENCES[name]
    x = X[np.abs(X) > 1e-3]  # away from relu's kink
    with jax.enable_x64(True):
        layer = make()
        grad = jax.vmap(jax.grad(lambda v: layer.apply({}, {}, v)[0]))(jnp.asarray(x))
    h = 1e-6
    np.testing.assert_allclose(grad, (ref(x + h) - ref(x - h)) / (2 * h), rtol=1e-5, atol=1e-6)


def test_step_has_zero_gradient():
    g = jax.grad(lambda v: jnp.sum(jnn.step().apply({}, {}, v)[0]))(jnp.asarray(X, jnp.float32))
    assert np.all(np.asarray(g) == 0)


def test_softmax_and_log_softmax_match_numpy_and_are_stable():
    x = np.array([[1.0, 2.0, 3.0], [1e4, -1e4, 0.0]], np.float32)
    shifted = x - x.max(-1, keepdims=True)
    ref = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    np.testing.assert_allclose(jnn.softmax().apply({}, {}, x)[0], ref, rtol=1e-6)
    log_ref = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    np.testing.assert_allclose(jnn.log_softmax().apply({}, {}, x)[0], log_ref, rtol=1e-6)
    np.testing.assert_allclose(jnn.softmax(axis=0).apply({}, {}, x)[0].sum(0), np.ones(3), rtol=1e-6)
