"""Multi-head attention (grouped key/value heads, bias and mask, RoPE, a decode cache), and ALiBi and
sliding-window helpers for its ``attention_bias`` hook (guides/custom_attention.md).

Queries ``[B, T, N, H]`` attend to keys/values ``[B, S, K, H]`` (``K`` heads shared by groups of
``N // K`` query heads) with ``jax.nn.dot_product_attention``, or on CPU (``implementation=None``)
as :func:`reference_attention`, the same computation written out. ``layer.methods`` hold the paths
the decoder blocks' generation runs: ``cross_kv(params, context, context_lengths=None)`` -> the
context's keys/values (computed once); ``attend_kv(params, x, kv, *, key=None, train=False,
bias=None, mask=None)`` -> queries from ``x`` over them; ``init_cache(batch, length, features,
dtype)`` -> an empty key/value cache; ``decode(params, cache, x, position)`` -> ``(y, cache)``:
``x[B, T, F]`` at positions ``position, ...`` over the cache and itself, its keys/values written in.
``ATTENTION_KEYWORDS`` are the extra ``apply`` keywords the layer declares (``lengths``, ``bias``,
``mask``, ``context``, ``context_lengths``), so combinators route them.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, check_keywords, inferring_shape, shape_of
from jnn.layers.basic import flat_matmul
from jnn.layers.positional import apply_rope

__all__ = ["multi_head_attention", "reference_attention", "attention_weights", "alibi_bias", "sliding_window_mask",
           "ATTENTION_KEYWORDS"]


def attention_weights(q: jax.Array, k: jax.Array, mask=None, bias=None) -> jax.Array:
    """Softmax attention weights ``[B, N, T, S]``, computed in at least float32.

    ``q: [B, T, N, H]``; ``k: [B, S, K, H]`` (query head ``n`` uses key head ``n // (N // K)``);
    ``bias`` (added to the logits) and boolean ``mask`` broadcastable to ``[B, N, T, S]``: ``False``
    entries get exactly zero weight (a row with no ``True`` entry is all zeros).
    """
    groups = q.shape[2] // k.shape[2]
    acc = initializers.param_dtype(q.dtype)  # float64 for float64, else float32
    k = jnp.repeat(k, groups, axis=2)
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(acc), k.astype(acc))
    logits = logits * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), acc)
    logits = logits if bias is None else logits + jnp.asarray(bias).astype(acc)
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    mask = jnp.broadcast_to(mask, logits.shape)
    weights = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(acc).min), axis=-1)
    return jnp.where(mask, weights, jnp.zeros((), acc))


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask=None, bias=None) -> jax.Array:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(H) + bias) v``.

    Shapes: ``q: [B, T, N, H]``, ``k, v: [B, S, K, H]`` (``N`` divisible by ``K``), ``mask`` and
    ``bias`` broadcastable to ``[B, N, T, S]`` -> ``[B, T, N, H]`` in ``q``'s dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 3, 2, 4))
      >>> reference_attention(q, k, v).shape
      (1, 3, 2, 4)
    """
    return _mix(attention_weights(q, k, mask, bias), v, q.dtype)


def _mix(weights, v, dtype):
    v = jnp.repeat(v, weights.shape[1] // v.shape[2], axis=2).astype(weights.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v).astype(dtype)


def _distance(query_positions, key_positions):
    """``|t - s|`` ``[T, S]`` for positions ``[T]``, ``[S]`` or lengths (``T`` for ``arange(T)``)."""
    at = lambda p: jnp.arange(p) if isinstance(p, int) else jnp.asarray(p)
    return jnp.abs(at(query_positions)[:, None] - at(key_positions)[None, :])


@checks.declare(num_heads=checks.positive_int)
def alibi_bias(num_heads: int, query_positions, key_positions) -> jax.Array:
    """ALiBi's attention bias ``[N, T, S]`` (Press et al. 2022): ``-m_n |t - s|``, ``m_n = 2^(-8 (n+1) / N)``.

    Positions are integer arrays ``[T]``, ``[S]`` or lengths (``T`` means ``arange(T)``). As a hook:
    ``multi_head_attention(N, causal=True, attention_bias=lambda q, k: alibi_bias(N, q, k))``.

    Example:
      >>> alibi_bias(2, 3, 3)[0].tolist()
      [[0.0, -0.0625, -0.125], [-0.0625, 0.0, -0.0625], [-0.125, -0.0625, 0.0]]
    """
    slopes = 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1) / num_heads)
    return slopes[:, None, None] * -_distance(query_positions, key_positions)


