"""Small in-memory datasets: the truth tables of XOR/AND/OR, and sklearn's digits (``jnn[digits]``)."""
from __future__ import annotations

import numpy as np

__all__ = ["and_gate", "load_digits", "or_gate", "xor"]

_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


def _truth_table(outputs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fresh ``(x (4, 2), y (4, 1))`` float32 arrays for a 2-input gate."""
    return _INPUTS.copy(), np.array(outputs, dtype=np.float32).reshape(4, 1)


def xor() -> tuple[np.ndarray, np.ndarray]:
    """XOR: float32 inputs ``(4, 2)`` (00, 01, 10, 11) and targets ``(4, 1)``; not linearly separable.

    Example:
        >>> xor()[1].ravel().tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    return _truth_table([0, 1, 1, 0])


def and_gate() -> tuple[np.ndarray, np.ndarray]:
    """AND's truth table: float32 ``x (4, 2)``, ``y (4, 1)``.

    Example:
        >>> and_gate()[1].ravel().tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    return _truth_table([0, 0, 0, 1])


def or_gate() -> tuple[np.ndarray, np.ndarray]:
    """The truth table of logical OR: float32 ``x (4, 2)``, ``y (4, 1)``.

    Example:
        >>> or_gate()[1].ravel().tolist()
        [0.0, 1.0, 1.0, 1.0]
    """
    return _truth_table([0, 1, 1, 1])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: float32 images ``(1797, 8, 8, 1)`` in ``[0, 1]``, int32 labels ``(1797,)``.

    Example:
        >>> [a.shape for a in load_digits()]
        [(1797, 8, 8, 1), (1797,)]
    """
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError('load_digits needs scikit-learn: pip install "jnn[digits]"') from e
    digits = datasets.load_digits()
    return (digits.images.astype(np.float32) / np.float32(16.0))[..., None], digits.target.astype(np.int32)
