"""Normalization layers: batch_norm, layer_norm, rms_norm, group_norm.

Statistics in float32 (float64 for float64 inputs), biased variances; the output has the input's
dtype. Learned ``scale`` (ones) and ``offset`` (zeros) have the feature shape.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, layer_error, shape_of

__all__ = ["batch_norm", "layer_norm", "rms_norm", "group_norm"]


def _affine_params(shape, dtype, use_scale: bool, use_offset: bool) -> dict:
    return ({"scale": jnp.ones(shape, dtype)} if use_scale else {}) | (
        {"offset": jnp.zeros(shape, dtype)} if use_offset else {})


def _finish(y, params, x_dtype, feature_shape_in_x):
    """``y * scale + offset`` (params reshaped to broadcast against ``y``), cast to ``x_dtype``."""
    if "scale" in params:
        y = y * params["scale"].astype(y.dtype).reshape(feature_shape_in_x)
    if "offset" in params:
        y = y + params["offset"].astype(y.dtype).reshape(feature_shape_in_x)
    return y.astype(x_dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _standardize(x, axes, epsilon):
    """``(x - mean) / sqrt(var + epsilon)`` with the mean and biased variance over ``axes``."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


@_standardize.defjvp
def _standardize_jvp(axes, epsilon, primals, tangents):
    """The closed-form tangent ``rstd * (dx - mean(dx) - xhat * mean(dx * xhat))``. On CPU it is
    fenced by optimization barriers, so XLA materializes the input gradient once instead of fusing
    the whole residual-stream gradient into every consumer (benchmarks/RESULTS.md, "CPU profile")."""
    (x,), (dx,) = primals, tangents
    mean = lambda a: jnp.mean(a, axis=axes, keepdims=True)
    centered = x - mean(x)
    rstd = jax.lax.rsqrt(mean(jnp.square(centered)) + epsilon)
    xhat = centered * rstd
    fence = jax.lax.optimization_barrier if jax.default_backend() == "cpu" else (lambda a: a)
    dx = fence(dx)
    return xhat, fence(rstd * (dx - mean(dx) - xhat * mean(dx * xhat)))


def _running(state, batch, momentum):
    """``momentum * running + (1 - momentum) * batch``, unless the batch's are not finite."""
    batch = jax.lax.stop_gradient(batch)
    ok = jnp.isfinite(batch["mean"]).all() & jnp.isfinite(batch["var"]).all()
    return {k: jnp.where(ok, momentum * state[k] + (1 - momentum) * batch[k], state[k]) for k in ("mean", "var")}


def _pmean(label: str, value, axis_name):
    """``value`` averaged over the named mapped axis (if any)."""
    try:
        return value if axis_name is None else jax.lax.pmean(value, axis_name)
    except NameError as e:
        raise layer_error(label, f"axis_name={axis_name!r} is not bound here ({e}); apply the layer inside jax.vmap/"
                                 f"pmap/shard_map with axis_name={axis_name!r}, or build it with axis_name=None") from e


@checks.declare(momentum=checks.between(0, 1), epsilon=checks.above(0), axis=checks.axes, use_scale=checks.flag,
                use_offset=checks.flag)
def batch_norm(*, momentum: float = 0.99, epsilon: float = 1e-5, axis=None, use_scale: bool = True,
               use_offset: bool = True, axis_name=None, name: str | None = None) -> Layer:
    """Batch normalization with running ``mean`` and ``var`` in the state.

    ``train=True`` normalizes with the batch statistics and updates ``running = momentum * running +
    (1 - momentum) * batch``; ``train=False`` uses the running ones. ``axis``: the axes reduced over,
    batch included (``None``: all but the last); the others give the params' and state's shape.
    ``axis_name``: a mapped axis the batch statistics are averaged over (``jax.lax.pmean``).

    Example:
      >>> bn = batch_norm(momentum=0.9)
      >>> x = jnp.ones((4, 6, 6, 2))
      >>> params, state = bn.init(jax.random.key(0), x)
      >>> y, state = bn.apply(params, state, x, train=True)
      >>> state["mean"]      # 0.9 * 0 + 0.1 * 1
      Array([0.1, 0.1], dtype=float32)
    """
    label = name or "batch_norm"
    min_ndim = 2 if axis is None else 0   # an explicit axis is checked against the input's rank instead

    def layout(x):
        """The axes reduced over and the shape of the others, after checking ``x``."""
        checks.layer_input(label, x, "an input [B, ..., F] with at least 2 axes", min_ndim=min_ndim, floating=True)
        axes = tuple(range(x.ndim - 1)) if axis is None else checks.batch_axes(label, "axis", axis, x.ndim)
        return axes, tuple(d for i, d in enumerate(x.shape) if i not in axes)

    def batch_statistics(x, axes):
        """The batch mean and biased variance over ``axes`` (and over ``axis_name``'s devices)."""
        checks.require(math.prod(x.shape[a] for a in axes) > 1 or axis_name is not None, label, f"training mode "
                       f"needs more than one value per feature to normalize over, got input shape {tuple(x.shape)}; "
                       f"use a larger batch, or train=False")
        mean = _pmean(label, jnp.mean(x, axis=axes, keepdims=True), axis_name)
        return mean, _pmean(label, jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True), axis_name)

    def init(key, example):
        x = shape_of(example)
        axes, features = layout(x)
        dtype = initializers.param_dtype(x.dtype)
        state = {"mean": jnp.zeros(features, dtype), "var": jnp.ones(features, dtype)}
        return _affine_params(features, dtype, use_scale, use_offset), state

    def apply(params, state, x, *, key=None, train=False):
        train = checks.flag(label, "train", train)
        axes, features = layout(x)
        checks.require(features == state["mean"].shape, label, f"expected the axes not reduced over to have shape "
                       f"{state['mean'].shape} (as initialized), got {features} for input shape {tuple(x.shape)}")
        in_x = tuple(1 if i in axes else d for i, d in enumerate(x.shape))   # the features, broadcast against x
        x32 = x.astype(state["mean"].dtype)
        if train:
            mean, var = batch_statistics(x32, axes)
            state = _running(state, {"mean": mean.reshape(features), "var": var.reshape(features)}, momentum)
        else:
            mean, var = state["mean"].reshape(in_x), state["var"].reshape(in_x)
        y = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
        return _finish(y, params, x.dtype, in_x), state

    return Layer(init, apply, "batch_norm", name)