@checks.declare(window=checks.positive_int)
def sliding_window_mask(query_positions, key_positions, window: int) -> jax.Array:
    """Boolean mask ``[T, S]``, ``True`` where ``|t - s| < window`` (with ``causal=True``: the
    ``window`` latest positions). Positions as for :func:`alibi_bias`.

    Example:
      >>> sliding_window_mask(4, 4, 2).astype(int).tolist()
      [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    """
    return _distance(query_positions, key_positions) < window


def _linear(params, x):
    y = flat_matmul(x, params["w"].astype(x.dtype))
    return y + params["b"].astype(x.dtype) if "b" in params else y


def _heads(params, x, heads: int):
    return _linear(params, x).reshape(*x.shape[:2], heads, -1)


def _attend(label, rate, implementation, hook, q, k, v, positions=None, *, causal: bool, lengths=None, bias=None,
            mask=None, key=None, train=False):
    """Attention over heads: ``bias`` and ``mask`` (checked, broadcastable to ``[B, N, T, S]``) add to
    causal/lengths, and so does ``hook(*positions)`` (queries', keys') unless ``positions`` is None."""
    shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    bias, mask = checks.attention_operand(label, "bias", bias, shape), checks.attention_operand(label, "mask", mask,
                                                                                                shape, True)
    if hook is not None and positions is not None:
        extra = checks.attention_operand(label, "attention_bias's result", hook(*positions), shape, None)
        if extra.dtype == bool:
            mask = extra if mask is None else mask & extra
        else:
            bias = extra if bias is None else bias + extra
    train = checks.flag(label, "train", train)
    dropping = train and rate > 0
    checks.key_for(label, dropping, key, f"dropout_rate={rate}")
    if not dropping and q.dtype != jnp.float64 and (implementation or jax.default_backend() != "cpu"):
        # float64 (gradient checks) takes the explicit path below: jax.nn.dot_product_attention does
        # its softmax in float32. On CPU the explicit einsums run faster (benchmarks/RESULTS.md).
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal,
                                            key_value_seq_lengths=lengths, implementation=implementation)
    t, s = q.shape[1], k.shape[1]
    padding = None if lengths is None else (jnp.arange(s) < lengths[:, None])[:, None, None, :]
    masks = [m for m in (mask, jnp.tril(jnp.ones((t, s), bool)) if causal else None, padding) if m is not None]
    full = functools.reduce(jnp.logical_and, masks) if masks else None
    weights = attention_weights(q, k, full, bias)
    if dropping:
        keep = jax.random.bernoulli(key, 1.0 - rate, weights.shape)
        weights = jnp.where(keep, weights / jnp.asarray(1.0 - rate, weights.dtype), jnp.zeros((), weights.dtype))
    return _mix(weights, v, q.dtype)


def _head_size(label: str, num_heads: int, head_size: int | None, features: int) -> int:
    checks.require(head_size is not None or features % num_heads == 0, label,
                   f"the input width {features} must be divisible by num_heads={num_heads}, or pass head_size")
    return features // num_heads if head_size is None else head_size


def _cross_methods(label, causal, rope, kv_heads, num_heads, attend) -> dict:
    """``cross_kv`` (a context's keys/values, computed once) and ``attend_kv`` (queries over them)."""

    def cross_kv(params, context, context_lengths=None) -> dict:
        width = params["key"]["w"].shape[0]
        checks.float_array(label, context, 3, f"context [B, S, {width}] for cross-attention", width)
        checks.require(not (causal or rope), label, "cross-attention (context=) needs causal=False and rope=False: "
                                                    "the context's positions are not the queries'")
        kv = {"key": _heads(params["key"], context, kv_heads), "value": _heads(params["value"], context, kv_heads)}
        if context_lengths is not None:
            kv["lengths"] = checks.int_lengths(label, context_lengths, context.shape[0], note=_PER_EXAMPLE)
        return kv

    def attend_kv(params, x, kv, *, key=None, train=False, bias=None, mask=None):
        b, t, _ = x.shape
        checks.require(kv["key"].shape[0] == b, label,
                       f"the context has batch {kv['key'].shape[0]} but the input has {b}")
        q = _heads(params["query"], x, num_heads)
        out = attend(q, kv["key"].astype(q.dtype), kv["value"].astype(q.dtype), causal=False,
                     lengths=kv.get("lengths"), bias=bias, mask=mask, key=key, train=train)
        return _linear(params["out"], out.reshape(b, t, -1))

    return {"cross_kv": cross_kv, "attend_kv": attend_kv}


