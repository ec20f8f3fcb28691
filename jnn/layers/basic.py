"""Dense layers and shape plumbing: dense, flatten, reshape (and identity, from combinators)."""
from __future__ import annotations

import math

import jax

from jnn import initializers
from jnn import _checks as checks
from jnn.combinators import identity, stateless
from jnn.core import Layer, shape_of

__all__ = ["dense", "flat_matmul", "flatten", "reshape", "identity"]


def flat_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x: [..., in]``, ``w: [in, out]`` -> ``[..., out]``, as one product over the
    leading axes flattened: XLA CPU runs a weight gradient that contracts several axes as a
    transposed dot, several times slower. On CPU with ``in > out``, the weight gradient is
    computed as ``[out, in]`` and transposed (XLA CPU's faster orientation; a fenced custom_jvp).

    Example:
      >>> import jax.numpy as jnp
      >>> flat_matmul(jnp.ones((2, 5, 3)), jnp.ones((3, 4))).shape
      (2, 5, 4)
    """
    if x.ndim <= 2:
        return x @ w
    return _matmul_2d(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


@jax.custom_jvp
def _matmul_2d(x, w):
    return x @ w


@_matmul_2d.defjvp
def _matmul_2d_jvp(primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    if jax.default_backend() == "cpu" and w.shape[0] > w.shape[1]:
        dw = jax.lax.optimization_barrier(dw.T).T
    return x @ w, dx @ w + x @ dw


@checks.declare(features=checks.positive_int, use_bias=checks.flag)
def dense(features: int, *, use_bias: bool = True, w_init="lecun_normal", b_init="zeros",
          name: str | None = None) -> Layer:
    """Fully connected layer ``y = x @ w + b`` on the last axis.

    ``x: [..., in]`` -> ``[..., features]``; params ``w: [in, features]``, ``b: [features]`` in
    float32 (float64 for float64 inputs); computed in the input's dtype (integers promoted to the
    params'). ``w_init``, ``b_init``: initializers or their names (:mod:`jnn.initializers`).

    Example (two units on three inputs):
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, state = jnn.dense(2).init(jax.random.key(0), jnp.zeros((5, 3)))
      >>> params["w"].shape, params["b"].shape
      ((3, 2), (2,))
    """
    label = name or "dense"
    w_fn = initializers.get(w_init, where=f"{label} w_init")
    b_fn = initializers.get(b_init, where=f"{label} b_init")

    def init(key, example):
        x = shape_of(example)
        checks.layer_input(label, x, "an input with at least one axis", min_ndim=1)
        dtype = initializers.param_dtype(x.dtype)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_fn(w_key, (x.shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_fn(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        w = params["w"]
        checks.last_axis(label, x, w.shape[0])
        x = checks.float_input(x, w.dtype)
        y = flat_matmul(x, w.astype(x.dtype))
        if use_bias:
            y = y + params["b"].astype(x.dtype)
        return y, state

    return Layer(init, apply, "dense", name)


def flatten(*, name: str | None = None) -> Layer:
    """Flattens all axes but the first (batch): ``[B, d1, d2, ...] -> [B, d1*d2*...]``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.flatten().apply({}, {}, jnp.zeros((2, 28, 28, 1)))[0].shape
      (2, 784)
    """
    return stateless("flatten", lambda x: x.reshape(x.shape[0], -1), name=name)


@checks.declare(shape=checks.new_shape)
def reshape(shape: tuple[int, ...], *, name: str | None = None) -> Layer:
    """Reshapes each example (the batch axis is kept): ``[B, ...] -> [B, *shape]``; one entry may be -1.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.reshape((28, 28, 1)).apply({}, {}, jnp.zeros((2, 784)))[0].shape
      (2, 28, 28, 1)
    """
    label = name or "reshape"

    def fn(x):
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in shape if d != -1)
        checks.require(not (size % known or (-1 not in shape and size != known)), label,
                       f"cannot reshape examples of shape {tuple(x.shape[1:])} ({size} values) to {shape}")
        return x.reshape((x.shape[0], *shape))

    return stateless("reshape", fn, name=name)
