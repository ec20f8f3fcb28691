"""Classification metrics over logits (or any scores where larger means more likely)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn import _checks as checks

__all__ = ["accuracy", "top_k_accuracy"]


def _arrays(where: str, logits, labels) -> tuple[jax.Array, jax.Array]:
    out = checks.arrays(where, ("logits", "labels"), logits, labels)
    if out[0].ndim < 1:
        raise ValueError(f"{where}: logits must have a class axis last, shape [..., C], got shape ()")
    return out[0], out[1]


def _class_ids(where: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
    checks.float_labels_hint(where, logits, labels)
    if labels.size == 0:
        raise ValueError(f"{where}: got an empty batch (labels of shape {tuple(labels.shape)}); a mean over no "
                         f"examples is undefined")
    if jnp.issubdtype(labels.dtype, jnp.integer):
        checks.integer_labels(where, logits, labels)  # values checked eagerly, not under jit
        return labels
    if labels.shape != logits.shape:  # one-hot or probabilities: the most likely class
        raise ValueError(f"{where}: labels must have shape {tuple(logits.shape[:-1])} (class ids) or "
                         f"{tuple(logits.shape)} (one-hot) for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    return jnp.argmax(labels, axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose arg-max class of ``logits [..., C]`` is the label: ids ``[...]`` (checked
    to lie in ``[0, C)`` outside ``jit``) or one-hot ``[..., C]``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
      >>> float(jnn.metrics.accuracy(logits, jnp.array([0, 1])))
      0.5
    """
    logits, labels = _arrays("accuracy", logits, labels)
    ids = _class_ids("accuracy", logits, labels)
    return jnp.mean((jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32))


def top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int = 5) -> jax.Array:
    """Fraction of examples whose label is among the ``k`` highest-scoring classes.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
      >>> float(jnn.metrics.top_k_accuracy(logits, jnp.array([1, 0]), k=2))
      0.5
    """
    logits, labels = _arrays("top_k_accuracy", logits, labels)
    k = checks.int_in("top_k_accuracy", "k", k, 1, logits.shape[-1])
    ids = _class_ids("top_k_accuracy", logits, labels)
    _, top = jax.lax.top_k(logits, k)
    return jnp.mean(jnp.any(top == ids[..., None], axis=-1).astype(jnp.float32))
