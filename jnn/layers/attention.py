"""Multi-head self-attention (with grouped key/value heads, masks, RoPE and a decode cache).

The layer projects ``x[B, T, F]`` to queries ``[B, T, N, H]`` and keys/values ``[B, T, K, H]``
(``K`` key/value heads shared by groups of ``N // K`` query heads: multi-query attention for
``K = 1``, grouped-query attention in between), attends with ``jax.nn.dot_product_attention``
and projects back to ``F``. :func:`reference_attention` is the same computation written out
(einsum + softmax), for tests and for the paths the fused kernel does not cover.

Masks: ``causal=True`` is fixed at construction; padding is given per call as
``apply(..., lengths=lengths)`` (``[B]`` integers: example ``b`` has ``lengths[b]`` valid positions
at the start and the rest are padding; every length must be >= 1). This is the one way to pass
a padding mask. Masked keys get exactly zero weight; outputs at padded *query* positions are
still computed (they attend to the valid keys) and should be ignored by the loss.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.layers.attention import multi_head_attention
  >>> attn = multi_head_attention(4, causal=True)
  >>> x = jnp.ones((2, 5, 16))
  >>> params, state = attn.init(jax.random.key(0), x)
  >>> params["query"]["w"].shape, params["out"]["w"].shape
  ((16, 16), (16, 16))
  >>> y, _ = attn.apply(params, state, x, lengths=jnp.array([5, 3]))
  >>> y.shape
  (2, 5, 16)
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, inferring_shape, layer_error, shape_of
from jnn.layers.positional import apply_rope

__all__ = ["multi_head_attention", "reference_attention", "attention_weights"]


def attention_weights(q: jax.Array, k: jax.Array, mask=None) -> jax.Array:
    """Softmax attention weights ``[B, N, T, S]``, computed in at least float32.

    Args:
      q: queries ``[B, T, N, H]``.
      k: keys ``[B, S, K, H]``; query head ``n`` uses key head ``n // (N // K)``.
      mask: optional boolean array broadcastable to ``[B, N, T, S]``; ``False`` entries get
        exactly zero weight (a row with no ``True`` entry is all zeros).
    """
    groups = q.shape[2] // k.shape[2]
    acc = initializers.param_dtype(q.dtype)  # float64 for float64, else float32
    k = jnp.repeat(k, groups, axis=2)
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(acc), k.astype(acc))
    logits = logits * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), acc)
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    mask = jnp.broadcast_to(mask, logits.shape)
    weights = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(acc).min), axis=-1)
    return jnp.where(mask, weights, jnp.zeros((), acc))


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask=None) -> jax.Array:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(H)) v``.

    Shapes: ``q: [B, T, N, H]``, ``k, v: [B, S, K, H]`` (``N`` divisible by ``K``), ``mask``
    broadcastable to ``[B, N, T, S]`` -> ``[B, T, N, H]`` in ``q``'s dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 3, 2, 4))
      >>> reference_attention(q, k, v).shape
      (1, 3, 2, 4)
    """
    weights = attention_weights(q, k, mask)
    return _mix(weights, v, q.dtype)


