"""Parameter paths: select leaves of a params tree by readable path patterns.

A leaf's path is its dict keys joined by ``/`` (``"dense_0/w"``). A pattern *without* a
``/`` matches the leaf's own name (``"w"`` matches every weight matrix); a pattern *with*
one is an ``fnmatch`` glob over the whole path (``"encoder/*"`` matches everything under
``encoder``, at any depth).

Example:
  >>> import jax.numpy as jnp, jnn
  >>> params = {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}}
  >>> jnn.tree.mask(params, ["w"])
  {'dense_0': {'b': False, 'w': True}}
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import jax

__all__ = ["path_str", "leaves_with_paths", "matches", "mask", "WEIGHTS"]

#: The default selection for penalties and weight decay: weight matrices and kernels
#: (leaves named ``w``), not biases, norm scales/offsets or embeddings.
WEIGHTS = ("w",)


def path_str(path) -> str:
    """``(DictKey('dense_0'), DictKey('w'))`` -> ``"dense_0/w"``."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def leaves_with_paths(tree) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in tree order."""
    return [(path_str(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def matches(path: str, patterns: Iterable[str] | str) -> bool:
    """Whether ``path`` matches any of ``patterns`` (see the module docstring)."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    leaf = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else leaf, p) for p in patterns)


def mask(tree, include: Iterable[str] | str = WEIGHTS, exclude: Iterable[str] | str = ()):
    """A tree of bools with ``tree``'s structure: True where a leaf's path matches
    ``include`` and not ``exclude``. Usable as an ``optax.masked`` mask."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: matches(path_str(p), include) and not matches(path_str(p), exclude), tree)
