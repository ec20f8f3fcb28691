"""Transformer blocks and models: pre-norm encoder/decoder blocks, a decoder-only language
model with a key/value-cached decode path, and a ViT classifier.

A block is ``x + drop(attention(LN(x)))`` then ``x + MLP(LN(x))`` with ``MLP = dense(mlp_dim) ->
GELU -> dense(F) -> dropout``. Block params: ``{"norm_0", "attention", "norm_1", "mlp":
{"dense_0", "dense_1"}}``. Blocks take padding as ``apply(..., lengths=[B] ints)`` like
:func:`jnn.layers.attention.multi_head_attention`; they declare it (``Layer.keywords``), so
``serial`` and the other combinators route ``lengths`` to them.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jnn.layers.transformer import decoder_lm
  >>> lm = decoder_lm(vocab_size=50, num_layers=2, num_heads=2, features=16, mlp_dim=32, max_len=64)
  >>> tokens = jnp.zeros((3, 10), jnp.int32)
  >>> params, state = lm.init(jax.random.key(0), tokens)
  >>> lm.apply(params, state, tokens)[0].shape
  (3, 10, 50)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnn import core
from jnn.core import Layer, layer_error, named, serial, shape_of, stateless
from jnn.layers.activations import gelu
from jnn._checks import positive_int as _check_positive_int
from jnn.layers.attention import _Attention, _attention_spec
from jnn.layers.basic import dense
from jnn.layers.dropout import dropout
from jnn.layers.embedding import attend, embedding
from jnn.layers.norm import layer_norm
from jnn.layers.positional import learned_positional_embedding, sinusoidal_table

__all__ = ["encoder_block", "decoder_block", "decoder_lm", "vit_classifier", "DecoderLM"]


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

    def needs_key(self) -> bool:
        return self.dropout_rate > 0 or self.attention.dropout_rate > 0

    def init(self, key, example):
        x = shape_of(example)
        self.attention.check_input(x)
        attn_key, mlp_key = jax.random.split(key)
        norm = layer_norm().init(key, x)[0]
        return {"norm_0": norm, "attention": self.attention.init(attn_key, x)[0], "norm_1": norm,
                "mlp": self.mlp.init(mlp_key, x)[0]}, {}

    def apply(self, params, state, x, *, key=None, train=False, lengths=None):
        if train and key is None and self.needs_key():
            raise layer_error(self.label, "train=True with dropout needs a PRNG key: call "
                                          "apply(..., key=jax.random.key(0), train=True)")
        keys = core._split(key, 3)
        h, _ = core._apply_child("norm_0", layer_norm(), params, {}, x, None, False)
        with core._in_child("attention"):
            h, _ = self.attention.apply(params["attention"], {}, h, key=keys[0], train=train, lengths=lengths)
            core._record("multi_head_attention", h, params["attention"])
        x = x + dropout(self.dropout_rate).apply({}, {}, h, key=keys[1], train=train)[0]
        h, _ = core._apply_child("norm_1", layer_norm(), params, {}, x, None, False)
        return x + core._apply_child("mlp", self.mlp, params, {}, h, keys[2], train)[0], state

    def decode(self, params, cache, x, position):
        h = layer_norm().apply(params["norm_0"], {}, x)[0]
        h, cache = self.attention.decode(params["attention"], cache, h, position)
        x = x + h
        return x + self.mlp.apply(params["mlp"], {}, layer_norm().apply(params["norm_1"], {}, x)[0])[0], cache


def _block(kind, num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads, rope,
           causal, name) -> _Block:
    label = name or kind
    _check_positive_int(label, "mlp_dim", mlp_dim)
    attention = _attention_spec(num_heads, num_kv_heads=num_kv_heads, causal=causal, rope=rope,
                                dropout_rate=attention_dropout_rate, name=f"{label} attention")
    dropout(dropout_rate, name=label)  # validates the rate
    return _Block(label, attention, _mlp(mlp_dim, dropout_rate), float(dropout_rate))


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
    return Layer(block.init, block.apply, "encoder_block", name, frozenset({"lengths"}))


def decoder_block(num_heads: int, mlp_dim: int, dropout_rate: float = 0.0, *,
                  attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                  rope: bool = False, name: str | None = None) -> Layer:
    """Pre-norm causal transformer block: position ``t`` sees positions ``<= t`` only.

    Same arguments and params as :func:`encoder_block`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import decoder_block
      >>> block = decoder_block(2, 32, rope=True)
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
      >>> block.apply(params, state, jnp.ones((1, 5, 8)))[0].shape
      (1, 5, 8)
    """
    block = _block("decoder_block", num_heads, mlp_dim, dropout_rate, attention_dropout_rate, num_kv_heads,
                   rope, True, name)
    return Layer(block.init, block.apply, "decoder_block", name, frozenset({"lengths"}))


class DecoderLM(Layer):
    """A :class:`jnn.Layer` (token ids ``[B, T]`` -> logits ``[B, T, V]``) with a cached decode path.

    ``apply`` is a bound method of the object implementing the model; ``init_cache`` and
    ``decode_step`` delegate to that object (so wrappers such as ``jnn.precision.with_policy``
    can keep the decode path).
    """

    __slots__ = ()

    def init_cache(self, batch: int, length: int | None = None, dtype=None) -> dict:
        """Zero key/value caches ``{"block_i": {"key", "value": [batch, length, K, H]}}``;
        ``length`` defaults to ``max_len``, ``dtype`` to the params' (float32, or float64 with x64)."""
        return self.apply.__self__.init_cache(batch, length, dtype)

    def decode_step(self, params, cache, tokens, position):
        """Logits for ``tokens`` (``[B]`` or ``[B, T]``) at positions ``position, ...``, attending to
        the cache, and the cache with their keys/values written in: ``(logits, cache)``.

        ``position + T`` must not exceed the cache length (not checked under ``jit``)."""
        return self.apply.__self__.decode_step(params, cache, tokens, position)


