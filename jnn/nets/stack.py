"""Internal: a stack of identical transformer blocks, unrolled (``block_i`` keys) or scanned
(one ``blocks`` key, stacked along a leading axis, run by :func:`jnn.layers.repeat.repeat`), with
the cached decode path of both forms. Shared by :mod:`jnn.nets.decoder_lm` and
:mod:`jnn.nets.encoder_decoder`."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jnn import core
from jnn.core import Layer, layer_error
from jnn.layers.basic import dense
from jnn.layers.embedding import attend, embedding
from jnn.layers.norm import layer_norm
from jnn.layers.positional import learned_positional_embedding, sinusoidal_table
from jnn.layers.remat import remat
from jnn.layers.repeat import repeat

__all__: list[str] = []


class Stack(NamedTuple):
    """``blocks``: one ``_Block`` per layer when unrolled, a single one when scanned."""

    blocks: tuple
    n: int
    scan: bool
    kind: str
    remat_policy: str | None = None

    def keys(self) -> list[str]:
        return ["blocks"] if self.scan else [f"block_{i}" for i in range(self.n)]

    def layer(self, block) -> Layer:
        layer = Layer(block.init, block.apply, self.kind, None)
        return layer if self.remat_policy is None else remat(layer, policy=self.remat_policy)

    def repeated(self) -> Layer:
        return repeat(self.layer(self.blocks[0]), self.n)

    def init(self, key, x) -> dict:
        if self.scan:
            return {"blocks": self.repeated().init(key, x)[0]}
        return {k: block.init(block_key, x)[0]
                for k, block, block_key in zip(self.keys(), self.blocks, jax.random.split(key, self.n))}

    def apply(self, params, x, keys, train, **keywords):
        """``keys``: ``n`` keys (unrolled) or one (scanned), or ``None``."""
        if self.scan:
            with core.child_scope("blocks"):
                x, _ = self.repeated().apply(params["blocks"], {}, x, key=keys, train=train, **keywords)
            return x
        for i, (k, block) in enumerate(zip(self.keys(), self.blocks)):
            with core.child_scope(k):
                x, _ = self.layer(block).apply(params[k], {}, x, key=None if keys is None else keys[i], train=train,
                                               **keywords)
                core.record(self.kind, x, params[k])
        return x

    def init_cache(self, batch, length, features, dtype) -> dict:
        one = self.blocks[0].attention.init_cache(batch, length, features, dtype)
        if self.scan:
            return {"blocks": jax.tree.map(lambda a: jnp.zeros((self.n, *a.shape), a.dtype), one)}
        return {k: block.attention.init_cache(batch, length, features, dtype)
                for k, block in zip(self.keys(), self.blocks)}

    def cross_cache(self, params, context, context_lengths) -> dict:
        if self.scan:
            fn = lambda p: self.blocks[0].cross_cache(p, context, context_lengths)
            return {"blocks": jax.vmap(fn)(params["blocks"])}
        return {k: block.cross_cache(params[k], context, context_lengths)
                for k, block in zip(self.keys(), self.blocks)}

    def decode(self, params, cache, x, position, cross=None):
        if self.scan:
            def body(h, per_block):
                p, c, kv = per_block
                return self.blocks[0].decode(p, c, h, position, kv)

            kv = None if cross is None else cross["blocks"]
            x, new = jax.lax.scan(body, x, (params["blocks"], cache["blocks"], kv))
            return x, {"blocks": new}
        new = {}
        for k, block in zip(self.keys(), self.blocks):
            x, new[k] = block.decode(params[k], cache[k], x, position, None if cross is None else cross[k])
        return x, new


class Embedder(NamedTuple):
    """Token embedding (scaled by ``sqrt(features)``) plus positions, and the output head."""

    label: str
    vocab_size: int
    features: int
    max_len: int
    tied: bool
    positional: str

    def check_tokens(self, tokens, what="token ids") -> None:
        if len(tokens.shape) != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise layer_error(self.label, f"expected integer {what} [B, T], got "
                                          f"{jnp.dtype(tokens.dtype).name}{list(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise layer_error(self.label, f"expected at most max_len={self.max_len} tokens, got {tokens.shape[1]}")

    def init(self, key, tokens) -> tuple[dict, jax.ShapeDtypeStruct]:
        """Params ``{"embedding", "position"?, "final_norm", "head"?}`` and the hidden-state shape."""
        keys = jax.random.split(key, 3)
        table = embedding(self.vocab_size, self.features, init=jax.nn.initializers.normal(self.features ** -0.5))
        params = {"embedding": table.init(keys[0], tokens)[0]}
        x = jax.ShapeDtypeStruct((*tokens.shape, self.features), params["embedding"]["embedding"].dtype)
        if self.positional == "learned":
            params["position"] = learned_positional_embedding(self.max_len).init(keys[1], x)[0]
        params["final_norm"] = layer_norm().init(key, x)[0]
        if not self.tied:
            params["head"] = dense(self.vocab_size).init(keys[2], x)[0]
        return params, x

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
