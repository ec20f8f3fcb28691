"""Random permutations without a sort: a keyed bijection of ``[0, 2**b)`` with cycle walking below ``n``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks

__all__ = ["permutation", "IndexShuffle"]

_SIZE = checks.int_range(1, 2 ** 31, "[1, 2**31)")

_ROUNDS = 6


def _scramble(x, multipliers, offsets, bits: int):
    """A bijection of ``[0, 2**bits)`` on uint32 arrays (NumPy or JAX)."""
    mask, shift = (1 << bits) - 1, max(1, (bits + 1) // 2)
    for r in range(_ROUNDS):
        x = (x * multipliers[r]) & mask
        x = x ^ (x >> shift)
        x = (x + offsets[r]) & mask
    return x


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of ``range(n)`` drawn from ``key``: ``int32 [n]``.

    Example:
      >>> import jax
      >>> sorted(permutation(jax.random.key(0), 10).tolist()) == list(range(10))
      True
    """
    _SIZE("permutation", "n", n)
    bits = _bits(n)
    constants = jax.random.bits(key, (2, _ROUNDS), jnp.uint32)
    multipliers, offsets = constants[0] | jnp.uint32(1), constants[1]
    scramble = lambda x: _scramble(x, multipliers, offsets, bits)
    walk = lambda y: jnp.where(y >= n, scramble(y), y)
    y = jax.lax.while_loop(lambda y: jnp.any(y >= n), walk, scramble(jnp.arange(n, dtype=jnp.uint32)))
    return y.astype(jnp.int32)


class IndexShuffle:
    """A random permutation of ``range(n)`` from a ``np.random.default_rng`` ``seed``, evaluated at any
    positions without building it (NumPy): ``shuffle(positions) -> int64``.

    Example:
      >>> import numpy as np
      >>> shuffle = IndexShuffle(10, seed=[3, 0])
      >>> whole = shuffle(np.arange(10))
      >>> sorted(whole.tolist()) == list(range(10)), shuffle(np.arange(4, 6)).tolist() == whole[4:6].tolist()
      (True, True)
    """

    def __init__(self, n: int, seed):
        _SIZE("IndexShuffle", "n", n)
        constants = np.random.default_rng(seed).integers(0, 2 ** 32, size=(2, _ROUNDS), dtype=np.uint32)
        self.n, self.bits = n, _bits(n)
        self.multipliers, self.offsets = constants[0] | np.uint32(1), constants[1]

    def __call__(self, positions) -> np.ndarray:
        positions = checks.indices_below("IndexShuffle", "positions", np.asarray(positions), self.n)
        scramble = lambda x: _scramble(x, self.multipliers, self.offsets, self.bits)
        y = scramble(positions.astype(np.uint32))
        while (y >= self.n).any():   # cycle walking, as permutation does
            y = np.where(y >= self.n, scramble(y), y)
        return y.astype(np.int64)