class _LM(NamedTuple):
    label: str
    vocab_size: int
    features: int
    max_len: int
    tied: bool
    positional: str
    dropout_rate: float
    blocks: tuple

    def check_tokens(self, tokens) -> None:
        if len(tokens.shape) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise layer_error(self.label, f"expected integer token ids [B, T], got "
                                          f"{jnp.dtype(tokens.dtype).name}{list(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise layer_error(self.label, f"expected at most max_len={self.max_len} tokens, got {tokens.shape[1]}")

    def init(self, key, example):
        tokens = shape_of(example)
        self.check_tokens(tokens)
        keys = iter(jax.random.split(key, len(self.blocks) + 3))
        table = embedding(self.vocab_size, self.features, init=jax.nn.initializers.normal(self.features ** -0.5))
        params = {"embedding": table.init(next(keys), tokens)[0]}
        x = jax.ShapeDtypeStruct((*tokens.shape, self.features), params["embedding"]["embedding"].dtype)
        if self.positional == "learned":
            params["position"] = learned_positional_embedding(self.max_len).init(next(keys), x)[0]
        for i, block in enumerate(self.blocks):
            params[f"block_{i}"] = block.init(next(keys), x)[0]
        params["final_norm"] = layer_norm().init(key, x)[0]
        if not self.tied:
            params["head"] = dense(self.vocab_size).init(next(keys), x)[0]
        return params, {}

    def embed(self, params, tokens, positions):
        x = embedding(self.vocab_size, self.features).apply(params["embedding"], {}, tokens)[0]
        x = x * jnp.asarray(math.sqrt(self.features), x.dtype)
        if self.positional == "learned":
            x = x + jnp.take(params["position"]["embedding"], positions, axis=0).astype(x.dtype)
        elif self.positional == "sinusoidal":
            x = x + sinusoidal_table(positions, self.features, x.dtype)
        return x

    def head(self, params, x):
        x = layer_norm().apply(params["final_norm"], {}, x)[0]
        return attend(params["embedding"], x) if self.tied else dense(self.vocab_size).apply(params["head"], {}, x)[0]

    def apply(self, params, state, tokens, *, key=None, train=False):
        self.check_tokens(tokens)
        if train and key is None and self.dropout_rate > 0:
            raise layer_error(self.label, "train=True with dropout needs a PRNG key: call "
                                          "apply(..., key=jax.random.key(0), train=True)")
        keys = core._split(key, len(self.blocks) + 1)
        x = self.embed(params, tokens, jnp.arange(tokens.shape[1]))
        x = dropout(self.dropout_rate).apply({}, {}, x, key=keys[-1], train=train)[0]
        for i, block in enumerate(self.blocks):
            with core._in_child(f"block_{i}"):
                x, _ = block.apply(params[f"block_{i}"], {}, x, key=keys[i], train=train)
                core._record("decoder_block", x, params[f"block_{i}"])
        return self.head(params, x), state

    def init_cache(self, batch, length=None, dtype=None):
        length = self.max_len if length is None else length
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype  # as the embedding
        return {f"block_{i}": block.attention.init_cache(batch, length, self.features, dtype)
                for i, block in enumerate(self.blocks)}

    def decode_step(self, params, cache, tokens, position):
        single = tokens.ndim == 1
        tokens = tokens[:, None] if single else tokens
        self.check_tokens(tokens)
        x = self.embed(params, tokens, position + jnp.arange(tokens.shape[1]))
        new_cache = {}
        for i, block in enumerate(self.blocks):
            x, new_cache[f"block_{i}"] = block.decode(params[f"block_{i}"], cache[f"block_{i}"], x, position)
        logits = self.head(params, x)
        return (logits[:, 0] if single else logits), new_cache


def decoder_lm(vocab_size: int, num_layers: int, num_heads: int, features: int, mlp_dim: int, max_len: int,
               tied: bool = True, *, dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               num_kv_heads: int | None = None, positional: str = "learned",
               name: str | None = None) -> DecoderLM:
    """A decoder-only (GPT-style) language model: token ids ``[B, T]`` -> logits ``[B, T, V]``.

    Token embedding (``normal(features ** -0.5)`` rows, scaled by ``sqrt(features)`` on the way
    in) plus positions, dropout, ``num_layers`` :func:`decoder_block`\\ s, a final layer norm and
    a head: tied (``logits = h @ embedding.T``) or untied (``head: {"w", "b"}``).
    Params: ``{"embedding", "position" (learned only), "block_0", ..., "final_norm", "head"
    (untied only)}``. The result is a :class:`DecoderLM`, so ``init_cache``/``decode_step`` run it
    one token at a time (see :mod:`jnn.generate`).

    Args:
      vocab_size, num_layers, num_heads, features, mlp_dim, max_len: sizes (> 0); ``features``
        must be divisible by ``num_heads``.
      tied: share the embedding table with the output head.
      dropout_rate: dropout on embeddings and on each residual branch.
      attention_dropout_rate: dropout on attention weights.
      num_kv_heads: grouped key/value heads.
      positional: ``"learned"``, ``"sinusoidal"`` or ``"rope"`` (rotary, in every attention layer).
      name: optional explicit key for this model.
    """
    label = name or "decoder_lm"
    for what, value in {"vocab_size": vocab_size, "num_layers": num_layers, "num_heads": num_heads,
                        "features": features, "mlp_dim": mlp_dim, "max_len": max_len}.items():
        _check_positive_int(label, what, value)
    if features % num_heads:
        raise ValueError(f"{label}: features ({features}) must be divisible by num_heads ({num_heads})")
    if not isinstance(tied, bool):
        raise ValueError(f"{label}: tied must be True or False, got {tied!r}")
    if positional not in ("learned", "sinusoidal", "rope"):
        raise ValueError(f"{label}: positional must be 'learned', 'sinusoidal' or 'rope', got {positional!r}")
    dropout(dropout_rate, name=label)  # validates the rate
    blocks = tuple(_block("decoder_block", num_heads, mlp_dim, dropout_rate, attention_dropout_rate,
                          num_kv_heads, positional == "rope", True, f"{label} block_{i}")
                   for i in range(num_layers))
    lm = _LM(label, vocab_size, features, max_len, tied, positional, float(dropout_rate), blocks)
    return DecoderLM(lm.init, lm.apply, "decoder_lm", name)


def _patchify(patch_size: tuple[int, int]) -> Layer:
    ph, pw = patch_size

    def fn(x):
        if x.ndim != 4 or x.shape[1] % ph or x.shape[2] % pw:
            raise layer_error("patchify", f"expected images [B, H, W, C] with H divisible by {ph} and W by "
                                          f"{pw}, got shape {tuple(x.shape)}")
        b, h, w, c = x.shape
        x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)

    return stateless("patchify", fn)


