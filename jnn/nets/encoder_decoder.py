"""An encoder-decoder transformer (Vaswani et al. 2017, pre-norm) with cached generation.

``apply(params, state, tokens, *, context, context_lengths=None)``: the encoder reads the source
token ids ``context[B, S]`` (padding after ``context_lengths[b]`` is masked everywhere), the
decoder reads the target ids ``tokens[B, T]`` with causal self-attention plus cross-attention to
the encoded source and returns logits ``[B, T, V]``. Source and target share the vocabulary, the
token embedding and (when tied) the output head.

Generation (:func:`jnn.generate.generate` with ``context=``): ``init_cache`` runs the encoder once
and stores every decoder block's cross-attention keys/values; each new token then costs one
``decode_step`` of the decoder alone.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.nets import encoder_decoder
  >>> from jnn.generate import generate
  >>> model = encoder_decoder(vocab_size=12, num_layers=2, num_heads=2, features=16, mlp_dim=32, max_len=20)
  >>> source, target = jnp.ones((3, 7), jnp.int32), jnp.ones((3, 5), jnp.int32)
  >>> params, state = model.init(jax.random.key(0), target)
  >>> model.apply(params, state, target, context=source)[0].shape
  (3, 5, 12)
  >>> generate(model, params, target[:, :1], 4, key=jax.random.key(1), temperature=0.0,
  ...          context=source, context_lengths=jnp.array([7, 3, 1])).shape
  (3, 5)
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnn import core
from jnn.core import layer_error, shape_of
from jnn.generate import Decoder
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm
from jnn.layers.transformer import _block
from jnn.nets.decoder_lm import check_sizes, make_stack
from jnn.nets.stack import Embedder, Stack

__all__ = ["encoder_decoder"]


class _EncoderDecoder(NamedTuple):
    embedder: Embedder
    encoder: Stack
    decoder: Stack
    dropout_rate: float

    @property
    def label(self):
        return self.embedder.label

    def init(self, key, example):
        tokens = shape_of(example)
        self.embedder.check_tokens(tokens)
        keys = jax.random.split(key, 3)
        params, x = self.embedder.init(keys[0], tokens)
        params["encoder"] = self.encoder.init(keys[1], x)
        params["encoder_norm"] = layer_norm().init(key, x)[0]
        params["decoder"] = self.decoder.init(keys[2], x)
        return params, {}

    def check_context(self, context, context_lengths):
        if context is None:
            raise layer_error(self.label, "expected the source as apply(..., context=[B, S] token ids)")
        context = jnp.asarray(context)
        self.embedder.check_tokens(context, "source ids (context=)")
        if context_lengths is not None:
            context_lengths = jnp.asarray(context_lengths)
            if context_lengths.shape != context.shape[:1] or not jnp.issubdtype(context_lengths.dtype, jnp.integer):
                raise layer_error(self.label, f"expected context_lengths as integers of shape [{context.shape[0]}], "
                                              f"got {context_lengths.dtype}{list(context_lengths.shape)}")
        return context, context_lengths

    def encode(self, params, context, context_lengths, keys=None, train=False):
        x = self.embedder.embed(params, context, jnp.arange(context.shape[1]))
        if keys is not None:
            x = dropout(self.dropout_rate).apply({}, {}, x, key=keys[0], train=train)[0]
        with core.child_scope("encoder"):
            x = self.encoder.apply(params["encoder"], x, self.block_keys(keys, 1), train, lengths=context_lengths)
        return layer_norm().apply(params["encoder_norm"], {}, x)[0]

    def block_keys(self, keys, i):
        if keys is None:
            return None
        stack = self.encoder if i == 1 else self.decoder
        return keys[i] if stack.scan else list(jax.random.split(keys[i], stack.n))

    def apply(self, params, state, tokens, *, key=None, train=False, context=None, context_lengths=None):
        self.embedder.check_tokens(tokens)
        context, context_lengths = self.check_context(context, context_lengths)
        if context.shape[0] != tokens.shape[0]:
            raise layer_error(self.label, f"the source has batch {context.shape[0]} but the target has {tokens.shape[0]}")
        if train and key is None and self.dropout_rate > 0:
            raise layer_error(self.label, "train=True with dropout needs a PRNG key: call "
                                          "apply(..., key=jax.random.key(0), train=True)")
        keys = None if key is None else jax.random.split(key, 4)
        memory = self.encode(params, context, context_lengths, keys, train)
        x = self.embedder.embed(params, tokens, jnp.arange(tokens.shape[1]))
        if keys is not None:
            x = dropout(self.dropout_rate).apply({}, {}, x, key=keys[3], train=train)[0]
        with core.child_scope("decoder"):
            x = self.decoder.apply(params["decoder"], x, self.block_keys(keys, 2), train, context=memory,
                                   context_lengths=context_lengths)
        return self.embedder.head(params, x), state

    def init_cache(self, batch, length=None, dtype=None, *, params=None, context=None, context_lengths=None):
        if params is None:
            raise layer_error(self.label, "init_cache needs params= and context= (the source is encoded once, "
                                          "into the cache)")
        context, context_lengths = self.check_context(context, context_lengths)
        if context.shape[0] != batch:
            raise layer_error(self.label, f"the source has batch {context.shape[0]}, expected {batch}")
        length = self.embedder.max_len if length is None else length
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype
        memory = self.encode(params, context, context_lengths)
        return {"self": self.decoder.init_cache(batch, length, self.embedder.features, dtype),
                "cross": self.decoder.cross_cache(params["decoder"], memory.astype(dtype), context_lengths)}

    def decode_step(self, params, cache, tokens, position):
        single = tokens.ndim == 1
        tokens = tokens[:, None] if single else tokens
        self.embedder.check_tokens(tokens)
        x = self.embedder.embed(params, tokens, position + jnp.arange(tokens.shape[1]))
        x, new = self.decoder.decode(params["decoder"], cache["self"], x, position, cache["cross"])
        logits = self.embedder.head(params, x)
        return (logits[:, 0] if single else logits), {"self": new, "cross": cache["cross"]}


def encoder_decoder(vocab_size: int, num_layers: int, num_heads: int, features: int, mlp_dim: int, max_len: int,
                    *, num_decoder_layers: int | None = None, tied: bool = True, dropout_rate: float = 0.0,
                    attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                    positional: str = "sinusoidal", scan_layers: bool = True, name: str | None = None) -> Decoder:
    """An encoder-decoder transformer: target ids ``[B, T]`` and ``context=`` source ids ``[B, S]``
    -> logits ``[B, T, V]``.

    Params: ``{"embedding", "position" (learned only), "encoder": {"blocks"} (or ``block_i``),
    "encoder_norm", "decoder": {"blocks"}, "final_norm", "head" (untied only)}``; encoder blocks
    are :func:`jnn.encoder_block`, decoder blocks ``decoder_block(..., cross_attention=True)``.

    Args:
      vocab_size, num_layers, num_heads, features, mlp_dim, max_len: sizes (> 0), shared by the
        encoder and decoder; ``max_len`` bounds both sequence lengths.
      num_decoder_layers: decoder depth (default ``num_layers``).
      tied: share the embedding table with the output head.
      dropout_rate, attention_dropout_rate: dropout on residual branches / attention weights.
      num_kv_heads: grouped key/value heads.
      positional: ``"sinusoidal"`` (default), ``"learned"`` or ``"rope"`` (self-attention only).
      scan_layers: stack each side's blocks and scan over them.
      name: optional explicit key for this model.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.encoder_decoder(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16,
      ...                             max_len=16)
      >>> source, target = jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 4), jnp.int32)
      >>> params, state = model.init(jax.random.key(0), target)
      >>> logits, _ = model.apply(params, state, target, context=source)
      >>> logits.shape
      (2, 4, 11)
    """
    label = name or "encoder_decoder"
    num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
    check_sizes(label, num_heads, features, positional, vocab_size=vocab_size, num_layers=num_layers,
                num_decoder_layers=num_decoder_layers, mlp_dim=mlp_dim, max_len=max_len)
    for what, flag in {"tied": tied, "scan_layers": scan_layers}.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{label}: {what} must be True or False, got {flag!r}")
    dropout(dropout_rate, name=label)
    rope = positional == "rope"
    block = lambda kind, causal, cross: lambda block_name: _block(
        kind, num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads, rope, causal,
        block_name, cross)
    encoder = make_stack(f"{label} encoder", "encoder_block", num_layers, scan_layers,
                         block("encoder_block", False, False))
    decoder = make_stack(f"{label} decoder", "decoder_block", num_decoder_layers, scan_layers,
                         block("decoder_block", True, True))
    model = _EncoderDecoder(Embedder(label, vocab_size, features, max_len, tied, positional), encoder, decoder,
                            float(dropout_rate))
    return Decoder(model.init, model.apply, "encoder_decoder", name, init_cache=model.init_cache,
                   decode_step=model.decode_step)