def _cache_methods(kv_heads, size_for, qkv, attend) -> dict:
    """``init_cache`` (an empty key/value cache) and ``decode`` (cached steps)."""

    def init_cache(batch: int, length: int, features: int, dtype) -> dict:
        shape = (batch, length, kv_heads, size_for(features))
        return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}

    def decode(params, cache, x, position):
        b, t, _ = x.shape
        positions, cached = position + jnp.arange(t), jnp.arange(cache["key"].shape[1])
        q, k, v = qkv(params, x, positions)
        start = (0, position, 0, 0)
        cache = {"key": jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), start),
                 "value": jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), start)}
        mask = (cached[None, :] <= positions[:, None])[None, None]
        out = attend(q, cache["key"].astype(q.dtype), cache["value"].astype(q.dtype), (positions, cached),
                     causal=False, mask=mask)
        return _linear(params["out"], out.reshape(b, t, -1)), cache

    return {"init_cache": init_cache, "decode": decode}


ATTENTION_KEYWORDS = frozenset({"lengths", "bias", "mask", "context", "context_lengths"})
_PER_EXAMPLE = " (valid positions per example)"


@checks.declare(num_heads=checks.positive_int, head_size=checks.optional(checks.positive_int),
                num_kv_heads=checks.optional(checks.positive_int),
                context_features=checks.optional(checks.positive_int), causal=checks.flag,
                use_bias=checks.flag, rope=checks.flag, dropout_rate=checks.static_rate, rope_base=checks.above(1),
                rope_scaling=checks.rope_scaling, implementation=checks.one_of(None, "xla", "cudnn"),
                attention_bias=checks.attention_hook)
