"""Dropout layers: ``dropout`` (per element) and ``spatial_dropout`` (whole channels)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.core import Layer, layer_error, shape_of

__all__ = ["dropout", "spatial_dropout"]


def _make(kind: str, rate, name: str | None, mask_shape, min_ndim: int, expected: str) -> Layer:
    label = name or kind
    check = functools.partial(checks.layer_input, label, expected=expected, min_ndim=min_ndim, floating=True)

    def init(key, example):
        check(shape_of(example))
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x)
        train = checks.flag(label, "train", train)
        if not train or isinstance(rate, float) and rate == 0.0:
            return x, state
        if key is None:
            raise layer_error(label, "train=True needs a PRNG key: call apply(..., key=jax.random.key(0), train=True)")
        keep = 1.0 - rate
        mask = jax.random.bernoulli(key, keep, mask_shape(x.shape))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return Layer(init, apply, kind, name)


@checks.declare(rate=checks.rate)
def dropout(rate: float, *, name: str | None = None) -> Layer:
    """Inverted dropout: zero each element with probability ``rate`` (may be traced), scale the rest by
    ``1/(1-rate)``; the identity unless ``train=True`` (which needs ``key=``).

    Example:
      >>> y, _ = dropout(0.75).apply({}, {}, jnp.ones(8), key=jax.random.key(0), train=True)
      >>> set(y.tolist()) <= {0.0, 4.0}       # dropped, or kept and scaled by 1 / (1 - 0.75)
      True
      >>> bool((dropout(0.5).apply({}, {}, jnp.ones(8))[0] == 1).all())   # train=False
      True
    """
    return _make("dropout", rate, name, lambda shape: shape, 0, "an array")


@checks.declare(rate=checks.rate)
def spatial_dropout(rate: float, *, name: str | None = None) -> Layer:
    """Dropout of whole channels of ``x: [B, *spatial, C]`` (mask ``[B, 1, ..., 1, C]``), as :func:`dropout`.

    Example:
      >>> y, _ = spatial_dropout(0.5).apply({}, {}, jnp.ones((2, 5, 5, 8)), key=jax.random.key(0), train=True)
      >>> bool(jnp.all(y == y[:, :1, :1, :]))   # constant over space per channel
      True
    """
    mask_shape = lambda shape: (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)
    return _make("spatial_dropout", rate, name, mask_shape, 3,
                 "a channels-last input [B, *spatial, C] with at least one spatial axis")
