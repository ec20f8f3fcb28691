"""1-D to 3-D convolutions on channels-last ``[B, *spatial, C]``, kernels ``[*kernel_size, in // groups, out]``."""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, shape_of

__all__ = ["conv", "conv_transpose"]

Padding = Union[str, Sequence[tuple[int, int]]]
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _geometry(label: str, rank: int, strides, dilation, padding):
    """``strides`` and ``dilation`` per spatial axis, and the padding, checked and normalized."""
    return (checks.per_axis(label, "strides", strides, rank), checks.per_axis(label, "dilation", dilation, rank),
            checks.padding(label, "padding", padding, rank))


def _dimension_numbers(rank: int):
    s = _SPATIAL[rank]
    return (f"N{s}C", f"{s}IO", f"N{s}C")


def _conv_layer(kind, label, name, kernel_size, features, groups, use_bias, w_init, b_init, check, run) -> Layer:
    """Params ``w: [*kernel_size, C // groups, features]`` (and ``b: [features]``); the output is
    ``run(x, w) + b``; ``check(shape)`` checks the input at init and apply."""
    w_init = initializers.get(w_init, where=f"{label} w_init")
    b_init = initializers.get(b_init, where=f"{label} b_init")

    def init(key, example):
        x = shape_of(example)
        check(x.shape)
        dtype = initializers.param_dtype(x.dtype)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*kernel_size, x.shape[-1] // groups, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return params, {}

    def apply(params, state, x, *, key=None, train=False):
        w = params["w"]
        check(x.shape)
        checks.last_axis(label, x, w.shape[-2] * groups, "channels last; ")
        x = checks.float_input(x, w.dtype)
        y = run(x, w.astype(x.dtype))
        return (y + params["b"].astype(x.dtype) if use_bias else y), state

    return Layer(init, apply, kind, name)


@checks.declare(features=checks.positive_int, kernel_size=checks.window(3), feature_group_count=checks.positive_int,
                use_bias=checks.flag)
def conv(features: int, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1,
         padding: Padding = "SAME", dilation: int | Sequence[int] = 1, feature_group_count: int = 1,
         use_bias: bool = True, w_init="lecun_normal", b_init="zeros", name: str | None = None) -> Layer:
    """Convolution ``[B, *spatial, C] -> [B, *spatial_out, features]``; ``strides``, ``dilation``: an int or
    one per axis; ``padding``: ``"SAME"``, ``"VALID"`` or ``[(lo, hi), ...]``; ``feature_group_count``
    divides ``C`` and ``features``.

    Example (depthwise, channel multiplier 2):
      >>> layer = conv(8, (3, 3), strides=2, feature_group_count=4)
      >>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 4), jnp.float32))
      >>> params["w"].shape, layer.apply(params, state, jnp.zeros((2, 28, 28, 4)))[0].shape
      ((3, 3, 1, 8), (2, 14, 14, 8))
    """
    label = name or "conv"
    rank, groups = len(kernel_size), feature_group_count
    strides, dilation, padding = _geometry(label, rank, strides, dilation, padding)
    checks.divisible(label, "features", features, "feature_group_count", groups)

    def check(shape):
        checks.window_input(label, shape, kernel_size, dilation, padding)
        checks.divisible(label, "input channels", shape[-1], "feature_group_count", groups,
                         f"; got input shape {tuple(shape)}")

    return _conv_layer("conv", label, name, kernel_size, features, groups, use_bias, w_init, b_init, check,
                       lambda x, w: _convolve(x, w, strides, padding, dilation, groups))


