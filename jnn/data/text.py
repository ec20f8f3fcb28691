"""Character-level text: a vocabulary and language-model windows (inputs, next-token targets)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks

__all__ = ["CharVocab", "lm_windows", "random_windows"]


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharVocab:
    """The sorted unique characters ``chars`` of ``text``; ``chars[i]`` has id ``i``.

    Example:
      >>> from jnn.data.text import CharVocab
      >>> vocab = CharVocab("hello")
      >>> vocab.chars, vocab.size, vocab.encode("hole").tolist(), vocab.decode([1, 0, 2, 2, 3])
      ('ehlo', 4, [1, 3, 2, 0], 'hello')
    """

    def __init__(self, text: str):
        checks.require(isinstance(text, str) and text, "CharVocab", f"expected a non-empty string, got {text!r:.40}")
        self._codes = np.unique(_codepoints(text))
        self.chars = "".join(map(chr, self._codes))
        self._table = np.array(list(self.chars))

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"CharVocab(size={self.size}, chars={self.chars!r:.60})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The int32 ids of ``text``'s characters; unknown characters are a ValueError naming them."""
        codes = _codepoints(text)
        ids = np.searchsorted(self._codes, codes)
        unknown = (ids == self.size) | (self._codes[np.minimum(ids, self.size - 1)] != codes)
        if unknown.any():
            missing = sorted(set(map(chr, codes[unknown])))
            raise ValueError(f"CharVocab.encode: characters not in the vocabulary: {missing[:10]!r}"
                             f"{' ...' if len(missing) > 10 else ''}")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        """The text of a 1-D sequence of ids (a list, NumPy or JAX array)."""
        ids = np.asarray(ids)
        checks.require(ids.ndim == 1 and (np.issubdtype(ids.dtype, np.integer) or ids.size == 0), "CharVocab.decode",
                       f"expected a 1-D sequence of integer ids, got {ids.dtype} of shape {ids.shape}")
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise ValueError(f"CharVocab.decode: ids must lie in [0, {self.size}), got "
                             f"{ids[bad][:10].tolist()}")
        return "".join(self._table[ids.astype(np.intp)])


@checks.declare(seq_len=checks.positive_int, stride=checks.optional(checks.positive_int))
def lm_windows(ids, seq_len: int, *, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Language-model windows ``[num_windows, seq_len]`` (copies): ``inputs[i] = ids[s:s+seq_len]``,
    ``targets[i] = ids[s+1:s+seq_len+1]``, ``s = i * stride`` (default ``seq_len``); a partial window is dropped.

    Example:
      >>> import numpy as np
      >>> from jnn.data.text import lm_windows
      >>> [a.tolist() for a in lm_windows(np.arange(7), 3)]
      [[[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]]]
    """
    ids = np.asarray(ids)
    checks.require(ids.ndim == 1 and len(ids) > seq_len, "lm_windows", f"expected 1-D ids with at least seq_len + 1 "
                   f"= {seq_len + 1} tokens, got shape {ids.shape}")
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride or seq_len]
    return windows[:, :-1].copy(), windows[:, 1:].copy()


@checks.declare(seq_len=checks.positive_int, batch_size=checks.positive_int)
def random_windows(key: jax.Array, ids: jax.Array, seq_len: int, batch_size: int):
    """``batch_size`` windows at uniform random starts, jit-friendly: ``(inputs, targets)``, each ``[B, T]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x, y = random_windows(jax.random.key(0), jnp.arange(100), 8, 4)
      >>> x.shape, bool((y == x + 1).all())
      ((4, 8), True)
    """
    ids = jnp.asarray(ids)
    n = ids.shape[0] - seq_len if ids.ndim == 1 else 0
    checks.require(n >= 1, "random_windows", f"expected 1-D ids with at least seq_len + 1 = {seq_len + 1} tokens, "
                   f"got shape {tuple(ids.shape)}")
    starts = jax.random.randint(key, (batch_size,), 0, n)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(ids, s, seq_len + 1))(starts)
    return windows[:, :-1], windows[:, 1:]
