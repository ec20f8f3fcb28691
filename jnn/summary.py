"""A model summary: each layer's kind, output shape, parameter count and config, as a table."""
from __future__ import annotations

import math

import jax

from jnn import _checks as checks
from jnn import core, inspection

__all__ = ["summary"]


def _count(tree) -> tuple[int, int]:
    leaves = jax.tree_util.tree_leaves(tree)
    return (sum(math.prod(leaf.shape) for leaf in leaves),
            sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in leaves))


_CONFIG_WIDTH = 72   # a longer config cell is cut, ending "..."


def _shape_text(tree) -> str:
    return str(tuple(tree.shape) if hasattr(tree, "shape") else jax.tree_util.tree_map(lambda a: tuple(a.shape), tree))


def _value_text(value) -> str:
    named = callable(value) and not isinstance(value, (core.Layer, type)) and hasattr(value, "__name__")
    return value.__name__ if named else repr(value)


def _config_text(model: core.Layer, path: str, kind: str) -> str:
    try:
        layer = inspection.get(model, path)
    except KeyError:   # recorded under a key that is not a child (a layer applied in a loop)
        return ""
    if layer.kind != kind:
        return ""
    text = ", ".join(f"{k}={_value_text(v)}" for k, v in layer.config.items())
    return text if len(text) <= _CONFIG_WIDTH else text[:_CONFIG_WIDTH - 3] + "..."


@checks.declare(model=checks.instance_of(core.Layer, described="a jnn.Layer"))
def summary(model: core.Layer, example, *, key=None, **keywords) -> str:
    """A table of every sub-layer's path, kind, output shape, parameter count and config, with totals.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.flatten(), jnn.dense(10))
      >>> print(jnn.summary(model, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)))
      layer      kind     output shape    params  config
      -------------------------------------------------------------------------------------------------------------
      (input)             (1, 28, 28, 1)
      flatten_0  flatten  (1, 784)
      dense_0    dense    (1, 10)          7,850  features=10, use_bias=True, w_init='lecun_normal', b_init='zeros'
      -------------------------------------------------------------------------------------------------------------
      output: (1, 10)
      total params: 7,850 (31,400 bytes)
    """
    key = jax.random.key(0) if key is None else key
    example = core.shape_of(example)
    params, state = jax.eval_shape(model.init, key, example)
    with core.recording() as records:
        out, _ = jax.eval_shape(lambda p, s, x, kw: model.apply(p, s, x, **kw), params, state, example, keywords)
    rows = [("layer", "kind", "output shape", "params", "config"), ("(input)", "", _shape_text(example), "", "")]
    for path, kind, y, layer_params in records:
        count = _count(layer_params)[0]
        rows.append((path, kind, _shape_text(y), f"{count:,}" if count else "", _config_text(model, path, kind)))
    (total, nbytes), (state_total, state_bytes) = _count(params), _count(state)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    line = lambda r: "  ".join(c.rjust(w) if i == 3 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    rule = "-" * max(len(line(r)) for r in rows)
    footer = [f"output: {_shape_text(out)}", f"total params: {total:,} ({nbytes:,} bytes)"]
    if state_total:
        footer.append(f"state: {state_total:,} values ({state_bytes:,} bytes)")
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:]), rule, *footer])
