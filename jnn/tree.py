"""Select params leaves by path (keys joined by ``/``): a pattern without ``/`` matches the leaf's name
(``"w"``), one with ``/`` is an ``fnmatch`` glob (``"encoder/*"``). :data:`WEIGHTS`: the default selection
for penalties and weight decay; :data:`NOT_WEIGHTS`: rank >= 2 leaves it leaves out on purpose."""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

__all__ = ["path_str", "leaves_with_paths", "matches", "mask", "WEIGHTS", "NOT_WEIGHTS",
           "check_weights_selected"]

WEIGHTS = ("w",)
NOT_WEIGHTS = ("embedding",)


def path_str(path) -> str:
    """``(DictKey('dense_0'), DictKey('w'))`` -> ``"dense_0/w"``.

    Example:
      >>> import jax, jnn
      >>> [jnn.tree.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path({"dense_0": {"w": 1}, "blocks": [2]})]
      ['blocks/0', 'dense_0/w']
    """
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def leaves_with_paths(tree) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in tree order.

    Example:
      >>> import jnn
      >>> jnn.tree.leaves_with_paths({"dense_0": {"w": 1, "b": 2}, "scale": 3})
      [('dense_0/b', 2), ('dense_0/w', 1), ('scale', 3)]
    """
    return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def matches(path: str, patterns: Iterable[str] | str) -> bool:
    """Whether ``path`` matches any of ``patterns``.

    Example:
      >>> import jnn
      >>> jnn.tree.matches("encoder/dense_0/w", "w"), jnn.tree.matches("decoder/dense_0/w", ["b", "encoder/*"])
      (True, False)
    """
    leaf = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else leaf, p) for p in
               ((patterns,) if isinstance(patterns, str) else patterns))


def check_patterns(where: str, what: str, patterns) -> tuple[str, ...]:
    """``patterns`` (one string or an iterable of them) as a tuple of non-empty strings."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    elif isinstance(patterns, Iterable) and not isinstance(patterns, Mapping):
        patterns = tuple(patterns)
    else:
        raise TypeError(f"{where}: {what} must be a pattern string or a list of them, got "
                        f"{type(patterns).__name__}")
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"{where}: {what} patterns must be non-empty strings, got {bad!r}")
    return patterns


def check_weights_selected(tree, include, exclude, where: str) -> None:
    """With ``include=WEIGHTS``, a ``ValueError`` naming the floating rank >= 2 leaves it would skip.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"gate": {"wa": jnp.ones((2, 2)), "wg": jnp.ones((2, 2)), "b": jnp.zeros(2)}}
      >>> jnn.tree.check_weights_selected(params, jnn.tree.WEIGHTS, (), "example")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: example: the default selection (leaves named 'w') would skip the weights ['gate/wa', 'gate/wg'] ...
    """
    check_patterns(where, "include", include)
    check_patterns(where, "exclude", exclude)
    if include is not WEIGHTS:
        return
    skipped = [path for path, leaf in leaves_with_paths(tree)
               if getattr(leaf, "ndim", 0) >= 2 and hasattr(leaf, "dtype")
               and jnp.issubdtype(leaf.dtype, jnp.floating)
               and not matches(path, include) and not matches(path, NOT_WEIGHTS) and not matches(path, exclude)]
    if skipped:
        names = sorted({p.rsplit("/", 1)[-1] for p in skipped})
        raise ValueError(f"{where}: the default selection (leaves named 'w') would skip the weights {skipped} "
                         f"(floating, rank >= 2). Name your layer's kernels 'w', or choose explicitly: "
                         f"include=['w', {', '.join(map(repr, names))}] to regularize them, or "
                         f"exclude={names!r} to leave them out")


def mask(tree, include: Iterable[str] | str = WEIGHTS, exclude: Iterable[str] | str = ()):
    """An ``optax.masked`` mask: True where a leaf's path matches ``include`` and not ``exclude``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> params = {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, "dense_1": {"w": jnp.ones((2, 1))}}
      >>> jnn.tree.mask(params, include="*", exclude="dense_1/*")
      {'dense_0': {'b': True, 'w': True}, 'dense_1': {'w': False}}
    """
    check_weights_selected(tree, include, exclude, "jnn.tree.mask")
    return jax.tree_util.tree_map_with_path(
        lambda p, _: matches(path_str(p), include) and not matches(path_str(p), exclude), tree)
