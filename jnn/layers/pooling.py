"""Pooling on channels-last inputs of any spatial rank: max, average, and global pooling.

``max_pool``/``avg_pool`` take ``[B, *spatial, C]`` with ``len(spatial) == len(window)``
and reduce each window with ``jax.lax.reduce_window``; ``strides`` default to the window
(non-overlapping windows, as in Keras and PyTorch; ``flax.linen`` defaults to stride 1).
``global_avg_pool``/``global_max_pool`` reduce every spatial axis: ``[B, ..., C] -> [B, C]``.

Example:
  >>> import jax.numpy as jnp
  >>> from jnn.layers.pooling import max_pool, global_avg_pool
  >>> max_pool((2, 2)).apply({}, {}, jnp.zeros((4, 28, 28, 8)))[0].shape
  (4, 14, 14, 8)
  >>> global_avg_pool().apply({}, {}, jnp.zeros((4, 7, 7, 8)))[0].shape
  (4, 8)
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jnn.core import Layer, layer_error, shape_of
from jnn.layers.conv import Padding, _check_input, _padding, _per_axis, _window

__all__ = ["max_pool", "avg_pool", "global_avg_pool", "global_max_pool"]


def _pool(kind: str, name, window, strides, padding, reduce) -> Layer:
    label = name or kind
    window = _window(label, "window", window, max_rank=None)
    rank = len(window)
    strides = window if strides is None else _per_axis(label, "strides", strides, rank)
    padding = _padding(label, padding, rank)
    ones = (1,) * rank

    def check(shape):
        _check_input(label, shape, rank, window, ones, padding, what="window")

    def init(key, example):
        check(shape_of(example).shape)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x.shape)
        pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
        return reduce(x, (1, *window, 1), (1, *strides, 1), pad), state

    return Layer(init, apply, kind, name)


def max_pool(window: Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: Padding = "VALID", name: str | None = None) -> Layer:
    """Maximum over each window: ``[B, *spatial, C] -> [B, *spatial_out, C]``.

    Args:
      window: window size, one positive int per spatial axis: ``(2,)``, ``(2, 2)``, ...
      strides: int or one per spatial axis; ``None`` (default) means equal to ``window``.
      padding: ``"VALID"`` (default), ``"SAME"`` or explicit ``[(lo, hi), ...]``; padded
        positions never win the max.
      name: optional explicit name.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.pooling import max_pool
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> max_pool((2, 2)).apply({}, {}, x)[0][0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """

    def reduce(x, dims, strides_, pad):
        # A Python scalar init value keeps this the differentiable reduce_window_max primitive.
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides_, pad)

    return _pool("max_pool", name, window, strides, padding, reduce)


def avg_pool(window: Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True,
             name: str | None = None) -> Layer:
    """Mean over each window: ``[B, *spatial, C] -> [B, *spatial_out, C]``.

    Args:
      window: window size, one positive int per spatial axis.
      strides: int or one per spatial axis; ``None`` (default) means equal to ``window``.
      padding: ``"VALID"`` (default), ``"SAME"`` or explicit ``[(lo, hi), ...]``.
      count_include_pad: with padding, divide by the full window size (padded zeros count,
        as ``flax.linen.avg_pool``'s default) rather than by the number of real entries.
      name: optional explicit name.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.pooling import avg_pool
      >>> avg_pool((2,)).apply({}, {}, jnp.array([[[1.0], [3.0], [5.0], [7.0]]]))[0][0, :, 0]
      Array([2., 6.], dtype=float32)
    """

    def reduce(x, dims, strides_, pad):
        # A Python scalar init value keeps this the differentiable reduce_window_sum primitive.
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides_, pad)
        if count_include_pad:
            size = 1
            for d in dims:
                size *= d
            return total / jnp.array(size, x.dtype)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides_, pad)
        return total / count

    return _pool("avg_pool", name, window, strides, padding, reduce)


def _global(kind: str, name, reduce) -> Layer:
    label = name or kind

    def check(shape):
        if len(shape) < 3:
            raise layer_error(label, f"expected inputs [B, *spatial, C] with at least one spatial "
                                     f"axis, got shape {tuple(shape)}")

    def init(key, example):
        check(shape_of(example).shape)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x.shape)
        return reduce(x, axis=tuple(range(1, x.ndim - 1))), state

    return Layer(init, apply, kind, name)


def global_avg_pool(*, name: str | None = None) -> Layer:
    """Mean over all spatial axes: ``[B, *spatial, C] -> [B, C]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.pooling import global_avg_pool
      >>> global_avg_pool().apply({}, {}, jnp.ones((2, 3, 3, 5)))[0].shape
      (2, 5)
    """
    return _global("global_avg_pool", name, jnp.mean)


def global_max_pool(*, name: str | None = None) -> Layer:
    """Maximum over all spatial axes: ``[B, *spatial, C] -> [B, C]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.pooling import global_max_pool
      >>> global_max_pool().apply({}, {}, jnp.ones((2, 4, 5)))[0].shape
      (2, 5)
    """
    return _global("global_max_pool", name, jnp.max)
