"""Normalization layers: batch_norm, layer_norm, rms_norm, group_norm.

Statistics are computed in float32 (float64 for float64 inputs), also for bfloat16/float16
inputs; the output has the input's dtype. Learnable ``scale`` (init ones) and ``offset``
(init zeros) have the feature shape; ``batch_norm`` keeps running ``mean`` and ``var`` in its
state. Variances are the biased (divide-by-n) ones, as in flax.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.layers.norm import batch_norm
  >>> bn = batch_norm()
  >>> params, state = bn.init(jax.random.key(0), jax.ShapeDtypeStruct((8, 3), jnp.float32))
  >>> sorted(params), sorted(state)
  (['offset', 'scale'], ['mean', 'var'])
  >>> x = jnp.arange(24.0).reshape(8, 3)
  >>> y, state = bn.apply(params, state, x, train=True)     # batch statistics, state updated
  >>> y, _ = bn.apply(params, state, x)                     # running statistics only
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, layer_error, shape_of

__all__ = ["batch_norm", "layer_norm", "rms_norm", "group_norm"]


def _check_float_input(label: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise layer_error(label, f"expected a floating-point input, got {jnp.dtype(x.dtype).name}")


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


def _check_last_axis(label: str, x, params, what: str) -> None:
    """The input's last axis must match the params' size (the size the layer was initialized with)."""
    size = next((p.shape[0] for p in params.values()), None)
    if x.ndim < 1 or (size is not None and x.shape[-1] != size):
        expected = f"[..., {size}]" if size is not None else "[..., F]"
        raise layer_error(label, f"expected input of shape {expected} ({what}; the size it was "
                                 f"initialized with), got {tuple(x.shape)}")


def batch_norm(*, momentum: float = 0.99, epsilon: float = 1e-5, axis=None, use_scale: bool = True,
               use_offset: bool = True, axis_name=None, name: str | None = None) -> Layer:
    """Batch normalization (Ioffe & Szegedy 2015) with running statistics in the state.

    ``train=True``: normalizes with the batch mean and (biased) variance over the reduction
    axes, and updates ``running = momentum * running + (1 - momentum) * batch``.
    ``train=False``: uses only the running statistics (each example independent of the
    batch); the state is returned unchanged.

    Guards: a batch whose statistics are NaN or infinite leaves the running statistics
    unchanged (the output is still non-finite, so ``fit`` stops and reports it); training on
    a batch with one value (or none) per feature raises (a constant output and zero gradient).

    Shapes: ``x: [B, ..., F]``; by default statistics are over every axis but the last, so it
    works after ``dense`` (``[B, F]``) and after a channels-last conv (``[B, H, W, C]``).
    Params ``scale``, ``offset`` and state ``mean`` (init 0), ``var`` (init 1) have the shape of
    the axes not reduced (``[F]`` by default).

    Args:
      momentum: decay of the running statistics, in ``[0, 1]``.
      epsilon: added to the variance (> 0).
      axis: the axes to *reduce over* (an int or tuple of ints; must include the batch axis 0).
        ``None`` means all axes but the last. Note: ``flax.linen.BatchNorm(axis=...)`` names
        the *feature* axis instead.
      use_scale, use_offset: learn a per-feature scale / offset.
      axis_name: a named mapped axis (``jax.vmap``/``pmap``/``shard_map``) over which batch
        statistics are averaged with ``jax.lax.pmean``, for data parallelism: the shards
        then see the statistics of the whole (equal-sized-shard) batch.
      name: optional explicit key for this layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.norm import batch_norm
      >>> bn = batch_norm(momentum=0.9)
      >>> x = jnp.ones((4, 6, 6, 2))
      >>> params, state = bn.init(jax.random.key(0), x)
      >>> y, state = bn.apply(params, state, x, train=True)
      >>> state["mean"]      # 0.9 * 0 + 0.1 * 1
      Array([0.1, 0.1], dtype=float32)
    """
    label = name or "batch_norm"
    checks.number_in(label, "momentum", momentum, 0, 1)
    checks.number_above(label, "epsilon", epsilon, 0)
    checks.boolean(label, use_scale=use_scale, use_offset=use_offset)
    if axis is not None:
        axis = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
        if (not isinstance(axis, (tuple, list)) or not axis
                or any(isinstance(a, bool) or not isinstance(a, int) for a in axis)):
            raise ValueError(f"{label}: axis must be None, an int or a non-empty tuple of ints, "
                             f"got {axis!r}")
        axis = tuple(axis)

    def reduction_axes(ndim: int) -> tuple[int, ...]:
        if axis is None:
            if ndim < 2:
                raise layer_error(label, f"expected an input [B, ..., F] with at least 2 axes, got "
                                         f"{ndim} axes")
            return tuple(range(ndim - 1))
        if any(not -ndim <= a < ndim for a in axis):
            raise layer_error(label, f"axis {axis} out of range for an input with {ndim} axes")
        axes = tuple(sorted(a % ndim for a in axis))
        if len(set(axes)) != len(axes) or 0 not in axes:
            raise layer_error(label, f"axis must name distinct axes including the batch axis 0, got "
                                     f"{axis} for an input with {ndim} axes")
        return axes

    def init(key, example):
        x = shape_of(example)
        _check_float_input(label, x)
        axes = reduction_axes(x.ndim)
        features = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        dtype = initializers.param_dtype(x.dtype)
        state = {"mean": jnp.zeros(features, dtype), "var": jnp.ones(features, dtype)}
        return _affine_params(features, dtype, use_scale, use_offset), state

    def apply(params, state, x, *, key=None, train=False):
        _check_float_input(label, x)
        checks.boolean(label, train=train)
        axes = reduction_axes(x.ndim)
        features = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        if features != tuple(state["mean"].shape):
            raise layer_error(label, f"expected the axes not reduced over to have shape "
                                     f"{tuple(state['mean'].shape)} (as initialized), got {features} "
                                     f"for input shape {tuple(x.shape)}")
        in_x = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        x32 = x.astype(state["mean"].dtype)
        if train:
            count = math.prod(x.shape[a] for a in axes)
            if count < 2 and axis_name is None:  # static: a constant output and zero gradient
                raise layer_error(label, f"training mode needs more than one value per feature to "
                                         f"normalize over, got input shape {tuple(x.shape)}; use a "
                                         f"larger batch, or train=False")
            mean = _pmean(label, jnp.mean(x32, axis=axes, keepdims=True), axis_name)
            var = _pmean(label, jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True), axis_name)
            batch = {"mean": mean.reshape(features), "var": var.reshape(features)}
            batch = jax.lax.stop_gradient(batch)
            # A batch with a NaN/Inf leaves the running statistics as they were (not poisoned).
            ok = jnp.isfinite(batch["mean"]).all() & jnp.isfinite(batch["var"]).all()
            state = {k: jnp.where(ok, momentum * state[k] + (1 - momentum) * batch[k], state[k])
                     for k in ("mean", "var")}
        else:
            mean, var = state["mean"].reshape(in_x), state["var"].reshape(in_x)
        y = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
        return _finish(y, params, x.dtype, in_x), state

    return Layer(init, apply, "batch_norm", name)


def _pmean(label: str, value, axis_name):
    """``value`` averaged over the named mapped axis (if any), with a helpful unbound-name error."""
    if axis_name is None:
        return value
    try:
        return jax.lax.pmean(value, axis_name)
    except NameError as e:
        raise layer_error(label, f"axis_name={axis_name!r} is not bound here ({e}); apply the layer "
                                 f"inside jax.vmap/jax.pmap/shard_map with axis_name={axis_name!r}, "
                                 f"or build it with axis_name=None") from e


def _last_axis_norm(kind: str, label: str, name, use_scale: bool, use_offset: bool, normalize):
    def init(key, example):
        x = shape_of(example)
        _check_float_input(label, x)
        if x.ndim < 1:
            raise layer_error(label, f"expected an input [..., F] with at least one axis, got shape "
                                     f"{x.shape}")
        dtype = initializers.param_dtype(x.dtype)
        return _affine_params((x.shape[-1],), dtype, use_scale, use_offset), {}

    def apply(params, state, x, *, key=None, train=False):
        _check_float_input(label, x)
        _check_last_axis(label, x, params, "features on the last axis")
        x32 = x.astype(initializers.param_dtype(x.dtype))
        return _finish(normalize(x32), params, x.dtype, (x.shape[-1],)), state

    return Layer(init, apply, kind, name)


def layer_norm(*, epsilon: float = 1e-5, use_scale: bool = True, use_offset: bool = True,
               name: str | None = None) -> Layer:
    """Layer normalization (Ba et al. 2016) over the last axis of each example.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + offset`` with mean and biased variance
    over the last axis. Shapes: ``x: [..., F]`` -> same; params ``scale``, ``offset``: ``[F]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.norm import layer_norm
      >>> ln = layer_norm()
      >>> params, state = ln.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> ln.apply(params, state, jnp.array([[1.0, 2.0, 3.0]]))[0].round(3)
      Array([[-1.225,  0.   ,  1.225]], dtype=float32)
    """
    label = name or "layer_norm"
    checks.number_above(label, "epsilon", epsilon, 0)
    checks.boolean(label, use_scale=use_scale, use_offset=use_offset)

    def normalize(x):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + epsilon)

    return _last_axis_norm("layer_norm", label, name, use_scale, use_offset, normalize)


def rms_norm(*, epsilon: float = 1e-6, use_scale: bool = True, name: str | None = None) -> Layer:
    """RMS normalization (Zhang & Sennrich 2019) over the last axis: no centering, no offset.

    ``y = x / sqrt(mean(x ** 2) + epsilon) * scale``. Shapes: ``x: [..., F]`` -> same; param
    ``scale``: ``[F]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.norm import rms_norm
      >>> rn = rms_norm()
      >>> params, state = rn.init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> x = jnp.array([[3.0, 4.0]])                      # rms = sqrt((9 + 16) / 2)
      >>> bool(jnp.allclose(rn.apply(params, state, x)[0], x / jnp.sqrt(12.5)))
      True
    """
    label = name or "rms_norm"
    checks.number_above(label, "epsilon", epsilon, 0)
    checks.boolean(label, use_scale=use_scale)

    def normalize(x):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)

    return _last_axis_norm("rms_norm", label, name, use_scale, False, normalize)


def group_norm(num_groups: int, *, epsilon: float = 1e-5, use_scale: bool = True,
               use_offset: bool = True, name: str | None = None) -> Layer:
    """Group normalization (Wu & He 2018) for channels-last inputs.

    The ``C`` channels are split into ``num_groups`` consecutive groups; each example is
    normalized with the mean and biased variance over its spatial axes and the channels of a
    group. ``num_groups=1`` normalizes over all of an example (like layer norm over ``H, W, C``);
    ``num_groups=C`` is instance normalization. Shapes: ``x: [B, *spatial, C]`` -> same;
    params ``scale``, ``offset``: ``[C]``.

    Args:
      num_groups: number of channel groups (> 0); ``C`` must be divisible by it.
      epsilon: added to the variance (> 0).
      use_scale, use_offset: learn a per-channel scale / offset.
      name: optional explicit key for this layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.norm import group_norm
      >>> gn = group_norm(2)
      >>> params, state = gn.init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))
      >>> params["scale"].shape
      (6,)
    """
    label = name or "group_norm"
    checks.positive_int(label, "num_groups", num_groups)
    checks.number_above(label, "epsilon", epsilon, 0)
    checks.boolean(label, use_scale=use_scale, use_offset=use_offset)

    def check(shape):
        if len(shape) < 2:
            raise layer_error(label, f"expected a channels-last input [B, ..., C], got shape {shape}")
        if shape[-1] % num_groups:
            raise layer_error(label, f"the number of channels ({shape[-1]}) must be divisible by "
                                     f"num_groups ({num_groups})")

    def init(key, example):
        x = shape_of(example)
        _check_float_input(label, x)
        check(tuple(x.shape))
        dtype = initializers.param_dtype(x.dtype)
        return _affine_params((x.shape[-1],), dtype, use_scale, use_offset), {}

    def apply(params, state, x, *, key=None, train=False):
        _check_float_input(label, x)
        check(tuple(x.shape))
        _check_last_axis(label, x, params, "channels last")
        c = x.shape[-1]
        g = x.astype(initializers.param_dtype(x.dtype)).reshape(*x.shape[:-1], num_groups,
                                                                  c // num_groups)
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        mean = jnp.mean(g, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
        return _finish(y, params, x.dtype, (c,)), state

    return Layer(init, apply, "group_norm", name)
