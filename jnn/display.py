"""Models and param trees to look at: a terminal tree (:func:`text`, which is ``repr(layer)``) and
notebook HTML (:func:`html`, a layer's ``_repr_html_``) with shapes, dtypes, parameter counts and
array summaries. :func:`show` pairs a model with its params for a notebook cell.

Example:
  >>> import jax, jax.numpy as jnp, jnn
  >>> model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(2))
  >>> params, _ = model.init(jax.random.key(0), jnp.zeros((1, 3)))
  >>> print(jnn.display.text(model, params))
  serial()  26 params
    dense_0: dense(features=4, use_bias=True, w_init='lecun_normal', b_init='zeros')  16 params
      w: float32[3, 4]
      b: float32[4]
    relu_0: relu()
    dense_1: dense(features=2, use_bias=True, w_init='lecun_normal', b_init='zeros')  10 params
      w: float32[4, 2]
      b: float32[2]
"""
from __future__ import annotations

from html import escape
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["text", "html", "show", "View"]


def _is_layer(obj) -> bool:
    return all(hasattr(obj, a) for a in ("init", "apply", "kind", "children", "config"))


def _value(value) -> str:
    if callable(value) and not _is_layer(value) and not isinstance(value, type) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def head(layer) -> str:
    """``kind(config) as 'name'``: one layer without its children."""
    args = ", ".join(f"{k}={_value(v)}" for k, v in layer.config.items())
    return f"{layer.kind}({args})" + (f" as {layer.name!r}" if layer.name else "")


def _count(params) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def _array(leaf) -> str:
    return f"{np.dtype(leaf.dtype).name}[{', '.join(map(str, np.shape(leaf)))}]"


def _stats(leaf) -> dict[str, float]:
    a = np.asarray(leaf, np.float64)
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max()} if a.size else {}


def _rows(obj, params, key: str | None, depth: int) -> list[tuple[int, str, Any]]:
    """``(depth, label, array or None)`` rows of a layer and/or params tree, depth first."""
    label = "" if key is None else f"{key}: "
    if _is_layer(obj):
        count = f"  {_count(params):,} params" if params is not None and _count(params) else ""
        rows = [(depth, label + head(obj) + count, None)]
        children = dict(obj.children or {})
        for k, child in children.items():
            sub = params.get(k) if isinstance(params, dict) else None
            rows += _rows(child, sub, k, depth + 1)
        rest = {k: v for k, v in params.items() if k not in children} if isinstance(params, dict) else {}
        return rows + [r for k, v in rest.items() for r in _rows(v, None, k, depth + 1)]
    if isinstance(obj, dict):
        rows = [(depth, label + f"{_count(obj):,} params", None)] if key is not None else []
        inner = depth + (key is not None)
        return rows + [r for k, v in obj.items() for r in _rows(v, None, str(k), inner)]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return [(depth, label + _array(obj), obj)]
    return [(depth, label + _value(obj), None)]


def _fit(line: str, width: int, indent: int) -> list[str]:
    """``line`` broken after commas into lines of at most ``width`` columns (cut with ``...``)."""
    out, pad = [], " " * indent
    while len(line) > width:
        cut = line.rfind(", ", len(pad) + 8, width - 1)
        if cut < 0:
            out.append(line[:width - 3] + "...")
            return out
        out.append(line[:cut + 1])
        line = pad + "    " + line[cut + 2:]
    return out + [line]


