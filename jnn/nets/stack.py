"""Parts of :mod:`jnn.nets`' language models: block stack, token embedder and head, decode step."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jnn import core
from jnn import _checks as checks
from jnn.core import Layer, layer_error
from jnn.layers.basic import dense
from jnn.layers.embedding import attend, embedding
from jnn.layers.norm import layer_norm
from jnn.layers.positional import learned_positional_embedding, sinusoidal_table
from jnn.layers.remat import remat
from jnn.layers.repeat import repeat

__all__ = ["block_stack", "token_embedder", "decoding", "LM_RULES"]

#: The size, flag and choice rules shared by the language models' factories.
LM_RULES = dict(vocab_size=checks.positive_int, num_layers=checks.positive_int, num_heads=checks.positive_int,
                features=checks.positive_int, mlp_dim=checks.positive_int, max_len=checks.positive_int,
                tied=checks.flag, scan_layers=checks.flag, dropout_rate=checks.rate,
                positional=checks.one_of("learned", "sinusoidal", "rope"), attention_bias=checks.attention_hook)


def decoding(embedder: Layer, single_step):
    """``decode_step(params, cache, tokens [B] or [B, T], position) -> (logits, cache)`` around
    ``single_step(params, cache, x, position) -> (x, cache)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> io = token_embedder("lm", 10, 4, 8, True, "sinusoidal")
      >>> params, _ = io.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
      >>> decoding(io, lambda params, cache, x, position: (x, cache))(params, {}, jnp.array([3]), 0)[0].shape
      (1, 10)
    """
    def decode_step(params, cache, tokens, position):
        single = tokens.ndim == 1
        tokens = tokens[:, None] if single else tokens
        embedder.methods["check_tokens"](tokens)
        x = embedder.methods["embed"](params, tokens, position + jnp.arange(tokens.shape[1]))
        x, cache = single_step(params, cache, x, position)
        logits = embedder.methods["head"](params, x)
        return (logits[:, 0] if single else logits), cache

    return decode_step


def block_stack(make_block, n: int, *, scan: bool = False, remat_policy: str | None = None,
                label: str = "stack") -> Layer:
    """``n`` blocks ``make_block(label)`` in sequence: params ``block_0..block_{n-1}``, or with ``scan``
    one ``blocks`` entry stacked on a leading ``[n]`` axis. ``methods``: ``init_cache(batch, length,
    features, dtype)``, ``decode(params, cache, x, position, cross=None)`` and (cross-attending
    blocks) ``cross_cache(params, context, context_lengths=None)``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> stack = block_stack(lambda label: jnn.encoder_block(2, 16, name=label), 2)
      >>> params, _ = stack.init(jax.random.key(0), jnp.zeros((1, 4, 8)))
      >>> sorted(params), stack.apply(params, {}, jnp.ones((1, 4, 8)))[0].shape
      (['block_0', 'block_1'], (1, 4, 8))
    """
    names = ["blocks"] if scan else [f"block_{i}" for i in range(n)]
    blocks = [make_block(f"{label} {k}")._replace(name=None) for k in names]
    if remat_policy is not None:
        blocks = [remat(block, policy=remat_policy) for block in blocks]
    first = blocks[0]
    children = core.Children([("blocks", repeat(first, n))] if scan else list(zip(names, blocks)))

    def init(key, x):
        if scan:
            return {"blocks": children["blocks"].init(key, x)[0]}, {}
        return {k: block.init(k_key, x)[0] for (k, block), k_key in zip(children.items(), jax.random.split(key, n))}, {}

    def apply(params, state, x, *, key=None, train=False, **keywords):
        keys = [key] if scan else core.split_key(key, n)
        for (k, block), block_key in zip(children.items(), keys):
            x, _ = core.apply_child(k, block, params, {}, x, key=block_key, train=train, **keywords)
        return x, state

    def init_cache(batch, length, features, dtype) -> dict:
        one = first.methods["init_cache"](batch, length, features, dtype)
        if scan:
            return {"blocks": jax.tree.map(lambda a: jnp.zeros((n, *a.shape), a.dtype), one)}
        return {k: block.methods["init_cache"](batch, length, features, dtype) for k, block in children.items()}

    def cross_cache(params, context, context_lengths=None) -> dict:
        if scan:
            one = lambda p: first.methods["cross_cache"](p, context, context_lengths)
            return {"blocks": jax.vmap(one)(params["blocks"])}
        return {k: block.methods["cross_cache"](params[k], context, context_lengths) for k, block in children.items()}

    def decode(params, cache, x, position, cross=None):
        if scan:
            def body(h, per_block):
                p, c, kv = per_block
                return first.methods["decode"](p, c, h, position, kv)

            kv = None if cross is None else cross["blocks"]
            x, new = jax.lax.scan(body, x, (params["blocks"], cache["blocks"], kv))
            return x, {"blocks": new}
        new = {}
        for k, block in children.items():
            x, new[k] = block.methods["decode"](params[k], cache[k], x, position, None if cross is None else cross[k])
        return x, new

    methods = {"init_cache": init_cache, "decode": decode} if {"init_cache", "decode"} <= set(first.methods) else {}
    if "cross_cache" in first.methods:
        methods["cross_cache"] = cross_cache
    return Layer(init, apply, "block_stack", None, first.keywords, children, methods=methods)


def token_embedder(label: str, vocab_size: int, features: int, max_len: int, tied: bool, positional: str, *,
                   norm: Layer | None = None, head_bias: bool = True, embedding_scale: float | None = None) -> Layer:
    """Token embedding (times ``embedding_scale``, default ``sqrt(features)``) plus positions, and the
    output head (``norm``, default :func:`jnn.layer_norm`, then the tied table or ``dense(vocab_size)``).

    ``init(key, tokens)``: params ``{"embedding", "position" (learned only), "final_norm",
    "head" (untied only)}``; ``apply`` embeds ``tokens[B, T]`` at positions ``0..T-1``.
    ``methods``: ``check_tokens(tokens, what="token ids")``, ``embed(params, tokens,
    positions)`` and ``head(params, x)`` (final norm, then logits).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> io = token_embedder("lm", vocab_size=10, features=4, max_len=8, tied=True, positional="learned")
      >>> params, _ = io.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))
      >>> x, _ = io.apply(params, {}, jnp.zeros((2, 3), jnp.int32))
      >>> x.shape, io.methods["head"](params, x).shape
      ((2, 3, 4), (2, 3, 10))
    """
    table = embedding(vocab_size, features, init=jax.nn.initializers.normal(features ** -0.5))
    norm = layer_norm() if norm is None else norm
    scale = math.sqrt(features) if embedding_scale is None else embedding_scale

    def check_tokens(tokens, what="token ids") -> None:
        if len(tokens.shape) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise layer_error(label, f"expected integer {what} [B, T], got "
                                     f"{jnp.dtype(tokens.dtype).name}{list(tokens.shape)}")
        if tokens.shape[1] > max_len:
            raise layer_error(label, f"expected at most max_len={max_len} tokens, got {tokens.shape[1]}")

    def init(key, tokens):
        keys = jax.random.split(key, 3)
        params = {"embedding": table.init(keys[0], tokens)[0]}
        x = jax.ShapeDtypeStruct((*tokens.shape, features), params["embedding"]["embedding"].dtype)
        if positional == "learned":
            params["position"] = learned_positional_embedding(max_len).init(keys[1], x)[0]
        params["final_norm"] = norm.init(key, x)[0]
        if not tied:
            params["head"] = dense(vocab_size, use_bias=head_bias).init(keys[2], x)[0]
        return params, {}

    def embed(params, tokens, positions):
        x = table.apply(params["embedding"], {}, tokens)[0]
        x = x * jnp.asarray(scale, x.dtype)
        if positional == "learned":
            x = x + jnp.take(params["position"]["embedding"], positions, axis=0).astype(x.dtype)
        elif positional == "sinusoidal":
            x = x + sinusoidal_table(positions, features, x.dtype)
        return x

    def head(params, x):
        x = norm.apply(params["final_norm"], {}, x)[0]
        return attend(params["embedding"], x) if tied else dense(vocab_size, use_bias=head_bias).apply(
            params["head"], {}, x)[0]

    def apply(params, state, tokens, *, key=None, train=False):
        check_tokens(tokens)
        return embed(params, tokens, jnp.arange(tokens.shape[1])), state

    return Layer(init, apply, "token_embedder", None,
                 methods={"check_tokens": check_tokens, "embed": embed, "head": head})