def _class_token() -> Layer:
    def init(key, example):
        x = shape_of(example)
        return {"token": jnp.zeros((x.shape[-1],), x.dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        token = jnp.broadcast_to(params["token"].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([token, x], axis=1), state

    return Layer(init, apply, "class_token", None)


def vit_classifier(patch_size, num_layers: int, num_heads: int, features: int, mlp_dim: int,
                   num_classes: int, *, pool: str = "cls", dropout_rate: float = 0.0,
                   name: str | None = None) -> Layer:
    """A Vision Transformer classifier (Dosovitskiy et al. 2021): ``[B, H, W, C] -> [B, num_classes]``.

    Non-overlapping ``patch_size`` patches (a strided reshape) -> ``dense(features)`` -> class
    token (``pool="cls"``) -> learned positions (as many as seen at init) -> ``num_layers``
    :func:`encoder_block`\\ s -> layer norm -> the class token's vector (``"cls"``) or the mean
    over patches (``"mean"``) -> ``dense(num_classes)``. Built with :func:`jnn.serial`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.transformer import vit_classifier
      >>> vit = vit_classifier(7, num_layers=1, num_heads=2, features=16, mlp_dim=32, num_classes=10)
      >>> params, state = vit.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> vit.apply(params, state, jnp.zeros((4, 28, 28, 1)))[0].shape
      (4, 10)
    """
    label = name or "vit_classifier"
    patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(patch_size) != 2:
        raise ValueError(f"{label}: patch_size must be an int or a pair of ints, got {patch_size!r}")
    for what, value in {"patch_size": patch_size[0], "patch width": patch_size[1], "num_layers": num_layers,
                        "features": features, "num_classes": num_classes}.items():
        _check_positive_int(label, what, value)
    _check_positive_int(label, "num_heads", num_heads)
    if features % num_heads:
        raise ValueError(f"{label}: features ({features}) must be divisible by num_heads ({num_heads})")
    if pool not in ("cls", "mean"):
        raise ValueError(f"{label}: pool must be 'cls' or 'mean', got {pool!r}")
    pooling = (lambda x: x[:, 0]) if pool == "cls" else (lambda x: jnp.mean(x, axis=1))
    layers = [named("patch_embedding", serial(_patchify(patch_size), dense(features)))]
    layers += [named("class_token", _class_token())] if pool == "cls" else []
    layers += [named("position", learned_positional_embedding(None))]
    layers += [dropout(dropout_rate)] if dropout_rate else []
    layers += [encoder_block(num_heads, mlp_dim, dropout_rate) for _ in range(num_layers)]
    layers += [named("final_norm", layer_norm()), stateless(f"{pool}_pool", pooling),
               named("head", dense(num_classes))]
    return serial(*layers, name=name)
