"""Max, average and global pooling on channels-last ``[B, *spatial, C]``; tiling windows reduce a
reshaped view; max pooling's gradient goes to a window's first maximum (row-major, as torch)."""
from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.core import Layer, shape_of
from jnn.layers.conv import Padding

__all__ = ["max_pool", "avg_pool", "global_avg_pool", "global_max_pool"]


def _tiles(shape, window, strides, padding) -> bool:
    """Whether the windows tile the input: stride == window and nothing is padded."""
    if tuple(strides) != tuple(window):
        return False
    if padding == "SAME":  # pads nothing exactly when every size is a multiple of its window
        return all(n % k == 0 for n, k in zip(shape[1:-1], window))
    return padding == "VALID" or all(lo == hi == 0 for lo, hi in padding)


def _tile_view(x, window):
    """``[B, *spatial, C] -> [B, n1, k1, n2, k2, ..., C]`` (a VALID remainder is cropped)."""
    b, *spatial, c = x.shape
    x = x[(slice(None), *(slice(0, n - n % k) for n, k in zip(spatial, window)), slice(None))]
    split = [d for n, k in zip(spatial, window) for d in (n // k, k)]
    return x.reshape(b, *split, c)


def _window_axes(window):
    return tuple(range(2, 2 * len(window) + 1, 2))


def _offsets(window):
    """Index of each window position in a tile view, in row-major window order."""
    for offset in itertools.product(*map(range, window)):
        yield (slice(None), *(i for o in offset for i in (slice(None), o)), slice(None))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tiled_max(x, window):
    return _tile_view(x, window).max(axis=_window_axes(window))


@_tiled_max.defjvp
def _tiled_max_jvp(window, primals, tangents):
    # Each window's tangent is that of its first maximal element (row-major): a chain of selects
    # that XLA fuses into one loop. Linear in the tangent, so reverse mode is its transpose.
    (x,), (t,) = primals, tangents
    view, tangent = _tile_view(x, window), _tile_view(t, window)
    offsets = list(_offsets(window))
    best, out = view[offsets[0]], tangent[offsets[0]]
    for index in offsets[1:]:   # strictly greater: the first maximum in row-major order keeps it
        better = view[index] > best
        best, out = jnp.where(better, view[index], best), jnp.where(better, tangent[index], out)
    top = view.max(axis=_window_axes(window))   # the value: max propagates NaN, the running best not
    return top, out


def _pool(kind: str, name, window, strides, padding, reduce, tiled) -> Layer:
    label = name or kind
    rank = len(window)
    strides = window if strides is None else checks.per_axis(label, "strides", strides, rank)
    padding = checks.padding(label, "padding", padding, rank)
    check = partial(checks.window_input, label, window=window, dilation=(1,) * rank, padding=padding, what="window")

    def init(key, example):
        check(shape_of(example).shape)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x.shape)
        if _tiles(x.shape, window, strides, padding):
            return tiled(x, window), state
        pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
        return reduce(x, (1, *window, 1), (1, *strides, 1), pad), state

    return Layer(init, apply, kind, name)


@checks.declare(window=checks.window(None))
def max_pool(window: Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: Padding = "VALID", name: str | None = None) -> Layer:
    """Maximum over each window ``[B, *spatial, C] -> [B, *spatial_out, C]``; ``strides`` default to the window;
    ``padding``: ``"VALID"``, ``"SAME"`` or ``[(lo, hi), ...]`` (padded positions never win).

    Example:
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> max_pool((2, 2)).apply({}, {}, x)[0][0, :, :, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """

    def reduce(x, dims, strides_, pad):
        # A Python scalar init value keeps this the differentiable reduce_window_max primitive.
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides_, pad)

    return _pool("max_pool", name, window, strides, padding, reduce, _tiled_max)


@checks.declare(window=checks.window(None), count_include_pad=checks.flag)
def avg_pool(window: Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True,
             name: str | None = None) -> Layer:
    """Mean over each window (as :func:`max_pool`); ``count_include_pad``: divide by the full window (as
    flax) or by the real entries.

    Example:
      >>> avg_pool((2,)).apply({}, {}, jnp.array([[[1.0], [3.0], [5.0], [7.0]]]))[0][0, :, 0]
      Array([2., 6.], dtype=float32)
    """

    def reduce(x, dims, strides_, pad):
        # A Python scalar init value keeps this the differentiable reduce_window_sum primitive.
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides_, pad)
        if count_include_pad:
            return total / jnp.array(math.prod(dims), x.dtype)
        ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides_, pad)
        return total / count

    def tiled(x, window):
        return _tile_view(x, window).mean(axis=_window_axes(window))

    return _pool("avg_pool", name, window, strides, padding, reduce, tiled)


def _global(kind: str, name, reduce) -> Layer:
    check = partial(checks.layer_input, name or kind, expected="inputs [B, *spatial, C] with at least one spatial axis",
                    min_ndim=3)

    def init(key, example):
        check(shape_of(example))
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x)
        return reduce(x, axis=tuple(range(1, x.ndim - 1))), state

    return Layer(init, apply, kind, name)


def global_avg_pool(*, name: str | None = None) -> Layer:
    """Mean over all spatial axes: ``[B, *spatial, C] -> [B, C]``.

    Example:
      >>> global_avg_pool().apply({}, {}, jnp.ones((2, 3, 3, 5)))[0].shape
      (2, 5)
    """
    return _global("global_avg_pool", name, jnp.mean)


def global_max_pool(*, name: str | None = None) -> Layer:
    """Maximum over all spatial axes: ``[B, *spatial, C] -> [B, C]``.

    Example:
      >>> global_max_pool().apply({}, {}, jnp.ones((2, 4, 5)))[0].shape
      (2, 5)
    """
    return _global("global_max_pool", name, jnp.max)
