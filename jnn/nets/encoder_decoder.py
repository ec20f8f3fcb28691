"""An encoder-decoder transformer (Vaswani et al. 2017, pre-norm) with cached generation."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn import core
from jnn import _checks as checks
from jnn.core import Layer, shape_of
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm
from jnn.layers.transformer import decoder_block, encoder_block
from jnn.nets.stack import LM_RULES, block_stack, decoding, token_embedder

__all__ = ["encoder_decoder"]


def _side(label: str, side: str, fn, *args):
    """``fn(*args)``; a ValueError gains the side at fault (``"... (in the source, context=)"``)."""
    try:
        return fn(*args)
    except ValueError as e:
        message = str(e) if str(e).startswith(label) else f"{label}: {e}"
        raise ValueError(message if side.split(",")[0] in message else f"{message} (in the {side})") from e


def _source(label, embedder, context, context_lengths, batch: int):
    """The source ids and lengths as arrays, checked (``batch`` rows, the target's)."""
    checks.require(context is not None, label, "expected the source as apply(..., context=[B, S] token ids)")
    context = jnp.asarray(context)
    embedder.methods["check_tokens"](context, "source ids (context=)")
    checks.require(context.shape[0] == batch, label, f"the source has batch {context.shape[0]} but the target "
                                                     f"has {batch}")
    return context, checks.int_lengths(label, context_lengths, batch, "context_lengths")


@checks.declare(num_decoder_layers=checks.optional(checks.positive_int), **LM_RULES)
def encoder_decoder(vocab_size: int, num_layers: int, num_heads: int, features: int, mlp_dim: int, max_len: int,
                    *, num_decoder_layers: int | None = None, tied: bool = True, dropout_rate: float = 0.0,
                    attention_dropout_rate: float = 0.0, num_kv_heads: int | None = None,
                    positional: str = "sinusoidal", scan_layers: bool = True, attention_bias=None,
                    name: str | None = None) -> Layer:
    """An encoder-decoder transformer: target ids ``[B, T]`` and ``context=`` source ids ``[B, S]``
    (``context_lengths=[B]`` masks its padding everywhere) -> logits ``[B, T, V]``. For generation
    ``init_cache`` encodes the source once.

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
      attention_bias: the self-attentions' bias or mask hook (see :func:`jnn.decoder_lm`).
      name: optional explicit key for this model.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.encoder_decoder(vocab_size=11, num_layers=1, num_heads=1, features=8, mlp_dim=16,
      ...                             max_len=16)
      >>> source, target = jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 4), jnp.int32)
      >>> params, state = model.init(jax.random.key(0), target)
      >>> model.apply(params, state, target, context=source)[0].shape
      (2, 4, 11)
      >>> jnn.generate.generate(model, params, target[:, :1], 4, key=jax.random.key(1), temperature=0.0,
      ...                       context=source, context_lengths=jnp.array([6, 3])).shape
      (2, 5)
    """
    label = name or "encoder_decoder"
    checks.divides(label, "num_heads", num_heads, features, "features")
    embedder = token_embedder(label, vocab_size, features, max_len, tied, positional)
    options = dict(attention_dropout_rate=attention_dropout_rate, num_kv_heads=num_kv_heads, rope=positional == "rope",
                   attention_bias=attention_bias)
    encoder = block_stack(lambda block_label: encoder_block(num_heads, mlp_dim, dropout_rate, name=block_label,
                                                            **options),
                          num_layers, scan=scan_layers, label=f"{label} encoder")
    decoder = block_stack(lambda block_label: decoder_block(num_heads, mlp_dim, dropout_rate, cross_attention=True,
                                                            name=block_label, **options),
                          num_layers if num_decoder_layers is None else num_decoder_layers, scan=scan_layers,
                          label=f"{label} decoder")
    residual_dropout = dropout(dropout_rate)

    def init(key, example):
        tokens = shape_of(example)
        _side(label, "target, the token ids", embedder.methods["check_tokens"], tokens)
        keys = jax.random.split(key, 3)
        params, _ = embedder.init(keys[0], tokens)
        x = jax.ShapeDtypeStruct((*tokens.shape, features), params["embedding"]["embedding"].dtype)
        return {**params, "encoder": encoder.init(keys[1], x)[0], "encoder_norm": layer_norm().init(key, x)[0],
                "decoder": decoder.init(keys[2], x)[0]}, {}

    def encode(params, context, context_lengths, batch, keys=(None,) * 4, train=False):   # -> (lengths, memory)
        context, context_lengths = _source(label, embedder, context, context_lengths, batch)
        x = embedder.methods["embed"](params, context, jnp.arange(context.shape[1]))
        x = residual_dropout.apply({}, {}, x, key=keys[0], train=train)[0]
        x, _ = core.apply_child("encoder", encoder, params, {}, x, key=keys[1], train=train, lengths=context_lengths)
        return context_lengths, layer_norm().apply(params["encoder_norm"], {}, x)[0]

    def apply(params, state, tokens, *, key=None, train=False, context=None, context_lengths=None):
        _side(label, "target, the token ids", embedder.methods["check_tokens"], tokens)
        checks.key_for(label, train and dropout_rate > 0, key)
        keys = core.split_key(key, 4)
        context_lengths, memory = _side(label, "source, context=", encode, params, context, context_lengths,
                                        tokens.shape[0], keys, train)
        x = _side(label, "target, the token ids", embedder.methods["embed"], params, tokens,
                  jnp.arange(tokens.shape[1]))
        x = residual_dropout.apply({}, {}, x, key=keys[3], train=train)[0]
        x, _ = core.apply_child("decoder", decoder, params, {}, x, key=keys[2], train=train, context=memory,
                                context_lengths=context_lengths)
        return embedder.methods["head"](params, x), state

    def init_cache(batch, length=None, dtype=None, *, params=None, context=None, context_lengths=None):
        checks.require(params is not None, label, "init_cache needs params= and context= (the source is encoded once)")
        length = max_len if length is None else length
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype
        context_lengths, memory = _side(label, "source, context=", encode, params, context, context_lengths, batch)
        return {"self": decoder.methods["init_cache"](batch, length, features, dtype),
                "cross": decoder.methods["cross_cache"](params["decoder"], memory.astype(dtype), context_lengths)}

    def step(params, cache, x, position):
        x, new = decoder.methods["decode"](params["decoder"], cache["self"], x, position, cache["cross"])
        return x, {"self": new, "cross": cache["cross"]}

    methods = {"init_cache": init_cache, "decode_step": decoding(embedder, step)}
    return Layer(init, apply, "encoder_decoder", name, methods=methods)
