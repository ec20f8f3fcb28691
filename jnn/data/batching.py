"""Minibatches for code outside ``jnn.train.fit`` (which batches on device by itself)."""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from jnn import _checks as checks

__all__ = ["batches"]


@checks.declare(batch_size=checks.positive_int, drop_remainder=checks.flag)
def batches(*arrays, batch_size: int, key: jax.Array | None = None,
            drop_remainder: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Aligned minibatches ``(a[idx], b[idx], ...)`` of arrays sharing axis 0, shuffled if ``key`` is given.

    Example:
      >>> import numpy as np, jnn
      >>> x, y = np.arange(10).reshape(5, 2), np.arange(5)
      >>> [b[1].tolist() for b in jnn.data.batches(x, y, batch_size=2)]
      [[0, 1], [2, 3], [4]]
    """
    checks.require(arrays, "batches", "expected at least one array")
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    legacy = isinstance(key, jax.Array) and key.dtype == np.uint32 and key.shape == (2,)   # jax.random.PRNGKey
    if key is not None and not ((typed and key.ndim == 0) or legacy):
        got = f"{key.dtype}{list(key.shape)}" if hasattr(key, "dtype") else repr(key)
        raise TypeError(f"batches: key must be one PRNG key (jax.random.key(0)) or None, got {got}")
    sizes = [len(a) for a in arrays]
    checks.require(len(set(sizes)) == 1, "batches", f"arrays must have the same number of examples, got {sizes}")
    n = sizes[0]
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield tuple(a[order[start:start + batch_size]] for a in arrays)
