"""A model summary: each layer's output shape and parameter count, as a table."""
from __future__ import annotations

import math

import jax

from jnn import core

__all__ = ["summary"]


def _count(tree) -> tuple[int, int]:
    leaves = jax.tree_util.tree_leaves(tree)
    return (sum(math.prod(leaf.shape) for leaf in leaves),
            sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in leaves))


def summary(model: core.Layer, example, *, key=None, **keywords) -> str:
    """A table of every sub-layer's path, kind, output shape and parameter count, with the
    total parameter count and bytes. Nothing is computed: shapes come from ``jax.eval_shape``.

    Args:
      model: any layer.
      example: an input array or ``jax.ShapeDtypeStruct`` (batch axis included).
      key: PRNG key for init (only shapes are used; defaults to ``jax.random.key(0)``).
      **keywords: the extra keywords ``model.apply`` needs, as arrays or
        ``jax.ShapeDtypeStruct`` (e.g. ``context=`` for a model with cross-attention).

    Returns:
      The table as a string (``print`` it).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.flatten(), jnn.dense(10))
      >>> print(jnn.summary(model, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)))  # doctest: +ELLIPSIS
      layer ...
    """
    if not isinstance(model, core.Layer):
        raise TypeError(f"summary: model must be a jnn.Layer, got {type(model).__name__}")
    key = jax.random.key(0) if key is None else key
    example = core.shape_of(example)
    params, state = jax.eval_shape(model.init, key, example)
    with core.recording() as records:
        out, _ = jax.eval_shape(lambda p, s, x, kw: model.apply(p, s, x, **kw), params, state, example, keywords)
    rows = [("layer", "kind", "output shape", "params")]
    rows.append(("(input)", "", str(tuple(example.shape)), ""))
    for path, kind, y, layer_params in records:
        shape = str(tuple(y.shape)) if hasattr(y, "shape") else str(jax.tree_util.tree_map(lambda a: a.shape, y))
        count = _count(layer_params)[0]
        rows.append((path, kind, shape, f"{count:,}" if count else ""))
    total, nbytes = _count(params)
    state_total, state_bytes = _count(state)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    rule = "-" * len(line(rows[0]))
    out_shape = tuple(out.shape) if hasattr(out, "shape") else out
    footer = [f"output: {out_shape}",
              f"total params: {total:,} ({nbytes:,} bytes)"]
    if state_total:
        footer.append(f"state: {state_total:,} values ({state_bytes:,} bytes)")
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:]), rule, *footer])
