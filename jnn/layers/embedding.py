"""Token embeddings: integer ids to learned vectors, and the tied output head (:func:`attend`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, layer_error, shape_of
from jnn.layers.basic import flat_matmul

__all__ = ["embedding", "attend"]


@checks.declare(vocab_size=checks.positive_int, features=checks.positive_int, dtype=checks.float_dtype)
def embedding(vocab_size: int, features: int, *, init=None, dtype=None,
              name: str | None = None) -> Layer:
    """A lookup table ``embedding: [vocab_size, features]``: integer ids ``[...]`` -> ``[..., features]``;
    ids outside ``[0, vocab_size)`` raise when concrete, give NaN rows under ``jit``.

    Example:
      >>> layer = embedding(10, 4)
      >>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 5), jnp.int32))
      >>> params["embedding"].shape, layer.apply(params, state, jnp.zeros((2, 5), jnp.int32))[0].shape
      ((10, 4), (2, 5, 4))
    """
    label = name or "embedding"
    table_init = initializers.normal(1.0) if init is None else initializers.get(init, where=f"{label} init")

    def check(x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise layer_error(label, f"expected integer token ids, got {x.dtype} of shape {tuple(x.shape)}")

    def init_fn(key, example):
        check(shape_of(example))
        table_dtype = jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)
        return {"embedding": table_init(key, (vocab_size, features), table_dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x)
        checks.ids_in_range(label, x, vocab_size)
        ids = jnp.where(x < 0, vocab_size, x)  # negative ids would wrap; make them out of range
        return jnp.take(params["embedding"], ids, axis=0, mode="fill", fill_value=jnp.nan), state

    return Layer(init_fn, apply, "embedding", name)


def attend(params, x: jax.Array) -> jax.Array:
    """The tied output head ``x @ embedding.T``, ``[..., features] -> [..., vocab_size]`` (params or table).

    Example:
      >>> params, _ = embedding(10, 4).init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
      >>> attend(params, jnp.ones((2, 5, 4))).shape
      (2, 5, 10)
    """
    table = params["embedding"] if isinstance(params, dict) else params
    checks.require(x.shape[-1:] == table.shape[-1:], "attend",
                   f"expected x of shape [..., {table.shape[-1]}] (the embedding width), got {tuple(x.shape)}")
    return flat_matmul(x, table.astype(x.dtype).T)