def _mix(weights, v, dtype):
    v = jnp.repeat(v, weights.shape[1] // v.shape[2], axis=2).astype(weights.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v).astype(dtype)


def _linear(params, x):
    y = x @ params["w"].astype(x.dtype)
    return y + params["b"].astype(x.dtype) if "b" in params else y


class _Attention(NamedTuple):
    """Validated hyperparameters and the pure functions of one attention layer."""

    label: str
    num_heads: int
    head_size: int | None
    num_kv_heads: int
    causal: bool
    dropout_rate: float
    use_bias: bool
    rope: bool
    rope_base: float
    w_init: Any
    b_init: Any
    implementation: str | None
    context_features: int | None = None

    def head_size_for(self, features: int) -> int:
        if self.head_size is not None:
            return self.head_size
        if features % self.num_heads:
            raise layer_error(self.label, f"the input width {features} must be divisible by num_heads="
                                          f"{self.num_heads}, or pass head_size")
        return features // self.num_heads

    def check_input(self, x, params=None) -> None:
        if len(x.shape) != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise layer_error(self.label, f"expected a floating-point sequence [B, T, F], got "
                                          f"{jnp.dtype(x.dtype).name}{list(x.shape)}")
        if params is not None and x.shape[2] != params["query"]["w"].shape[0]:
            raise layer_error(self.label, f"expected input of shape [B, T, {params['query']['w'].shape[0]}] "
                                          f"(the width it was initialized with), got {tuple(x.shape)}")

    def init(self, key, example):
        x = shape_of(example)
        self.check_input(x)
        features, size = x.shape[2], self.head_size_for(x.shape[2])
        if self.rope and size % 2:
            raise layer_error(self.label, f"rope=True needs an even head size, got {size}")
        dtype = initializers.param_dtype(x.dtype)
        kv_features = features if self.context_features is None else self.context_features
        shapes = {"query": (features, self.num_heads * size), "key": (kv_features, self.num_kv_heads * size),
                  "value": (kv_features, self.num_kv_heads * size), "out": (self.num_heads * size, features)}
        params = {}
        for (name, shape), (w_key, b_key) in zip(shapes.items(), jax.random.split(key, (4, 2))):
            params[name] = {"w": self.w_init(w_key, shape, dtype)}
            if self.use_bias:
                params[name]["b"] = self.b_init(b_key, shape[1:], dtype)
        return params, {}

    def project(self, params, x, heads: int):
        return _linear(params, x).reshape(*x.shape[:2], heads, -1)

    def qkv(self, params, x, positions):
        q = self.project(params["query"], x, self.num_heads)
        k = self.project(params["key"], x, self.num_kv_heads)
        v = self.project(params["value"], x, self.num_kv_heads)
        if self.rope:
            q, k = apply_rope(q, positions, base=self.rope_base), apply_rope(k, positions, base=self.rope_base)
        return q, k, v

    def attend(self, q, k, v, *, causal: bool, lengths=None, mask=None, key=None, train=False):
        """Attention over heads; ``mask`` (``[1|B, 1, T, S]`` bool) adds to causal/lengths."""
        checks.boolean(self.label, train=train)
        dropping = train and self.dropout_rate > 0
        if dropping and key is None:
            raise layer_error(self.label, f"train=True with dropout_rate={self.dropout_rate} needs a PRNG "
                                          f"key: call apply(..., key=jax.random.key(0), train=True)")
        if not dropping and q.dtype != jnp.float64:
            # jax.nn.dot_product_attention does its softmax in float32 even for float64 inputs,
            # so float64 (gradient checks) takes the explicit path below.
            return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                                key_value_seq_lengths=lengths,
                                                implementation=self.implementation)
        t, s = q.shape[1], k.shape[1]
        full = jnp.ones((1, 1, t, s), bool) if mask is None else mask
        if causal:
            full = full & jnp.tril(jnp.ones((t, s), bool))
        if lengths is not None:
            full = full & (jnp.arange(s) < lengths[:, None])[:, None, None, :]
        weights = attention_weights(q, k, full)
        if dropping:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout_rate, weights.shape)
            weights = jnp.where(keep, weights / jnp.asarray(1.0 - self.dropout_rate, weights.dtype),
                                jnp.zeros((), weights.dtype))
        return _mix(weights, v, q.dtype)

    def check_lengths(self, lengths, batch: int):
        if lengths is None:
            return None
        lengths = jnp.asarray(lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise layer_error(self.label, f"expected lengths as integers of shape [{batch}] (valid positions "
                                          f"per example), got {lengths.dtype}{list(lengths.shape)}")
        return lengths.astype(jnp.int32)

    def apply(self, params, state, x, *, key=None, train=False, lengths=None, context=None,
              context_lengths=None):
        self.check_input(x, params)
        b, t, _ = x.shape
        if context is None and self.context_features is not None and inferring_shape():
            context = jnp.zeros((b, 1, self.context_features), x.dtype)   # serial's init: the shape only
        if context is not None:
            return self.cross(params, x, context, context_lengths, lengths, key=key, train=train), state
        if context_lengths is not None:
            raise layer_error(self.label, "context_lengths was given without context (it masks the context's "
                                          "padding in cross-attention; use lengths= for self-attention)")
        if self.context_features not in (None, x.shape[-1]):
            raise layer_error(self.label, f"built with context_features={self.context_features} for cross-attention: "
                                          f"call apply(..., context=[B, S, {self.context_features}])")
        lengths = self.check_lengths(lengths, b)
        q, k, v = self.qkv(params, x, jnp.arange(t))
        out = self.attend(q, k, v, causal=self.causal, lengths=lengths, key=key, train=train)
        return _linear(params["out"], out.reshape(b, t, -1)), state

    def cross_kv(self, params, context, context_lengths=None) -> dict:
        """Keys/values ``[B, S, K, H]`` of the context (computed once per context), checked."""
        width = params["key"]["w"].shape[0]
        if (len(context.shape) != 3 or not jnp.issubdtype(context.dtype, jnp.floating)
                or context.shape[2] != width):
            raise layer_error(self.label, f"expected a floating-point context [B, S, {width}] for cross-attention, "
                                          f"got {jnp.dtype(context.dtype).name}{list(context.shape)}")
        if self.causal or self.rope:
            raise layer_error(self.label, "cross-attention (context=) needs causal=False and rope=False: "
                                          "the context's positions are not the queries'")
        kv = {"key": self.project(params["key"], context, self.num_kv_heads),
              "value": self.project(params["value"], context, self.num_kv_heads)}
        if context_lengths is not None:
            kv["lengths"] = self.check_lengths(context_lengths, context.shape[0])
        return kv

    def attend_kv(self, params, x, kv, *, key=None, train=False):
        """Queries from ``x[B, T, F]`` attending to precomputed ``cross_kv`` -> ``[B, T, F]``."""
        b, t, _ = x.shape
        if kv["key"].shape[0] != b:
            raise layer_error(self.label, f"the context has batch {kv['key'].shape[0]} but the input has {b}")
        q = self.project(params["query"], x, self.num_heads)
        out = self.attend(q, kv["key"].astype(q.dtype), kv["value"].astype(q.dtype), causal=False,
                          lengths=kv.get("lengths"), key=key, train=train)
        return _linear(params["out"], out.reshape(b, t, -1))

    def cross(self, params, x, context, context_lengths, lengths, *, key=None, train=False):
        if lengths is not None:
            raise layer_error(self.label, "lengths= masks self-attention keys; with context= pass "
                                          "context_lengths= for the context's padding")
        context = jnp.asarray(context)
        return self.attend_kv(params, x, self.cross_kv(params, context, context_lengths), key=key, train=train)

    def init_cache(self, batch: int, length: int, features: int, dtype) -> dict:
        shape = (batch, length, self.num_kv_heads, self.head_size_for(features))
        return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}

    def decode(self, params, cache, x, position):
        """Attention of ``x[B, T, F]`` at positions ``position .. position + T - 1`` over the cache
        (earlier entries) and itself; returns ``(y, cache)`` with the new keys/values written in."""
        b, t, _ = x.shape
        positions = position + jnp.arange(t)
        q, k, v = self.qkv(params, x, positions)
        start = (0, position, 0, 0)
        cache = {"key": jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), start),
                 "value": jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), start)}
        length = cache["key"].shape[1]
        mask = (jnp.arange(length)[None, :] <= positions[:, None])[None, None]
        keys, values = cache["key"].astype(q.dtype), cache["value"].astype(q.dtype)
        out = self.attend(q, keys, values, causal=False, mask=mask)
        return _linear(params["out"], out.reshape(b, t, -1)), cache


