"""Activation functions as layers (no params, no state) over ``jax.nn`` (and :func:`heaviside`)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.combinators import stateless
from jnn.core import Layer

__all__ = ["heaviside", "step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus",
           "silu", "swish", "softmax", "log_softmax"]


def heaviside(x: jax.Array) -> jax.Array:
    """The Heaviside step: 1 where ``x >= 0``, else 0; its gradient is zero everywhere.

    Example:
      >>> heaviside(jnp.array([-1.0, 0.0, 2.0])).tolist()
      [0.0, 1.0, 1.0]
    """
    return jnp.where(x >= 0, jnp.ones_like(x), jnp.zeros_like(x))


def step(*, name: str | None = None) -> Layer:
    """Heaviside step (the perceptron's output): ``1 if x >= 0 else 0``.

    Example:
      >>> [round(float(v), 3) for v in step().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [0.0, 1.0, 1.0]
    """
    return stateless("step", heaviside, name=name)


def sigmoid(*, name: str | None = None) -> Layer:
    """Logistic sigmoid ``1 / (1 + exp(-x))``.

    Example:
      >>> [round(float(v), 3) for v in sigmoid().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [0.269, 0.5, 0.881]
    """
    return stateless("sigmoid", jax.nn.sigmoid, name=name)


def tanh(*, name: str | None = None) -> Layer:
    """Hyperbolic tangent.

    Example:
      >>> [round(float(v), 3) for v in tanh().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-0.762, 0.0, 0.964]
    """
    return stateless("tanh", jnp.tanh, name=name)


def relu(*, name: str | None = None) -> Layer:
    """Rectified linear unit ``max(x, 0)``.

    Example:
      >>> [round(float(v), 3) for v in relu().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [0.0, 0.0, 2.0]
    """
    return stateless("relu", jax.nn.relu, name=name)


@checks.declare(negative_slope=checks.finite_number)
def leaky_relu(negative_slope: float = 0.01, *, name: str | None = None) -> Layer:
    """``x if x >= 0 else negative_slope * x``.

    Example:
      >>> [round(float(v), 3) for v in leaky_relu(0.1).apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-0.1, 0.0, 2.0]
    """
    return stateless("leaky_relu", functools.partial(jax.nn.leaky_relu, negative_slope=negative_slope),
                     name=name)


@checks.declare(alpha=checks.finite_number)
def elu(alpha: float = 1.0, *, name: str | None = None) -> Layer:
    """Exponential linear unit ``x if x > 0 else alpha * (exp(x) - 1)``.

    Example:
      >>> [round(float(v), 3) for v in elu().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-0.632, 0.0, 2.0]
    """
    return stateless("elu", functools.partial(jax.nn.elu, alpha=alpha), name=name)


@checks.declare(approximate=checks.flag)
def gelu(approximate: bool = False, *, name: str | None = None) -> Layer:
    """Gaussian error linear unit ``x * Phi(x)`` (exact, or the tanh approximation).

    Example:
      >>> [round(float(v), 3) for v in gelu().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-0.159, 0.0, 1.954]
    """
    return stateless("gelu", jax.nn.gelu if approximate else _exact_gelu, name=name)


@jax.custom_jvp
def _exact_gelu(x):
    return jax.nn.gelu(x, approximate=False)


@_exact_gelu.defjvp
def _exact_gelu_jvp(primals, tangents):
    """``Phi(x) + x phi(x)`` times the tangent, fenced on CPU like layer norm's (norm.py)."""
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * (1 + jax.lax.erf(x * (1 / math.sqrt(2))))
    slope = cdf + x * jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    fence = jax.lax.optimization_barrier if jax.default_backend() == "cpu" else (lambda a: a)
    return _exact_gelu(x), fence(slope.astype(dx.dtype) * fence(dx))


def softplus(*, name: str | None = None) -> Layer:
    """``log(1 + exp(x))``, a smooth ReLU.

    Example:
      >>> [round(float(v), 3) for v in softplus().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [0.313, 0.693, 2.127]
    """
    return stateless("softplus", jax.nn.softplus, name=name)


def silu(*, name: str | None = None) -> Layer:
    """Sigmoid linear unit ``x * sigmoid(x)`` (``swish`` is the same layer).

    Example:
      >>> [round(float(v), 3) for v in silu().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-0.269, 0.0, 1.762]
    """
    return stateless("silu", jax.nn.silu, name=name)


swish = silu


def _over_axis(label: str, fn, axis: int):
    def over_axis(x):
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"{label}: axis {axis} is out of range for an input of shape {tuple(x.shape)}")
        return fn(x, axis=axis)
    return over_axis


@checks.declare(axis=checks.an_int)
def softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """Softmax over ``axis`` (probabilities that sum to 1).

    Example:
      >>> [round(float(v), 3) for v in softmax().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [0.042, 0.114, 0.844]
    """
    return stateless("softmax", _over_axis(name or "softmax", jax.nn.softmax, axis), name=name)


@checks.declare(axis=checks.an_int)
def log_softmax(axis: int = -1, *, name: str | None = None) -> Layer:
    """Log-softmax over ``axis`` (numerically stable log-probabilities).

    Example:
      >>> [round(float(v), 3) for v in log_softmax().apply({}, {}, jnp.array([-1.0, 0.0, 2.0]))[0]]
      [-3.17, -2.17, -0.17]
    """
    return stateless("log_softmax", _over_axis(name or "log_softmax", jax.nn.log_softmax, axis), name=name)