def _last_axis_norm(kind: str, label: str, name, use_scale: bool, use_offset: bool, normalize, *,
                    expected: str = "an input [..., F] with at least one axis", min_ndim: int = 1,
                    what: str = "features on the last axis", num_groups: int = 1) -> Layer:
    """``normalize`` over (groups of) the last axis, then a learned per-feature scale and offset."""
    def check(x):
        checks.layer_input(label, x, expected, min_ndim=min_ndim, floating=True)
        checks.divisible(label, "the number of channels", x.shape[-1], "num_groups", num_groups)

    def init(key, example):
        x = shape_of(example)
        check(x)
        return _affine_params((x.shape[-1],), initializers.param_dtype(x.dtype), use_scale, use_offset), {}

    def apply(params, state, x, *, key=None, train=False):
        checks.last_axis(label, x, next((p.shape[0] for p in params.values()), None), f"{what}; ")
        check(x)
        x32 = x.astype(initializers.param_dtype(x.dtype))
        return _finish(normalize(x32), params, x.dtype, (x.shape[-1],)), state

    return Layer(init, apply, kind, name)


@checks.declare(epsilon=checks.above(0), use_scale=checks.flag, use_offset=checks.flag)
def layer_norm(*, epsilon: float = 1e-5, use_scale: bool = True, use_offset: bool = True,
               name: str | None = None) -> Layer:
    """Layer normalization over the last axis: ``(x - mean) / sqrt(var + epsilon) * scale + offset``.

    Example:
      >>> params, state = layer_norm().init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> layer_norm().apply(params, state, jnp.array([[1.0, 2.0, 3.0]]))[0].round(3)
      Array([[-1.225,  0.   ,  1.225]], dtype=float32)
    """
    return _last_axis_norm("layer_norm", name or "layer_norm", name, use_scale, use_offset,
                           lambda x: _standardize(x, (-1,), epsilon))


@checks.declare(epsilon=checks.above(0), use_scale=checks.flag)
def rms_norm(*, epsilon: float = 1e-6, use_scale: bool = True, name: str | None = None) -> Layer:
    """RMS normalization over the last axis: ``x / sqrt(mean(x ** 2) + epsilon) * scale``.

    Example:
      >>> params, state = rms_norm().init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> x = jnp.array([[3.0, 4.0]])                      # rms = sqrt((9 + 16) / 2)
      >>> bool(jnp.allclose(rms_norm().apply(params, state, x)[0], x / jnp.sqrt(12.5)))
      True
    """
    def normalize(x):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)

    return _last_axis_norm("rms_norm", name or "rms_norm", name, use_scale, False, normalize)


@checks.declare(num_groups=checks.positive_int, epsilon=checks.above(0), use_scale=checks.flag, use_offset=checks.flag)
def group_norm(num_groups: int, *, epsilon: float = 1e-5, use_scale: bool = True,
               use_offset: bool = True, name: str | None = None) -> Layer:
    """Group normalization of ``x: [B, *spatial, C]`` over space and each of ``num_groups``
    consecutive channel groups (``C`` divisible by it; ``num_groups=C``: instance norm).

    Example:
      >>> params, state = group_norm(2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))
      >>> params["scale"].shape
      (6,)
    """
    def normalize(x):
        groups = x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
        return _standardize(groups, (*range(1, groups.ndim - 2), groups.ndim - 1), epsilon).reshape(x.shape)

    return _last_axis_norm("group_norm", name or "group_norm", name, use_scale, use_offset, normalize,
                           expected="a channels-last input [B, ..., C]", min_ndim=2, what="channels last",
                           num_groups=num_groups)
