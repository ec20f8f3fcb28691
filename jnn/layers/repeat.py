"""``repeat``: ``n`` copies of a layer, stacked and run with ``lax.scan``; conversions to ``serial`` form."""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import optax

from jnn import core
from jnn import _checks as checks
from jnn.core import Layer, shape_of
from jnn.tree import matches, path_str

__all__ = ["repeat", "stack_params", "unstack_params", "copy_mask", "freeze_copies"]


@checks.declare(layer=checks.jnn_layer, n=checks.positive_int,
                unroll=checks.positive_int_or(True, False, described="a bool"))
def repeat(layer: Layer, n: int, *, unroll: int | bool = 1, name: str | None = None) -> Layer:
    """``serial(layer, ..., layer)`` as one ``lax.scan`` over ``n`` copies (params stacked on a leading
    ``[n]`` axis); the layer must keep its input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> stack = jnn.repeat(jnn.dense(4), 3)
      >>> params, state = stack.init(jax.random.key(0), jnp.zeros((2, 4)))
      >>> params["w"].shape, stack.apply(params, state, jnp.ones((2, 4)))[0].shape
      ((3, 4, 4), (2, 4))
    """
    label = name or "repeat"

    def init(key, example):
        x = shape_of(example)
        with core.child_scope(layer.kind):
            return jax.vmap(lambda k: layer.init(k, x))(jax.random.split(key, n))

    def apply(params, state, x, *, key=None, train=False, **keywords):
        keys = None if key is None else jax.random.split(key, n)

        def body(h, per_copy):
            p, s, k = per_copy
            y, s = layer.apply(p, s, h, key=k, train=train, **keywords)
            checks.require((y.shape, y.dtype) == (h.shape, h.dtype), label, f"the repeated layer must keep its "
                           f"input's shape and dtype, but {layer.label} maps {h.dtype}{list(h.shape)} to "
                           f"{y.dtype}{list(y.shape)}")
            return y, s

        with core.child_scope(layer.kind):
            # length=n: a child without params or state gives scan nothing else to count
            y, new_state = jax.lax.scan(body, x, (params, state, keys), length=n, unroll=unroll)
        return y, new_state

    return Layer(init, apply, "repeat", name, layer.keywords)


def unstack_params(stacked, kind: str) -> dict:
    """Stacked params (or state) of ``repeat(layer, n)`` as those of ``serial(layer, ..., layer)``:
    ``{f"{kind}_{i}": copy_i}`` (``kind``: the repeated layer's).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, _ = repeat(jnn.dense(8), 2).init(jax.random.key(0), jnp.zeros((2, 8)))
      >>> copies = unstack_params(params, "dense")
      >>> sorted(copies), stack_params(copies)["w"].shape
      (['dense_0', 'dense_1'], (2, 8, 8))
    """
    n = checks.leading_axis("unstack_params", jax.tree.leaves(stacked))
    return {f"{kind}_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)}


def stack_params(copies: dict) -> dict:
    """The inverse of :func:`unstack_params` (copies ordered by their numeric suffix, of one structure)."""
    trees = checks.copies("stack_params", copies)
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def copy_mask(params, include: Iterable[str] | str, copies: Iterable[int], n: int):
    """A mask of single copies: leaves matching ``include`` (``jnn.tree`` patterns) with a leading
    axis ``n`` get a bool ``[n, 1, ..., 1]``, True at ``copies``; other leaves ``False``."""
    copies = tuple(copies)
    checks.require(all(type(c) is int and 0 <= c < n for c in copies),   # (bools are not copy indices)
                   "copy_mask", f"copies must be integers in [0, {n}), got {copies}")
    selected = jnp.zeros((n,), bool).at[jnp.asarray(copies, jnp.int32)].set(True) if copies else jnp.zeros((n,), bool)
    found = []

    def leaf_mask(path, leaf):
        hit = matches(path_str(path), include) and getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == n
        found.append(hit)
        return selected.reshape((n,) + (1,) * (leaf.ndim - 1)) if hit else False

    mask = jax.tree_util.tree_map_with_path(leaf_mask, params)
    checks.require(any(found), "copy_mask", f"no stacked leaf with a leading axis of {n} matches {include!r}")
    return mask


def freeze_copies(optimizer: optax.GradientTransformation, params, include: Iterable[str] | str,
                  copies: Iterable[int], n: int) -> optax.GradientTransformation:
    """``optimizer`` whose updates are zero for the given copies of the matching stacked leaves
    (see :func:`copy_mask`): ``freeze_copies(optax.adamw(1e-3), params, "blocks/*", copies=[3], n=6)``."""
    frozen = copy_mask(params, include, copies, n)

    def keep(update, mask):
        if mask is False:
            return update
        return jnp.where(mask, jnp.zeros((), update.dtype), update)

    def update_fn(updates, state, params=None):
        return jax.tree.map(keep, updates, frozen, is_leaf=lambda m: m is False), state

    return optax.chain(optimizer, optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn))
