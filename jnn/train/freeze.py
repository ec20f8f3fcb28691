"""Freeze parameters by :mod:`jnn.tree` path pattern: exactly zero updates, no optimizer state, no decay."""
from __future__ import annotations

from typing import Iterable

import jax
import optax

from jnn import tree as _tree
from jnn import _checks as checks
from jnn.train import guard

__all__ = ["freeze", "trainable_mask", "FROZEN", "TRAINABLE"]

#: The labels :func:`freeze` gives to ``optax.partition``.
FROZEN, TRAINABLE = "frozen", "trainable"


def _check_used(params, patterns: tuple[str, ...], where: str) -> None:
    paths = [p for p, _ in _tree.leaves_with_paths(params)]
    unused = [pat for pat in patterns if not any(_tree.matches(p, pat) for p in paths)]
    if unused:
        shown = ", ".join(paths[:20]) + (", ..." if len(paths) > 20 else "")
        raise ValueError(f"{where}: pattern(s) {unused} match no parameter (a typo?); the parameter "
                         f"paths are: {shown}")


def trainable_mask(params, frozen: Iterable[str] | str):
    """An ``optax.masked`` mask of ``params``: False where a path matches a ``frozen`` pattern (each must match).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}}
      >>> jnn.train.trainable_mask(params, "b")
      {'dense_0': {'b': False, 'w': True}}
    """
    patterns = _tree.check_patterns("trainable_mask", "frozen", frozen)
    _check_used(params, patterns, "trainable_mask")
    return _tree.mask(params, include=("*",), exclude=patterns)


@checks.declare(optimizer=guard.PARTS["optimizer"])
def freeze(optimizer: optax.GradientTransformation,
           frozen: Iterable[str] | str) -> optax.GradientTransformation:
    """``optimizer`` over the leaves not matching ``frozen`` (``optax.partition``); the others get zero
    updates, no state, no decay. ``init`` raises when a pattern matches no parameter.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> opt, params = freeze(optax.sgd(0.5), "b"), {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> opt.update(params, opt.init(params))[0]
      {'b': Array([0., 0.], dtype=float32), 'w': Array([-0.5, -0.5], dtype=float32)}
    """
    patterns = _tree.check_patterns("freeze", "frozen", frozen)

    def labels(tree):
        _check_used(tree, patterns, "freeze")
        trainable = _tree.mask(tree, include=("*",), exclude=patterns)
        return jax.tree_util.tree_map(lambda t: TRAINABLE if t else FROZEN, trainable)

    return optax.partition({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()}, labels)
