"""Mixed precision: a dtype policy and a wrapper that applies it to any layer.

A :class:`Policy` names ``param_dtype``, ``compute_dtype`` and ``output_dtype``;
:func:`mixed_bfloat16` is float32 params and outputs with bfloat16 compute (no loss scaling needed).

Example:
  >>> import jax, jax.numpy as jnp, jnn
  >>> from jnn.precision import mixed_bfloat16, with_policy
  >>> model = with_policy(jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(2)), mixed_bfloat16())
  >>> params, state = model.init(jax.random.key(0), jnp.zeros((4, 3)))
  >>> y, _ = model.apply(params, state, jnp.ones((4, 3)))
  >>> params["dense_0"]["w"].dtype, y.dtype
  (dtype('float32'), dtype('float32'))
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jnn.core import Layer, ensure_layer, shape_of

__all__ = ["Policy", "mixed_bfloat16", "with_policy", "cast_floating"]


def cast_floating(tree, dtype):
    """Every floating-point leaf of ``tree`` cast to ``dtype`` (integer, bool and key leaves kept).

    Works on arrays and ``jax.ShapeDtypeStruct`` leaves alike.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = cast_floating({"w": jnp.ones(2), "ids": jnp.arange(2)}, jnp.bfloat16)
      >>> tree["w"].dtype, tree["ids"].dtype
      (dtype(bfloat16), dtype('int32'))
    """
    def cast(a):
        if not hasattr(a, "dtype") or not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == dtype:
            return a
        if isinstance(a, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(a.shape, dtype)
        return a.astype(dtype)

    return jax.tree_util.tree_map(cast, tree)


class Policy(NamedTuple):
    """Dtypes for params (and state), computation, and outputs.

    Attributes:
      param_dtype: dtype params and state are created and kept in.
      compute_dtype: dtype floating inputs and params are cast to inside ``apply``.
      output_dtype: dtype floating outputs are cast to on the way out.

    Example:
      >>> import jax.numpy as jnp
      >>> Policy(compute_dtype=jnp.float16).checked().compute_dtype
      dtype('float16')
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.bfloat16
    output_dtype: Any = jnp.float32

    def checked(self) -> "Policy":
        dtypes = {}
        for field, value in self._asdict().items():
            try:
                dtype = jnp.dtype(value)
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"Policy: {field} must be a floating dtype, got {value!r}")
            dtypes[field] = dtype
        return Policy(**dtypes)


def mixed_bfloat16() -> Policy:
    """float32 params, bfloat16 compute, float32 outputs.

    Example:
      >>> mixed_bfloat16().compute_dtype
      <class 'jax.numpy.bfloat16'>
    """
    return Policy(jnp.float32, jnp.bfloat16, jnp.float32)


def _decode_methods(methods, policy: Policy) -> dict:
    """A decoder's ``init_cache``/``decode_step`` under ``policy`` (the cache in ``compute_dtype``)."""
    def init_cache(batch, length=None, dtype=None, **context):
        if "params" in context:
            context["params"] = cast_floating(context["params"], policy.compute_dtype)
        return methods["init_cache"](batch, length, policy.compute_dtype if dtype is None else dtype, **context)

    def decode_step(params, cache, tokens, position):
        logits, cache = methods["decode_step"](cast_floating(params, policy.compute_dtype), cache, tokens, position)
        return cast_floating(logits, policy.output_dtype), cache

    return {"init_cache": init_cache, "decode_step": decode_step}


def with_policy(model: Layer, policy: Policy | None = None) -> Layer:
    """``model`` under a dtype policy (default :func:`mixed_bfloat16`).

    Params and state are kept in ``param_dtype``; ``apply`` runs in ``compute_dtype`` (floating
    params and inputs cast; integer inputs left alone) and returns floating outputs in
    ``output_dtype``. A decoder's ``init_cache``/``decode_step`` follow the policy (cache in
    ``compute_dtype``, logits in ``output_dtype``).

    Args:
      model: any layer.
      policy: the dtypes.

    Returns:
      A layer of the same kind and name.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = with_policy(jnn.dense(2))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> y, _ = model.apply(params, state, jnp.ones((1, 3)))
      >>> params["w"].dtype, y.dtype
      (dtype('float32'), dtype('float32'))
    """
    ensure_layer("with_policy", model)
    policy = (mixed_bfloat16() if policy is None else policy)
    if not isinstance(policy, Policy):
        raise TypeError(f"with_policy: expected a jnn.precision.Policy, got {type(policy).__name__}")
    policy = policy.checked()

    def init(key, example):
        params, state = model.init(key, shape_of(example))
        return cast_floating(params, policy.param_dtype), cast_floating(state, policy.param_dtype)

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        y, new_state = model.apply(cast_floating(params, policy.compute_dtype), state,
                                   cast_floating(x, policy.compute_dtype), key=key, train=train, **kwargs)
        return cast_floating(y, policy.output_dtype), cast_floating(new_state, policy.param_dtype)

    methods = dict(model.methods)
    if {"init_cache", "decode_step"} <= set(methods):
        methods.update(_decode_methods(model.methods, policy))
    return Layer(init, apply, model.kind, model.name, config=model.config, methods=methods)