def _convolve(x, w, strides, padding, dilation, groups):
    """``conv_general_dilated``; on CPU a small one-channel, unit-stride conv is a sum of shifted inputs."""
    rank = w.ndim - 2
    one_channel = (x.shape[-1] == 1 and groups == 1 and set(strides) == {1} and set(dilation) == {1}
                   and math.prod(w.shape[:rank]) <= 25)
    # the default backend, not lax.platform_dependent (which jax2onnx cannot convert)
    if one_channel and jax.default_backend() == "cpu":
        pads = padding if not isinstance(padding, str) else \
            jax.lax.padtype_to_pads(x.shape[1:-1], w.shape[:rank], strides, padding)
        return _shifted_sum(x, w, tuple(map(tuple, pads)))
    return _xla_conv(x, w, strides, padding, dilation, groups)


def _xla_conv(x, w, strides, padding, dilation, groups):
    return jax.lax.conv_general_dilated(x, w, window_strides=strides, padding=padding, rhs_dilation=dilation,
                                        dimension_numbers=_dimension_numbers(w.ndim - 2), feature_group_count=groups)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _shifted_sum(x, w, pads):
    """``x: [B, *spatial, 1]`` conv ``w: [*kernel, 1, out]`` as a sum of shifted ``x`` times each tap (>= float32)."""
    kernel = w.shape[:-2]
    acc = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32
    x = jnp.pad(x.astype(acc), ((0, 0), *pads, (0, 0)))
    out = [n - k + 1 for n, k in zip(x.shape[1:-1], kernel)]
    taps = [x[(slice(None), *(slice(o, o + n) for o, n in zip(offset, out)))] * w[offset][0].astype(acc)
            for offset in itertools.product(*map(range, kernel))]
    return functools.reduce(jnp.add, taps).astype(w.dtype)


def _shifted_sum_jvp(pads, primals, tangents):
    """Tangents by XLA's convolution (reverse mode then uses its gradients); none for a symbolic zero."""
    (x, w), (dx, dw) = primals, tangents
    ones = (1,) * (w.ndim - 2)
    y = _shifted_sum(x, w, pads)
    # JAX calls this with one or both tangents
    terms = [_xla_conv(a, b, ones, pads, ones, 1) for a, b, t in ((dx, w, dx), (x, dw, dw))
             if not isinstance(t, jax.custom_derivatives.SymbolicZero)]
    return y, functools.reduce(jnp.add, terms)


_shifted_sum.defjvp(_shifted_sum_jvp, symbolic_zeros=True)


@checks.declare(features=checks.positive_int, kernel_size=checks.window(3), use_bias=checks.flag)
def conv_transpose(features: int, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1,
                   padding: Padding = "SAME", dilation: int | Sequence[int] = 1,
                   use_bias: bool = True, w_init="lecun_normal", b_init="zeros",
                   name: str | None = None) -> Layer:
    """Transposed convolution as ``flax.linen.ConvTranspose`` (arguments as :func:`conv`'s; ``"SAME"``
    gives ``spatial * strides``; explicit padding applies to the dilated input).

    Example (2x upsampling):
      >>> layer = conv_transpose(3, (3, 3), strides=2)
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((1, 7, 7, 16)))
      >>> layer.apply(params, state, jnp.zeros((2, 7, 7, 16)))[0].shape
      (2, 14, 14, 3)
    """
    label = name or "conv_transpose"
    rank = len(kernel_size)
    strides, dilation, padding = _geometry(label, rank, strides, dilation, padding)

    def check(shape):
        # the input dilated by the strides, plus the padding, must hold the dilated kernel
        checks.window_input(label, shape, kernel_size, dilation, "SAME")
        dilated = (shape[0], *[(n - 1) * s + 1 for n, s in zip(shape[1:-1], strides)], shape[-1])
        checks.window_input(label, dilated, kernel_size, dilation, "SAME" if isinstance(padding, str) else padding)

    def run(x, w):
        return jax.lax.conv_transpose(x, w, strides, padding, rhs_dilation=dilation,
                                      dimension_numbers=_dimension_numbers(rank))

    return _conv_layer("conv_transpose", label, name, kernel_size, features, 1, use_bias, w_init, b_init, check, run)
