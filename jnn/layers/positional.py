"""Position information for sequence models: learned and sinusoidal (Vaswani et al. 2017)
encodings, and rotary embeddings (RoPE, Su et al. 2021; ``multi_head_attention(..., rope=True)``)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn import _checks as checks
from jnn.core import Layer, shape_of

__all__ = ["learned_positional_embedding", "sinusoidal_encoding", "sinusoidal_table", "apply_rope"]


def sinusoidal_table(positions, features: int, dtype=jnp.float32, *, base: float = 10000.0) -> jax.Array:
    """The sinusoidal encodings of ``positions``: ``[..., features]``.

    Feature ``2i`` is ``sin(p / base ** (2i / features))`` and feature ``2i + 1`` the cosine of
    the same angle. Angles are computed in float32 (float64 for a float64 ``dtype``).

    ``positions``: integers, any shape (e.g. ``jnp.arange(T)``); an odd ``features`` drops the last
    cosine; the longest wavelength is ``2 * pi * base``.
    """
    acc = initializers.param_dtype(dtype)
    half = (features + 1) // 2
    inv_freq = jnp.power(jnp.asarray(base, acc), -2.0 * jnp.arange(half, dtype=acc) / features)
    angles = jnp.asarray(positions).astype(acc)[..., None] * inv_freq
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], 2 * half)
    return table[..., :features].astype(dtype)


@checks.declare(max_len=checks.positive_int, base=checks.above(1))
def sinusoidal_encoding(max_len: int, *, base: float = 10000.0, name: str | None = None) -> Layer:
    """Adds the fixed sinusoidal position encoding: ``y[b, t] = x[b, t] + table[t]``.

    Shapes: ``x: [B, T, F]`` with ``T <= max_len`` -> same. No params (see
    :func:`sinusoidal_table`), computed in ``x``'s dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.positional import sinusoidal_encoding
      >>> y, _ = sinusoidal_encoding(10).apply({}, {}, jnp.zeros((1, 3, 4)))
      >>> bool(jnp.allclose(y[0, :, 0], jnp.sin(jnp.arange(3.0)))), float(y[0, 0, 1])  # sin(t); cos(0)
      (True, 1.0)
    """
    check = functools.partial(checks.sequence_input, name or "sinusoidal_encoding", max_len=max_len)

    def init(key, example):
        check(shape_of(example))
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(x)
        return x + sinusoidal_table(jnp.arange(x.shape[1]), x.shape[2], x.dtype, base=base), state

    return Layer(init, apply, "sinusoidal_encoding", name)


@checks.declare(max_len=checks.optional(checks.positive_int))
def learned_positional_embedding(max_len: int | None, *, init=None, name: str | None = None) -> Layer:
    """Adds a learned vector per position: ``y[b, t] = x[b, t] + embedding[t]``.

    Shapes: ``x: [B, T, F]`` with ``T <= max_len`` -> same; param ``embedding: [max_len, F]``
    (named ``"embedding"``, not ``"w"``, so default weight decay leaves it alone).

    Args:
      max_len: number of positions (> 0), or ``None`` for exactly the sequence length seen at
        init (e.g. the number of patches of a ViT).
      init: initializer (or name) of the table; default ``normal(0.02)``.
      name: optional explicit key for this layer's params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.layers.positional import learned_positional_embedding
      >>> layer = learned_positional_embedding(32)
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 8, 4)))
      >>> params["embedding"].shape, layer.apply(params, state, jnp.zeros((2, 5, 4)))[0].shape
      ((32, 4), (2, 5, 4))
    """
    label = name or "learned_positional_embedding"
    table_init = initializers.normal(0.02) if init is None else initializers.get(init, where=f"{label} init")

    def init_fn(key, example):
        x = shape_of(example)
        checks.sequence_input(label, x, max_len)
        length = x.shape[1] if max_len is None else max_len
        return {"embedding": table_init(key, (length, x.shape[2]), initializers.param_dtype(x.dtype))}, {}

    def apply(params, state, x, *, key=None, train=False):
        table = params["embedding"]
        checks.sequence_input(label, x, *table.shape)
        return x + table[: x.shape[1]].astype(x.dtype), state

    return Layer(init_fn, apply, "learned_positional_embedding", name)


def apply_rope(x: jax.Array, positions, *, base: float = 10000.0, scaling: dict | None = None) -> jax.Array:
    """Rotary position embedding (RoPE) of query or key heads ``x[B, T, N, H]`` (``H`` even) at
    integer ``positions`` ``[T]`` or ``[B, T]``: same shape and dtype.

    Features ``i`` and ``i + H/2`` of each head are rotated by ``p * base ** (-2i / H)`` ("rotate
    half", as GPT-NeoX and LLaMA); angles in at least float32. ``scaling``: ``None`` or
    ``transformers``' ``rope_scaling`` dict: ``{"rope_type": "linear", "factor"}`` (frequencies over
    ``factor``) or ``"llama3"`` (with ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``: long wavelengths over ``factor``, smoothed in between).

    Example:
      >>> import jax.numpy as jnp
      >>> from jnn.layers.positional import apply_rope
      >>> x = jnp.ones((1, 3, 2, 4))
      >>> bool(jnp.allclose(apply_rope(x, jnp.arange(3))[:, 0], x[:, 0]))   # position 0: unchanged
      True
    """
    checks.require(x.ndim == 4 and x.shape[-1] % 2 == 0, "apply_rope",
                   f"expected heads [B, T, N, H] with H even, got shape {tuple(x.shape)}")
    positions = jnp.asarray(positions)
    checks.require(jnp.issubdtype(positions.dtype, jnp.integer) and positions.shape in (x.shape[1:2], x.shape[:2]),
                   "apply_rope", f"expected integer positions of shape [{x.shape[1]}] or [{x.shape[0]}, "
                                 f"{x.shape[1]}], got {positions.dtype}{list(positions.shape)}")
    acc = initializers.param_dtype(x.dtype)
    half = x.shape[-1] // 2
    inv_freq = jnp.power(jnp.asarray(base, acc), -jnp.arange(half, dtype=acc) / half)
    if scaling is not None:
        inv_freq = _scaled(inv_freq, scaling)
    angles = positions.astype(acc)[..., None] * inv_freq              # [(B,) T, H/2]
    cos = jnp.cos(angles)[..., None, :].astype(x.dtype)                # [(B,) T, 1, H/2]
    sin = jnp.sin(angles)[..., None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _scaled(inv_freq, scaling: dict):
    """RoPE frequencies under ``transformers``' ``"linear"`` or ``"llama3"`` scaling."""
    factor = scaling["factor"]
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    middle = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return jnp.where(wavelength > context / low, inv_freq / factor,
                     jnp.where(wavelength < context / high, inv_freq, middle))
