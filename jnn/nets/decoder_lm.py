"""A decoder-only (GPT-style) language model with a key/value-cached decode path.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.nets import decoder_lm
  >>> lm = decoder_lm(vocab_size=50, num_layers=2, num_heads=2, features=16, mlp_dim=32, max_len=64)
  >>> tokens = jnp.zeros((3, 10), jnp.int32)
  >>> params, state = lm.init(jax.random.key(0), tokens)
  >>> lm.apply(params, state, tokens)[0].shape
  (3, 10, 50)
  >>> deep = decoder_lm(50, 8, 2, 16, 32, 64, scan_layers=True)  # one compiled block for any depth
  >>> deep.init(jax.random.key(0), tokens)[0]["blocks"]["attention"]["query"]["w"].shape
  (8, 16, 16)
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnn import core
from jnn.core import layer_error, shape_of
from jnn.generate import Decoder
from jnn import _checks as checks
from jnn.layers.basic import identity
from jnn.layers.dropout import dropout
from jnn.layers.remat import remat
from jnn.layers.transformer import _block
from jnn.nets.stack import Embedder, Stack

__all__ = ["decoder_lm"]


class _LM(NamedTuple):
    embedder: Embedder
    stack: Stack
    dropout_rate: float

    @property
    def label(self):
        return self.embedder.label

    def init(self, key, example):
        tokens = shape_of(example)
        self.embedder.check_tokens(tokens)
        embed_key, stack_key = jax.random.split(key)
        params, x = self.embedder.init(embed_key, tokens)
        return {**params, **self.stack.init(stack_key, x)}, {}

    def apply(self, params, state, tokens, *, key=None, train=False):
        self.embedder.check_tokens(tokens)
        if train and key is None and self.dropout_rate > 0:
            raise layer_error(self.label, "train=True with dropout needs a PRNG key: call "
                                          "apply(..., key=jax.random.key(0), train=True)")
        keys = core.split_key(key, self.stack.n + 1)
        x = self.embedder.embed(params, tokens, jnp.arange(tokens.shape[1]))
        x = dropout(self.dropout_rate).apply({}, {}, x, key=keys[-1], train=train)[0]
        block_keys = None if key is None else (keys[0] if self.stack.scan else keys[:-1])
        x = self.stack.apply(params, x, block_keys, train)
        return self.embedder.head(params, x), state

    def init_cache(self, batch, length=None, dtype=None):
        length = self.embedder.max_len if length is None else length
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype  # as the embedding
        return self.stack.init_cache(batch, length, self.embedder.features, dtype)

    def decode_step(self, params, cache, tokens, position):
        single = tokens.ndim == 1
        tokens = tokens[:, None] if single else tokens
        self.embedder.check_tokens(tokens)
        x = self.embedder.embed(params, tokens, position + jnp.arange(tokens.shape[1]))
        x, cache = self.stack.decode(params, cache, x, position)
        logits = self.embedder.head(params, x)
        return (logits[:, 0] if single else logits), cache


def check_sizes(label, num_heads, features, positional, **sizes) -> None:
    for what, value in {"num_heads": num_heads, "features": features, **sizes}.items():
        checks.positive_int(label, what, value)
    if features % num_heads:
        raise ValueError(f"{label}: features ({features}) must be divisible by num_heads ({num_heads})")
    if positional not in ("learned", "sinusoidal", "rope"):
        raise ValueError(f"{label}: positional must be 'learned', 'sinusoidal' or 'rope', got {positional!r}")


def make_stack(label, kind, num_layers, scan_layers, make_block, remat_policy=None) -> Stack:
    if not isinstance(scan_layers, bool):
        raise ValueError(f"{label}: scan_layers must be True or False, got {scan_layers!r}")
    if remat_policy is not None:
        remat(identity(), policy=remat_policy)  # validates the policy name
    names = [f"{label} blocks"] if scan_layers else [f"{label} block_{i}" for i in range(num_layers)]
    return Stack(tuple(make_block(n) for n in names), num_layers, scan_layers, kind, remat_policy)


def decoder_lm(vocab_size: int, num_layers: int, num_heads: int, features: int, mlp_dim: int, max_len: int,
               tied: bool = True, *, dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               num_kv_heads: int | None = None, positional: str = "learned", scan_layers: bool = False,
               remat: str | None = None, name: str | None = None) -> Decoder:
    """A decoder-only (GPT-style) language model: token ids ``[B, T]`` -> logits ``[B, T, V]``.

    Token embedding (``normal(features ** -0.5)`` rows, scaled by ``sqrt(features)`` on the way
    in) plus positions, dropout, ``num_layers`` :func:`jnn.decoder_block`\\ s, a final layer norm
    and a head: tied (``logits = h @ embedding.T``) or untied (``head: {"w", "b"}``).
    Params: ``{"embedding", "position" (learned only), "block_0", ..., "final_norm", "head"
    (untied only)}``; with ``scan_layers=True`` the blocks are one ``"blocks"`` entry stacked
    along a leading ``[num_layers]`` axis and run by ``lax.scan`` (:func:`jnn.layers.repeat.repeat`;
    convert with ``unstack_params(params["blocks"], "block")``). The result is a
    :class:`jnn.generate.Decoder`, so ``init_cache``/``decode_step`` run it one token at a time.

    Args:
      vocab_size, num_layers, num_heads, features, mlp_dim, max_len: sizes (> 0); ``features``
        must be divisible by ``num_heads``.
      tied: share the embedding table with the output head.
      dropout_rate: dropout on embeddings and on each residual branch.
      attention_dropout_rate: dropout on attention weights.
      num_kv_heads: grouped key/value heads.
      positional: ``"learned"``, ``"sinusoidal"`` or ``"rope"`` (rotary, in every attention layer).
      scan_layers: stack the blocks and scan over them (compile time independent of depth).
      remat: ``None``, or a :func:`jnn.remat` policy applied to every block (``"nothing"``: keep
        only each block's input for the backward pass).
      name: optional explicit key for this model.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.decoder_lm(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16, max_len=16)
      >>> tokens = jnp.zeros((2, 5), jnp.int32)
      >>> params, state = lm.init(jax.random.key(0), tokens)
      >>> logits, _ = lm.apply(params, state, tokens)
      >>> logits.shape
      (2, 5, 11)
    """
    label = name or "decoder_lm"
    check_sizes(label, num_heads, features, positional, vocab_size=vocab_size, num_layers=num_layers,
                mlp_dim=mlp_dim, max_len=max_len)
    if not isinstance(tied, bool):
        raise ValueError(f"{label}: tied must be True or False, got {tied!r}")
    dropout(dropout_rate, name=label)  # validates the rate
    stack = make_stack(label, "decoder_block", num_layers, scan_layers, lambda block_name: _block(
        "decoder_block", num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads,
        positional == "rope", True, block_name), remat)
    lm = _LM(Embedder(label, vocab_size, features, max_len, tied, positional), stack, float(dropout_rate))
    return Decoder(lm.init, lm.apply, "decoder_lm", name, init_cache=lm.init_cache, decode_step=lm.decode_step)
