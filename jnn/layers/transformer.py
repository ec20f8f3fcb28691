"""Transformer blocks: pre-norm encoder and decoder blocks (whole models are in :mod:`jnn.nets`).

A block is ``x + drop(attention(N(x)))`` then ``x + MLP(N(x))`` (``N``: layer or RMS norm; ``MLP``:
``dense(mlp_dim) -> GELU -> dense(F) -> dropout``, or SwiGLU; ``BLOCK_RULES`` check these style
options); with ``cross_attention=True`` a decoder block adds ``x + drop(cross_attention(N(x),
context))`` after the self-attention. ``apply`` takes ``lengths=``, ``context=`` and
``context_lengths=`` as :func:`jnn.layers.attention.multi_head_attention`.
``block.methods``: ``init_cache(batch, length, features, dtype)``, ``decode(params, cache, x,
position, cross_kv=None) -> (y, cache)`` and, when cross-attending, ``cross_cache(params, context,
context_lengths=None)`` (the context's keys/values for ``decode``).
"""
from __future__ import annotations

import functools

import jax

from jnn import core
from jnn import _checks as checks
from jnn.combinators import composite, serial
from jnn.core import Layer, shape_of
from jnn.layers.activations import gelu
from jnn.layers.attention import multi_head_attention
from jnn.layers.basic import dense
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm, rms_norm

__all__ = ["encoder_block", "decoder_block", "BLOCK_RULES"]

#: The rules of the blocks' (and :func:`jnn.decoder_lm`'s) style options.
BLOCK_RULES = dict(norm=checks.one_of("layer", "rms"), norm_epsilon=checks.above(0), use_bias=checks.flag,
                   mlp=checks.one_of("gelu", "gelu_tanh", "swiglu"), rope_base=checks.above(1),
                   rope_scaling=checks.rope_scaling)


def _mlp(mlp_dim: int, dropout_rate: float, kind: str = "gelu", use_bias: bool = True) -> Layer:
    """``dense_0(mlp_dim) -> gelu -> dense_1(F) -> dropout`` (``F``: the input width), or SwiGLU:
    ``dense_1(silu(gate(x)) * dense_0(x)) -> dropout``."""
    linear = functools.partial(dense, use_bias=use_bias)
    swiglu = lambda call, x: call("dropout", call("dense_1", jax.nn.silu(call("gate", x)) * call("dense_0", x)))

    def make(features):
        if kind != "swiglu":
            return serial(linear(mlp_dim), gelu(kind == "gelu_tanh"), linear(features), dropout(dropout_rate))
        return composite(swiglu, {"gate": linear(mlp_dim), "dense_0": linear(mlp_dim), "dense_1": linear(features),
                                  "dropout": dropout(dropout_rate)}, kind="swiglu")

    def init(key, example):
        return make(shape_of(example).shape[-1]).init(key, example)

    def apply(params, state, x, *, key=None, train=False):
        return make(params["dense_0"]["w"].shape[0]).apply(params, state, x, key=key, train=train)

    return Layer(init, apply, "mlp", None, config={"mlp_dim": mlp_dim, "dropout_rate": dropout_rate, "kind": kind,
                                                   "use_bias": use_bias})


def _block(kind, label, name, attention, cross, mlp_dim, dropout_rate, norm, mlp_kind, use_bias) -> Layer:
    """A pre-norm block over its (self-)attention layer and optional cross-attention layer."""
    mlp = _mlp(mlp_dim, dropout_rate, mlp_kind, use_bias)
    needs_key = max(dropout_rate, attention.config["dropout_rate"]) > 0
    residual_dropout = dropout(dropout_rate)
    children = [("norm_0", norm), ("attention", attention)]
    if cross is not None:
        children += [("norm_cross", norm), ("cross_attention", cross)]
    children = core.Children(children + [("norm_1", norm), ("mlp", mlp)])

    def init(key, example):
        x = shape_of(example)
        keys = dict(zip(("attention", "mlp", "cross_attention"), jax.random.split(key, 3)))
        attention_params = attention.init(keys["attention"], x)[0]   # first: it checks the input
        # (a fresh init per norm: no shared buffers)
        return {k: attention_params if k == "attention" else child.init(keys.get(k, key), x)[0]
                for k, child in children.items()}, {}

    def apply(params, state, x, *, key=None, train=False, lengths=None, context=None, context_lengths=None):
        checks.key_for(label, train and needs_key, key)
        checks.require(cross is not None or (context is None and context_lengths is None), label, "got context= but "
                       "this block has no cross-attention (build it with decoder_block(..., cross_attention=True))")
        # (under serial's init, which learns the shape only, its cross-attention stands in a context)
        checks.require(cross is None or context is not None or core.inferring_shape(), label,
                       "this block cross-attends: call apply(..., context=[B, S, F_c])")
        keys = core.split_key(key, 5)
        h, _ = core.apply_child("norm_0", norm, params, {}, x)
        h, _ = core.apply_child("attention", attention, params, {}, h, key=keys[0], train=train, lengths=lengths)
        x = x + residual_dropout.apply({}, {}, h, key=keys[1], train=train)[0]
        if cross is not None:
            h, _ = core.apply_child("norm_cross", norm, params, {}, x)
            h, _ = core.apply_child("cross_attention", cross, params, {}, h, key=keys[3], train=train,
                                    context=context, context_lengths=context_lengths)
            x = x + residual_dropout.apply({}, {}, h, key=keys[4], train=train)[0]
        h, _ = core.apply_child("norm_1", norm, params, {}, x)
        return x + core.apply_child("mlp", mlp, params, {}, h, key=keys[2], train=train)[0], state

    def decode(params, cache, x, position, cross_kv=None):
        normed = lambda part, x: norm.apply(params[part], {}, x)[0]
        h, cache = attention.methods["decode"](params["attention"], cache, normed("norm_0", x), position)
        x = x + h
        if cross is not None:
            x = x + cross.methods["attend_kv"](params["cross_attention"], normed("norm_cross", x), cross_kv)
        return x + mlp.apply(params["mlp"], {}, normed("norm_1", x))[0], cache

    def cross_cache(params, context, context_lengths=None) -> dict:
        return cross.methods["cross_kv"](params["cross_attention"], context, context_lengths)

    methods = {"init_cache": attention.methods["init_cache"], "decode": decode}
    if cross is not None:
        methods["cross_cache"] = cross_cache
    keywords = {"lengths", "context", "context_lengths"} if cross is not None else {"lengths"}
    return Layer(init, apply, kind, name, keywords, children, methods=methods)