def multi_head_attention(num_heads: int, *, head_size: int | None = None, num_kv_heads: int | None = None,
                         causal: bool = False, dropout_rate: float = 0.0, use_bias: bool = True,
                         rope: bool = False, rope_base: float = 10000.0, rope_scaling: dict | None = None,
                         w_init="lecun_normal",
                         b_init="zeros", implementation: str | None = None,
                         context_features: int | None = None, attention_bias=None, name: str | None = None) -> Layer:
    """Multi-head attention ``[B, T, F] -> [B, T, F]``: self-attention, or cross-attention to a context.

    Params ``query``/``key``/``value``/``out``, each ``{"w", "b"}`` (``[F, N*H]``, ``[F, K*H]``,
    ``[F, K*H]``, ``[N*H, F]``), float32 (float64 for float64 inputs); the softmax runs in at least
    float32. ``apply`` keywords: ``lengths=[B]`` (valid keys per example), ``bias=`` (added to the
    logits) and boolean ``mask=`` (``False``: no attention), both broadcastable to ``[B, N, T, S]``
    (e.g. ``[T, S]``); ``context=c[B, S, F_c], context_lengths=None`` cross-attends (needs
    ``causal=False``, ``rope=False``). Attention dropout, float64 and CPU use :func:`reference_attention`.

    Args:
      num_heads: query heads ``N`` (> 0).
      head_size: ``H``; default ``F // num_heads`` (``F`` must then be divisible by it).
      num_kv_heads: key/value heads ``K``, dividing ``num_heads``; default ``num_heads``.
      causal: position ``t`` attends to positions ``<= t`` only.
      dropout_rate: dropout on the attention weights in training, in ``[0, 1)``.
      use_bias: learn biases for the four projections.
      rope: rotate queries and keys by their positions (:func:`jnn.layers.positional.apply_rope`).
      rope_base, rope_scaling: RoPE's rotation base and frequency scaling (see ``apply_rope``).
      w_init, b_init: initializers (or names) of the projection weights and biases.
      implementation: passed to ``jax.nn.dot_product_attention`` (``None``, ``"xla"``, ``"cudnn"``).
      context_features: width ``F_c`` of the cross-attention context (default ``F``).
      attention_bias: self-attention hook ``(query_positions [T], key_positions [S]) -> array``
        broadcastable to ``[B, N, T, S]``, added as ``bias`` if float, and-ed into ``mask`` if
        boolean (:func:`alibi_bias`, :func:`sliding_window_mask`); ``decode`` passes true positions.
      name: optional explicit key for this layer's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.attention import multi_head_attention
      >>> attn, x = multi_head_attention(4, causal=True), jnp.ones((2, 5, 16))
      >>> params, state = attn.init(jax.random.key(0), x)
      >>> attn.apply(params, state, x, lengths=jnp.array([5, 3]), mask=jnp.eye(5, dtype=bool))[0].shape
      (2, 5, 16)
      >>> cross = multi_head_attention(2, context_features=6)
      >>> params, _ = cross.init(jax.random.key(0), jnp.zeros((1, 3, 4)))
      >>> y, _ = cross.apply(params, {}, jnp.ones((1, 3, 4)), context=jnp.ones((1, 7, 6)),
      ...                    context_lengths=jnp.array([5]))
      >>> y.shape, params["key"]["w"].shape
      ((1, 3, 4), (6, 4))
      >>> gqa = multi_head_attention(8, num_kv_heads=2, head_size=4)
      >>> params, _ = gqa.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 6, 32), jnp.float32))
      >>> params["query"]["w"].shape, params["key"]["w"].shape
      ((32, 32), (32, 8))
    """
    label = name or "multi_head_attention"
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    checks.require(num_heads % kv_heads == 0, label, f"num_kv_heads ({kv_heads}) must divide num_heads ({num_heads})")
    w_fn = initializers.get(w_init, where=f"{label} w_init")
    b_fn = initializers.get(b_init, where=f"{label} b_init")
    size_for = functools.partial(_head_size, label, num_heads, head_size)
    attend = functools.partial(_attend, label, dropout_rate, implementation, attention_bias)

    def init(key, example):
        x = shape_of(example)
        checks.float_sequence(label, x)
        features, size = x.shape[2], size_for(x.shape[2])
        checks.require(not (rope and size % 2), label, f"rope=True needs an even head size, got {size}")
        dtype = initializers.param_dtype(x.dtype)
        kv_features = features if context_features is None else context_features
        shapes = {"query": (features, num_heads * size), "key": (kv_features, kv_heads * size),
                  "value": (kv_features, kv_heads * size), "out": (num_heads * size, features)}
        params = {}
        for (part, shape), (w_key, b_key) in zip(shapes.items(), jax.random.split(key, (4, 2))):
            params[part] = {"w": w_fn(w_key, shape, dtype)}
            if use_bias:
                params[part]["b"] = b_fn(b_key, shape[1:], dtype)
        return params, {}

    def qkv(params, x, positions):
        q, k, v = (_heads(params[p], x, n) for p, n in (("query", num_heads), ("key", kv_heads), ("value", kv_heads)))
        if rope:
            rotate = functools.partial(apply_rope, positions=positions, base=rope_base, scaling=rope_scaling)
            q, k = rotate(q), rotate(k)
        return q, k, v

    cross = _cross_methods(label, causal, rope, kv_heads, num_heads, attend)

    def apply(params, state, x, *, key=None, train=False, lengths=None, bias=None, mask=None, context=None,
              context_lengths=None, **unknown):
        check_keywords(label, ATTENTION_KEYWORDS, unknown)
        checks.float_sequence(label, x, params["query"]["w"].shape[0])
        b, t, _ = x.shape
        if context is None and context_features is not None and inferring_shape():
            context = jnp.zeros((b, 1, context_features), x.dtype)   # serial's init: the shape only
        if context is not None:
            checks.require(lengths is None, label, "lengths= masks self-attention keys; with context= pass "
                                                   "context_lengths= for the context's padding")
            kv = cross["cross_kv"](params, jnp.asarray(context), context_lengths)
            return cross["attend_kv"](params, x, kv, key=key, train=train, bias=bias, mask=mask), state
        checks.require(context_lengths is None, label, "context_lengths was given without context (it masks the "
                       "context's padding in cross-attention; use lengths= for self-attention)")
        checks.require(context_features in (None, x.shape[-1]), label, f"built with context_features="
                       f"{context_features} for cross-attention: call apply(..., context=[B, S, {context_features}])")
        positions = jnp.arange(t)
        q, k, v = qkv(params, x, positions)
        lengths = checks.int_lengths(label, lengths, b, note=_PER_EXAMPLE)
        out = attend(q, k, v, (positions, positions), causal=causal, lengths=lengths, bias=bias, mask=mask,
                     key=key, train=train)
        return _linear(params["out"], out.reshape(b, t, -1)), state

    return Layer(init, apply, "multi_head_attention", name, ATTENTION_KEYWORDS,
                 methods={**cross, **_cache_methods(kv_heads, size_for, qkv, attend)})
