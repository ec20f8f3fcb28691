"""Transformer blocks: pre-norm encoder and decoder blocks (whole models are in :mod:`jnn.nets`).

A block is ``x + drop(attention(LN(x)))`` then ``x + MLP(LN(x))`` with ``MLP = dense(mlp_dim) ->
GELU -> dense(F) -> dropout``. Block params: ``{"norm_0", "attention", "norm_1", "mlp":
{"dense_0", "dense_1"}}``. A decoder block with ``cross_attention=True`` adds
``x + drop(cross_attention(LN(x), context))`` after the self-attention (params ``"norm_cross"``,
``"cross_attention"``). Blocks take padding as ``apply(..., lengths=[B] ints)`` and the context as
``apply(..., context=[B, S, F_c], context_lengths=[B] ints)`` like
:func:`jnn.layers.attention.multi_head_attention`; they declare these keywords
(``Layer.keywords``), so ``serial`` and the other combinators route them.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.layers.transformer import decoder_block
  >>> block = decoder_block(2, 32, cross_attention=True)
  >>> params, _ = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
  >>> y, _ = block.apply(params, {}, jnp.ones((1, 5, 8)), context=jnp.ones((1, 7, 8)))
  >>> y.shape, sorted(params)
  ((1, 5, 8), ['attention', 'cross_attention', 'mlp', 'norm_0', 'norm_1', 'norm_cross'])
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnn import core
from jnn.combinators import serial
from jnn.core import Layer, layer_error, shape_of
from jnn.layers.activations import gelu
from jnn import _checks as checks
from jnn.layers.attention import _Attention, _attention_spec
from jnn.layers.basic import dense
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm

__all__ = ["encoder_block", "decoder_block"]


def _mlp(mlp_dim: int, dropout_rate: float) -> Layer:
    """``dense(mlp_dim) -> gelu -> dense(F) -> dropout`` where ``F`` is the input width."""
    make = lambda features: serial(dense(mlp_dim), gelu(), dense(features), dropout(dropout_rate))

    def init(key, example):
        return make(shape_of(example).shape[-1]).init(key, example)

    def apply(params, state, x, *, key=None, train=False):
        return make(params["dense_0"]["w"].shape[0]).apply(params, state, x, key=key, train=train)

    return Layer(init, apply, "mlp", None)


class _Block(NamedTuple):
    label: str
    attention: _Attention
    mlp: Layer
    dropout_rate: float
    cross: _Attention | None = None

    def needs_key(self) -> bool:
        cross_rate = self.cross.dropout_rate if self.cross is not None else 0.0
        return self.dropout_rate > 0 or self.attention.dropout_rate > 0 or cross_rate > 0

    def init(self, key, example):
        x = shape_of(example)
        self.attention.check_input(x)
        attn_key, mlp_key, cross_key = jax.random.split(key, 3)
        norm = lambda: layer_norm().init(key, x)[0]   # a fresh array per norm: no shared buffers
        params = {"norm_0": norm(), "attention": self.attention.init(attn_key, x)[0]}
        if self.cross is not None:
            params.update(norm_cross=norm(), cross_attention=self.cross.init(cross_key, x)[0])
        return {**params, "norm_1": norm(), "mlp": self.mlp.init(mlp_key, x)[0]}, {}

    def check_context(self, context, context_lengths):
        if self.cross is None and (context is not None or context_lengths is not None):
            raise layer_error(self.label, "got context= but this block has no cross-attention (build it with "
                                          "decoder_block(..., cross_attention=True))")
        if self.cross is not None and context is None and not core.inferring_shape():
            # (under serial's init, which learns the shape only, its cross-attention stands in a context)
            raise layer_error(self.label, "this block cross-attends: call apply(..., context=[B, S, F_c])")

    def apply(self, params, state, x, *, key=None, train=False, lengths=None, context=None, context_lengths=None):
        if train and key is None and self.needs_key():
            raise layer_error(self.label, "train=True with dropout needs a PRNG key: call "
                                          "apply(..., key=jax.random.key(0), train=True)")
        self.check_context(context, context_lengths)
        keys = core.split_key(key, 5)
        h, _ = core.apply_child("norm_0", layer_norm(), params, {}, x)
        with core.child_scope("attention"):
            h, _ = self.attention.apply(params["attention"], {}, h, key=keys[0], train=train, lengths=lengths)
            core.record("multi_head_attention", h, params["attention"])
        x = x + dropout(self.dropout_rate).apply({}, {}, h, key=keys[1], train=train)[0]
        if self.cross is not None:
            h, _ = core.apply_child("norm_cross", layer_norm(), params, {}, x)
            with core.child_scope("cross_attention"):
                h, _ = self.cross.apply(params["cross_attention"], {}, h, key=keys[3], train=train,
                                        context=context, context_lengths=context_lengths)
                core.record("multi_head_attention", h, params["cross_attention"])
            x = x + dropout(self.dropout_rate).apply({}, {}, h, key=keys[4], train=train)[0]
        h, _ = core.apply_child("norm_1", layer_norm(), params, {}, x)
        return x + core.apply_child("mlp", self.mlp, params, {}, h, key=keys[2], train=train)[0], state

    def decode(self, params, cache, x, position, cross_kv=None):
        """One cached step: ``cache`` holds the self-attention keys/values; ``cross_kv`` (from
        :meth:`cross_cache`) the context's, computed once."""
        h = layer_norm().apply(params["norm_0"], {}, x)[0]
        h, cache = self.attention.decode(params["attention"], cache, h, position)
        x = x + h
        if self.cross is not None:
            h = layer_norm().apply(params["norm_cross"], {}, x)[0]
            x = x + self.cross.attend_kv(params["cross_attention"], h, cross_kv)
        return x + self.mlp.apply(params["mlp"], {}, layer_norm().apply(params["norm_1"], {}, x)[0])[0], cache

    def cross_cache(self, params, context, context_lengths=None) -> dict:
        """The cross-attention keys/values of ``context`` (``{"key", "value"[, "lengths"]}``)."""
        return self.cross.cross_kv(params["cross_attention"], context, context_lengths)

    def children(self) -> core.Children:
        """The sub-layers under their param keys, for :func:`jnn.get` and ``block["mlp"]``."""
        attention = lambda spec: Layer(spec.init, spec.apply, "multi_head_attention", None,
                                       frozenset({"lengths", "context", "context_lengths"}))
        items = [("norm_0", layer_norm()), ("attention", attention(self.attention))]
        if self.cross is not None:
            items += [("norm_cross", layer_norm()), ("cross_attention", attention(self.cross))]
        return core.Children(items + [("norm_1", layer_norm()), ("mlp", self.mlp)])