def _attention_spec(num_heads, *, head_size=None, num_kv_heads=None, causal=False, dropout_rate=0.0,
                    use_bias=True, rope=False, rope_base=10000.0, w_init="lecun_normal", b_init="zeros",
                    implementation=None, context_features=None, name=None) -> _Attention:
    label = name or "multi_head_attention"
    checks.positive_int(label, "num_heads", num_heads)
    checks.positive_int(label, "head_size", head_size, optional=True)
    checks.positive_int(label, "num_kv_heads", num_kv_heads, optional=True)
    checks.positive_int(label, "context_features", context_features, optional=True)
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"{label}: num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
    checks.boolean(label, causal=causal, use_bias=use_bias, rope=rope)
    rate = checks.rate(label, "dropout_rate", dropout_rate)
    if not isinstance(rate, float):
        raise ValueError(f"{label}: dropout_rate must be a Python number in [0, 1), got {dropout_rate!r}")
    checks.number_above(label, "rope_base", rope_base, 1)
    if implementation not in (None, "xla", "cudnn"):
        raise ValueError(f"{label}: implementation must be None, 'xla' or 'cudnn', got {implementation!r}")
    return _Attention(label, num_heads, head_size, num_kv_heads, causal, rate, use_bias, rope,
                      float(rope_base), initializers.get(w_init, where=f"{label} w_init"),
                      initializers.get(b_init, where=f"{label} b_init"), implementation, context_features)


