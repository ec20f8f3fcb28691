"""Mixed precision: a dtype :class:`Policy` and :func:`with_policy`, which applies it to any layer."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jnn.core import Layer, ensure_layer, shape_of

__all__ = ["Policy", "mixed_bfloat16", "with_policy", "cast_floating"]


def cast_floating(tree, dtype):
    """Every floating leaf (array or ``ShapeDtypeStruct``) of ``tree`` cast to ``dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> cast_floating({"w": jnp.ones(2), "ids": jnp.arange(2)}, jnp.bfloat16)
      {'ids': Array([0, 1], dtype=int32), 'w': Array([1, 1], dtype=bfloat16)}
    """
    def cast(a):
        if not hasattr(a, "dtype") or not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == dtype:
            return a
        return jax.ShapeDtypeStruct(a.shape, dtype) if isinstance(a, jax.ShapeDtypeStruct) else a.astype(dtype)

    return jax.tree_util.tree_map(cast, tree)


class Policy(NamedTuple):
    """Dtypes of params and state, of ``apply``'s work (floating inputs and params cast to it), of outputs.

    Example:
      >>> import jax.numpy as jnp
      >>> Policy(compute_dtype=jnp.float16).checked().compute_dtype
      dtype('float16')
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.bfloat16
    output_dtype: Any = jnp.float32

    def checked(self) -> "Policy":
        def floating(field, value):
            try:
                if jnp.issubdtype(jnp.dtype(value), jnp.floating):
                    return jnp.dtype(value)
            except TypeError:
                pass
            raise ValueError(f"Policy: {field} must be a floating dtype, got {value!r}")

        return Policy(*(floating(field, value) for field, value in self._asdict().items()))


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
    """``model`` (same kind and name) under a dtype :class:`Policy` (default :func:`mixed_bfloat16`);
    a decoder's ``init_cache``/``decode_step`` follow it too (cache in ``compute_dtype``).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = with_policy(jnn.dense(2))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((4, 3)))
      >>> params["w"].dtype, model.apply(params, state, jnp.ones((4, 3)))[0].dtype
      (dtype('float32'), dtype('float32'))
    """
    ensure_layer("with_policy", model)
    policy = mixed_bfloat16() if policy is None else policy
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
