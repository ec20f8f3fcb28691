"""Small in-memory datasets: the truth tables of XOR/AND/OR, and sklearn's digits.

These need no files and no network: the logic gates are constructed here and
the 8x8 digits ship inside scikit-learn (an optional extra, ``jnn[digits]``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["and_gate", "load_digits", "or_gate", "xor"]

_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


def _truth_table(outputs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Returns fresh ``(x (4, 2), y (4, 1))`` float32 arrays for a 2-input gate."""
    return _INPUTS.copy(), np.array(outputs, dtype=np.float32).reshape(4, 1)


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four points of the XOR problem (not linearly separable).

    Returns:
        ``(x, y)``: float32 inputs ``(4, 2)`` in the order 00, 01, 10, 11 and
        float32 targets ``(4, 1)``.

    Example:
        >>> x, y = xor()
        >>> y.ravel().tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    return _truth_table([0, 1, 1, 0])


def and_gate() -> tuple[np.ndarray, np.ndarray]:
    """The truth table of logical AND (linearly separable).

    Returns:
        ``(x, y)``: float32 inputs ``(4, 2)`` and float32 targets ``(4, 1)``.

    Example:
        >>> x, y = and_gate()
        >>> y.ravel().tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    return _truth_table([0, 0, 0, 1])


def or_gate() -> tuple[np.ndarray, np.ndarray]:
    """The truth table of logical OR (linearly separable).

    Returns:
        ``(x, y)``: float32 inputs ``(4, 2)`` and float32 targets ``(4, 1)``.

    Example:
        >>> x, y = or_gate()
        >>> y.ravel().tolist()
        [0.0, 1.0, 1.0, 1.0]
    """
    return _truth_table([0, 1, 1, 1])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

    Returns:
        ``(images, labels)``: float32 images ``(1797, 8, 8, 1)`` in ``[0, 1]``
        (sklearn's 0..16 values divided by 16) and int32 labels ``(1797,)``.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> images, labels = load_digits()
        >>> images.shape, labels.shape
        ((1797, 8, 8, 1), (1797,))
    """
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError(
            'load_digits needs scikit-learn: pip install "jnn[digits]"'
        ) from e
    digits = datasets.load_digits()
    images = (np.asarray(digits.images, dtype=np.float32) / np.float32(16.0))[..., None]
    return images, np.asarray(digits.target, dtype=np.int32)
