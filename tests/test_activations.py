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
    "leaky_relu_default": (jnn.leaky_relu, lambda x: np.where(x >= 0, x, 0.01 * x)),   # slope 0.01
    "elu_default": (jnn.elu, lambda x: np.where(x > 0, x, np.exp(x) - 1)),                # alpha 1
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


KINDS = ["step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu", "softmax",
         "log_softmax"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_activation_has_its_kind_and_keeps_its_name(kind):
    """The kind names a model's children (``serial``'s ``relu_0``, ...) and a layer's errors;
    ``name=`` replaces it where given."""
    make = getattr(jnn, kind)
    assert (make().kind, make().name, make(name="act").name) == (kind, None, "act")
    assert list(jnn.serial(jnn.dense(2), make()).children) == ["dense_0", f"{kind}_0"]


def test_softmax_and_log_softmax_take_their_axis_on_3d_inputs():
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for axis in (-1, 0, 1):
        shifted = x - x.max(axis, keepdims=True)
        log_ref = shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))
        layers = (jnn.log_softmax(), jnn.softmax()) if axis == -1 else (jnn.log_softmax(axis), jnn.softmax(axis))
        np.testing.assert_allclose(layers[0].apply({}, {}, x)[0], log_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layers[1].apply({}, {}, x)[0], np.exp(log_ref), rtol=1e-5, atol=1e-7)


def test_an_axis_out_of_range_is_named_with_the_input_shape():
    with pytest.raises(ValueError, match=r"^softmax: axis 5 is out of range for an input of shape \(2, 3\)$"):
        jnn.softmax(axis=5).apply({}, {}, jnp.ones((2, 3)))
