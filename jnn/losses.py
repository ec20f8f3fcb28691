"""Losses over ``optax.losses``: the mean, or per-example values with ``reduction="none"``; impossible
labels raise when concrete (not under ``jit``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jnn import _checks as checks
from jnn import tree as _tree

_LABEL_HINT = "; binary labels are 0/1 (or probabilities), e.g. (y > 0).astype(float)"

__all__ = ["mse", "mae", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "softmax_cross_entropy", "l1_penalty", "l2_penalty"]


def _floating(x: jax.Array, like: jax.Array | None = None) -> jax.Array:
    """``x``; integers and bools as ``like``'s float dtype (else float32)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(like.dtype if like is not None and jnp.issubdtype(like.dtype, jnp.floating) else jnp.float32)


def _reduce(values: jax.Array, reduction: str, where: str) -> jax.Array:
    if reduction == "mean":
        if values.size == 0:
            raise ValueError(f"{where}: got an empty batch (per-example losses of shape {tuple(values.shape)}); "
                             f"a mean over no examples is undefined")
        return jnp.mean(values)
    if reduction == "none":
        return values
    raise ValueError(f"{where}: reduction must be 'mean' or 'none', got {reduction!r}")


def _same_shape(where: str, a, b, names=("predictions", "targets")) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{where}: {names[0]} and {names[1]} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def mse(predictions: jax.Array, targets: jax.Array, *, reduction: str = "mean") -> jax.Array:
    """Mean squared error ``mean((predictions - targets) ** 2)``; shapes must match.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> float(jnn.losses.mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])))
      2.0
    """
    return _elementwise("mse", optax.losses.squared_error, predictions, targets, reduction)


def mae(predictions: jax.Array, targets: jax.Array, *, reduction: str = "mean") -> jax.Array:
    """Mean absolute error ``mean(|predictions - targets|)``; shapes must match.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> float(jnn.losses.mae(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
      1.5
    """
    return _elementwise("mae", lambda p, t: jnp.abs(p - t), predictions, targets, reduction)


def _elementwise(where: str, fn, predictions, targets, reduction: str) -> jax.Array:
    predictions, targets = checks.arrays(where, ("predictions", "targets"), predictions, targets)
    _same_shape(where, predictions, targets)
    predictions = _floating(predictions)
    return _reduce(fn(predictions, _floating(targets, predictions)), reduction, where)


def binary_cross_entropy_with_logits(logits: jax.Array, labels: jax.Array, *,
                                     reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy of ``sigmoid(logits)`` against labels in [0, 1] (same shape).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> round(float(jnn.losses.binary_cross_entropy_with_logits(jnp.zeros(2), jnp.array([0.0, 1.0]))), 4)
      0.6931
    """
    logits, labels = checks.arrays("binary_cross_entropy_with_logits", ("logits", "labels"), logits, labels)
    logits = _floating(logits)
    _same_shape("binary_cross_entropy_with_logits", logits, labels, ("logits", "labels"))
    checks.values_in_unit_interval("binary_cross_entropy_with_logits", "labels", labels, _LABEL_HINT)
    losses = optax.losses.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    return _reduce(losses, reduction, "binary_cross_entropy_with_logits")


def binary_cross_entropy(probabilities: jax.Array, labels: jax.Array, *,
                         reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``) against labels in [0, 1].

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> round(float(jnn.losses.binary_cross_entropy(jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0]))), 4)
      0.6931
    """
    probabilities, labels = checks.arrays("binary_cross_entropy", ("probabilities", "labels"), probabilities, labels)
    probabilities = _floating(probabilities)
    _same_shape("binary_cross_entropy", probabilities, labels, ("probabilities", "labels"))
    checks.values_in_unit_interval("binary_cross_entropy", "probabilities", probabilities,
                                   "; for logits use binary_cross_entropy_with_logits, or end the "
                                   "model with jnn.sigmoid()")
    checks.values_in_unit_interval("binary_cross_entropy", "labels", labels, _LABEL_HINT)
    eps = jnp.finfo(probabilities.dtype).eps
    p = jnp.clip(probabilities, eps, 1 - eps)
    y = labels.astype(p.dtype)
    losses = -(y * jnp.log(p) + (1 - y) * jnp.log1p(-p))
    return _reduce(losses, reduction, "binary_cross_entropy")


@checks.declare(label_smoothing=checks.fraction)
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                          reduction: str = "mean") -> jax.Array:
    """Categorical cross-entropy of ``softmax(logits [..., C])`` against class ids ``[...]`` or
    probabilities ``[..., C]``; ``label_smoothing`` ``s`` uses targets ``(1 - s) * onehot + s / C``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> logits = jnp.zeros((2, 4))  # uniform over 4 classes
      >>> round(float(jnn.losses.softmax_cross_entropy(logits, jnp.array([0, 3]))), 4)  # log 4
      1.3863
      >>> jnn.losses.softmax_cross_entropy(logits, jnp.array([0, 3]), reduction="none").shape
      (2,)
    """
    where = "softmax_cross_entropy"
    logits, labels = checks.arrays(where, ("logits", "labels"), logits, labels)
    logits = _floating(logits)
    if logits.ndim < 1:
        raise ValueError(f"{where}: logits must have a class axis last, shape [..., C], got shape ()")
    num_classes = logits.shape[-1]
    checks.float_labels_hint(where, logits, labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        checks.integer_labels(where, logits, labels)
        if label_smoothing == 0.0:
            losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
            return _reduce(losses, reduction, where)
        labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    _same_shape(where, logits, labels, ("logits", "one-hot labels"))
    targets = labels.astype(logits.dtype)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return _reduce(optax.losses.softmax_cross_entropy(logits, targets), reduction, where)


def _penalty(params, include, exclude, leaf_fn) -> jax.Array:
    _tree.check_weights_selected(params, include, exclude, "penalty")
    selected = [leaf for path, leaf in _tree.leaves_with_paths(params)
                if _tree.matches(path, include) and not _tree.matches(path, exclude)]
    return jnp.asarray(sum((jnp.sum(leaf_fn(leaf)) for leaf in selected), 0.0))


def l1_penalty(params, *, include=_tree.WEIGHTS, exclude=()) -> jax.Array:
    """``sum |w|`` over the leaves selected by path pattern (:data:`jnn.tree.WEIGHTS` by default).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])}}
      >>> float(jnn.losses.l1_penalty(params))
      3.0
    """
    return _penalty(params, include, exclude, jnp.abs)


def l2_penalty(params, *, include=_tree.WEIGHTS, exclude=()) -> jax.Array:
    """``sum w ** 2`` over the leaves selected by path pattern (:data:`jnn.tree.WEIGHTS` by default).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])}}
      >>> float(jnn.losses.l2_penalty(params))
      5.0
    """
    return _penalty(params, include, exclude, jnp.square)