def text(obj, params=None, *, width: int = 100, max_lines: int | None = 40, max_depth: int = 8) -> str:
    """A layer (with ``params``: and its arrays' counts, shapes, dtypes) or a params tree as an indented
    tree of at most ``width`` columns; beyond ``max_depth`` levels or ``max_lines`` lines, elided.

    Example:
      >>> import jnn
      >>> deep = jnn.serial(*[jnn.serial(jnn.dense(2), jnn.relu()) for _ in range(30)])
      >>> out = jnn.display.text(deep, max_lines=6)
      >>> print(out)
      serial()
        serial_0: serial()
        ... 86 more lines ...
        serial_29: serial()
          dense_0: dense(features=2, use_bias=True, w_init='lecun_normal', b_init='zeros')
          relu_0: relu()
    """
    rows = _rows(obj, params, None, 0)
    deep = [r for r in rows if r[0] > max_depth]
    rows = [r for r in rows if r[0] <= max_depth]
    lines = [ln for depth, label, _ in rows for ln in _fit("  " * depth + label, width, 2 * depth)]
    lines += [f"  ... {len(deep)} rows deeper than {max_depth} levels ..."] if deep else []
    if max_lines is not None and len(lines) > max_lines:
        keep = max(max_lines - 1, 2)
        lines = lines[:keep // 2] + [f"  ... {len(lines) - keep} more lines ..."] + lines[len(lines) - (keep - keep // 2):]
    return "\n".join(lines)


_STYLE = ("<style>.jnn-tree{font-family:monospace;font-size:13px} .jnn-tree details{margin-left:1.2em}"
          " .jnn-tree td{padding:0 .6em;text-align:right} .jnn-tree .n{color:#777}</style>")


def _html_node(obj, params, key: str | None) -> str:
    label = "" if key is None else f"<b>{escape(key)}</b>: "
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        stats = "".join(f"<td>{k}={v:.4g}</td>" for k, v in _stats(obj).items())
        return (f"<tr><td style='text-align:left'>{label}</td><td>{escape(_array(obj))}</td>"
                f"<td>{int(np.size(obj)):,}</td>{stats}</tr>")
    if _is_layer(obj):
        children = dict(obj.children or {})
        sub = {k: params.get(k) if isinstance(params, dict) else None for k in children}
        rest = {k: v for k, v in params.items() if k not in children} if isinstance(params, dict) else {}
        title, body = escape(head(obj)), [_html_node(c, sub[k], k) for k, c in children.items()]
        body += [_html_node(v, None, k) for k, v in rest.items()]
    else:
        title, body = "" if key else "params", [_html_node(v, None, str(k)) for k, v in obj.items()]
    count = f" <span class='n'>{_count(params if _is_layer(obj) else obj):,} params</span>" if params is not None or not _is_layer(obj) else ""
    arrays = "".join(b for b in body if b.startswith("<tr>"))
    nested = "".join(b for b in body if not b.startswith("<tr>"))
    table = f"<table>{arrays}</table>" if arrays else ""
    return f"<details open><summary>{label}{title}{count}</summary>{table}{nested}</details>"


def html(obj, params=None, *, treescope: bool = False) -> str:
    """HTML for a notebook: the layer tree with each layer's config and parameter count, and every
    array's shape, dtype, size, mean, std, min and max; ``treescope=True`` renders ``params`` (or
    ``obj``) with treescope instead.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, _ = jnn.dense(3).init(jax.random.key(0), jnp.zeros((1, 5)))
      >>> page = jnn.display.html(jnn.dense(3), params)
      >>> "18 params" in page, "float32[5, 3]" in page
      (True, True)
    """
    if treescope:
        import treescope as ts
        return ts.render_to_html(obj if params is None else params)
    if not (_is_layer(obj) or isinstance(obj, dict)):
        obj = {"value": obj}
    return f"<div class='jnn-tree'>{_STYLE}{_html_node(obj, params, None)}</div>"


class View(NamedTuple):
    """A model with its params (or a params tree) that prints as :func:`text` and renders as :func:`html`.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.display.View({"b": jnp.zeros(3)})._repr_html_().count("float32[3]")
      1
    """
    obj: Any
    params: Any = None

    def __repr__(self) -> str:
        return text(self.obj, self.params)

    def _repr_html_(self) -> str:
        return html(self.obj, self.params)


def show(obj, params=None) -> View:
    """What a notebook cell shows for ``obj`` (a layer or a params tree) and its ``params``.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.display.show({"w": jnp.ones((2, 3))})
      w: float32[2, 3]
    """
    return View(obj, params)