def multi_head_attention(num_heads: int, *, head_size: int | None = None, num_kv_heads: int | None = None,
                         causal: bool = False, dropout_rate: float = 0.0, use_bias: bool = True,
                         rope: bool = False, rope_base: float = 10000.0, w_init="lecun_normal",
                         b_init="zeros", implementation: str | None = None,
                         context_features: int | None = None, name: str | None = None) -> Layer:
    """Multi-head attention ``[B, T, F] -> [B, T, F]``: self-attention, or cross-attention to a context.

    Params: ``query``: ``{"w": [F, N*H], "b": [N*H]}``; ``key`` and ``value``:
    ``{"w": [F, K*H], "b": [K*H]}``; ``out``: ``{"w": [N*H, F], "b": [F]}`` (heads are
    consecutive blocks of ``H`` columns). Params are float32 (float64 for float64 inputs);
    projections run in the input's dtype, the softmax in at least float32.

    ``apply(params, state, x, *, key=None, train=False, lengths=None)``: ``lengths`` (``[B]``
    ints) marks positions ``>= lengths[b]`` of example ``b`` as padding that no query attends to.

    Cross-attention: ``apply(params, state, x, context=c, context_lengths=None)`` takes queries
    from ``x[B, T, F]`` and keys/values from ``c[B, S, F_c]`` (``F_c`` is ``context_features``,
    default ``F``); ``context_lengths`` (``[B]`` ints) masks the context's padding. It needs
    ``causal=False`` and ``rope=False``.

    The kernel is ``jax.nn.dot_product_attention``, except with attention dropout in training
    and for float64 inputs, which use the explicit :func:`reference_attention` computation.

    Args:
      num_heads: query heads ``N`` (> 0).
      head_size: ``H``; default ``F // num_heads`` (``F`` must then be divisible by it).
      num_kv_heads: key/value heads ``K``, dividing ``num_heads``; default ``num_heads``.
      causal: position ``t`` attends to positions ``<= t`` only.
      dropout_rate: dropout on the attention weights in training, in ``[0, 1)``.
      use_bias: learn biases for the four projections.
      rope: rotate queries and keys by their positions (:func:`jnn.layers.positional.apply_rope`).
      rope_base: RoPE's rotation base.
      w_init, b_init: initializers (or names) of the projection weights and biases.
      implementation: passed to ``jax.nn.dot_product_attention`` (``None``, ``"xla"`` or
        ``"cudnn"``; ``None`` currently means XLA, ``"cudnn"`` is the fused GPU kernel for
        float16/bfloat16).
      context_features: width ``F_c`` of the cross-attention context (default ``F``).
      name: optional explicit key for this layer's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.attention import multi_head_attention
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
    spec = _attention_spec(num_heads, head_size=head_size, num_kv_heads=num_kv_heads, causal=causal,
                           dropout_rate=dropout_rate, use_bias=use_bias, rope=rope, rope_base=rope_base,
                           w_init=w_init, b_init=b_init, implementation=implementation,
                           context_features=context_features, name=name)
    return Layer(spec.init, spec.apply, "multi_head_attention", name,
                 frozenset({"lengths", "context", "context_lengths"}))