def _attention(label, what, num_heads, **options) -> Layer:
    """The block's attention layer keyed ``what`` (unnamed), its messages read ``"<label> <what>: ..."``."""
    return multi_head_attention(num_heads, name=f"{label} {what}", **options)._replace(name=None)


@checks.declare(mlp_dim=checks.positive_int, dropout_rate=checks.rate, attention_bias=checks.attention_hook,
                **BLOCK_RULES)
def encoder_block(num_heads: int, mlp_dim: int, dropout_rate: float = 0.0, *,
                  attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                  rope: bool = False, attention_bias=None, norm: str = "layer", norm_epsilon: float = 1e-5,
                  mlp: str = "gelu", use_bias: bool = True, rope_base: float = 10000.0,
                  rope_scaling: dict | None = None, name: str | None = None) -> Layer:
    """Pre-norm transformer encoder block (bidirectional self-attention), ``[B, T, F] -> [B, T, F]``.

    Args:
      num_heads: attention heads (must divide ``F``).
      mlp_dim: hidden width of the MLP.
      dropout_rate: dropout on the attention and MLP outputs before each residual add.
      attention_dropout_rate: dropout on the attention weights.
      num_kv_heads: grouped key/value heads (see ``multi_head_attention``).
      rope: rotary position embeddings in the attention.
      attention_bias: the self-attention's bias or mask hook (see ``multi_head_attention``).
      norm, norm_epsilon: ``"layer"`` (params ``scale``, ``offset``) or ``"rms"`` norms (``scale``).
      mlp: ``"gelu"``, ``"gelu_tanh"`` (the tanh approximation) or ``"swiglu"`` (params ``gate``,
        ``dense_0``, ``dense_1``: ``dense_1(silu(gate(x)) * dense_0(x))``).
      use_bias: biases in the attention and MLP projections.
      rope_base, rope_scaling: RoPE's base and scaling (:func:`jnn.layers.positional.apply_rope`).
      name: optional explicit key for this block's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import encoder_block
      >>> block = encoder_block(2, 32)
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
      >>> sorted(params)
      ['attention', 'mlp', 'norm_0', 'norm_1']
    """
    label = name or "encoder_block"
    attention = _attention(label, "attention", num_heads, num_kv_heads=num_kv_heads, rope=rope, use_bias=use_bias,
                           dropout_rate=attention_dropout_rate, attention_bias=attention_bias,
                           rope_base=rope_base, rope_scaling=rope_scaling)
    return _block("encoder_block", label, name, attention, None, mlp_dim, dropout_rate,
                  (layer_norm if norm == "layer" else rms_norm)(epsilon=norm_epsilon), mlp, use_bias)


@checks.declare(mlp_dim=checks.positive_int, dropout_rate=checks.rate, cross_attention=checks.flag,
                attention_bias=checks.attention_hook, **BLOCK_RULES)
def decoder_block(num_heads: int, mlp_dim: int, dropout_rate: float = 0.0, *,
                  attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                  rope: bool = False, cross_attention: bool = False, context_features: int | None = None,
                  attention_bias=None, norm: str = "layer", norm_epsilon: float = 1e-5, mlp: str = "gelu",
                  use_bias: bool = True, rope_base: float = 10000.0, rope_scaling: dict | None = None,
                  name: str | None = None) -> Layer:
    """Pre-norm causal transformer block: position ``t`` sees positions ``<= t`` only.

    Same arguments (style options included) and params as :func:`encoder_block`, plus
    ``cross_attention=True``: after the causal self-attention, cross-attention to ``apply(...,
    context=[B, S, F_c], context_lengths=[B])`` (``F_c``: ``context_features``, default ``F``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import decoder_block
      >>> block = decoder_block(2, 32, rope=True, cross_attention=True)
      >>> params, _ = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
      >>> y, _ = block.apply(params, {}, jnp.ones((1, 5, 8)), context=jnp.ones((1, 7, 8)))
      >>> y.shape, sorted(params)
      ((1, 5, 8), ['attention', 'cross_attention', 'mlp', 'norm_0', 'norm_1', 'norm_cross'])
    """
    label = name or "decoder_block"
    attention = _attention(label, "attention", num_heads, num_kv_heads=num_kv_heads, causal=True, rope=rope,
                           dropout_rate=attention_dropout_rate, attention_bias=attention_bias, use_bias=use_bias,
                           rope_base=rope_base, rope_scaling=rope_scaling)
    cross = None
    if cross_attention:
        cross = _attention(label, "cross_attention", num_heads, num_kv_heads=num_kv_heads, use_bias=use_bias,
                           dropout_rate=attention_dropout_rate, context_features=context_features)
    checks.require(cross_attention or context_features is None, label,
                   "context_features is only used with cross_attention=True")
    return _block("decoder_block", label, name, attention, cross, mlp_dim, dropout_rate,
                  (layer_norm if norm == "layer" else rms_norm)(epsilon=norm_epsilon), mlp, use_bias)