def _block(kind, num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads, rope,
           causal, name, cross_attention=False, context_features=None) -> _Block:
    label = name or kind
    checks.positive_int(label, "mlp_dim", mlp_dim)
    attention = _attention_spec(num_heads, num_kv_heads=num_kv_heads, causal=causal, rope=rope,
                                dropout_rate=attention_dropout_rate, name=f"{label} attention")
    if not isinstance(cross_attention, bool):
        raise ValueError(f"{label}: cross_attention must be True or False, got {cross_attention!r}")
    cross = None
    if cross_attention:
        cross = _attention_spec(num_heads, num_kv_heads=num_kv_heads, dropout_rate=attention_dropout_rate,
                                context_features=context_features, name=f"{label} cross_attention")
    elif context_features is not None:
        raise ValueError(f"{label}: context_features is only used with cross_attention=True")
    dropout(dropout_rate, name=label)  # validates the rate
    return _Block(label, attention, _mlp(mlp_dim, dropout_rate), float(dropout_rate), cross)


def encoder_block(num_heads: int, mlp_dim: int, dropout_rate: float = 0.0, *,
                  attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                  rope: bool = False, name: str | None = None) -> Layer:
    """Pre-norm transformer encoder block (bidirectional self-attention), ``[B, T, F] -> [B, T, F]``.

    Args:
      num_heads: attention heads (must divide ``F``).
      mlp_dim: hidden width of the MLP.
      dropout_rate: dropout on the attention and MLP outputs before each residual add.
      attention_dropout_rate: dropout on the attention weights.
      num_kv_heads: grouped key/value heads (see ``multi_head_attention``).
      rope: rotary position embeddings in the attention.
      name: optional explicit key for this block's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import encoder_block
      >>> block = encoder_block(2, 32)
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
      >>> sorted(params)
      ['attention', 'mlp', 'norm_0', 'norm_1']
    """
    block = _block("encoder_block", num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads,
                   rope, False, name)
    return Layer(block.init, block.apply, "encoder_block", name, frozenset({"lengths"}), block.children())


def decoder_block(num_heads: int, mlp_dim: int, dropout_rate: float = 0.0, *,
                  attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                  rope: bool = False, cross_attention: bool = False, context_features: int | None = None,
                  name: str | None = None) -> Layer:
    """Pre-norm causal transformer block: position ``t`` sees positions ``<= t`` only.

    Same arguments and params as :func:`encoder_block`, plus ``cross_attention=True``: after the
    causal self-attention, cross-attention to ``apply(..., context=[B, S, F_c],
    context_lengths=[B])`` (``F_c`` is ``context_features``, default ``F``; the context is required).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import decoder_block
      >>> block = decoder_block(2, 32, rope=True)
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
      >>> block.apply(params, state, jnp.ones((1, 5, 8)))[0].shape
      (1, 5, 8)
    """
    block = _block("decoder_block", num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads,
                   rope, True, name, cross_attention, context_features)
    keywords = {"lengths", "context", "context_lengths"} if cross_attention else {"lengths"}
    return Layer(block.init, block.apply, "decoder_block", name, frozenset(keywords), block.children())

