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
    text = _head(value) if _is_layer(value) else repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _head(layer) -> str:
    """``kind(config) as 'name'``: one layer without its children."""
    args = ", ".join(f"{k}={_value(v)}" for k, v in layer.config.items())
    return f"{layer.kind}({args})" + (f" as {layer.name!r}" if layer.name else "")


def _count(params) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def _array(leaf) -> str:
    return f"{leaf.dtype}[{', '.join(map(str, np.shape(leaf)))}]"


def _stats(leaf) -> dict[str, float]:
    if not (np.size(leaf) and jax.numpy.issubdtype(leaf.dtype, np.number)):
        return {}
    a = np.asarray(leaf, np.float64)
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max()}


def _parts(obj, params):
    """``(title or None, [(key, child, its params)], the params counted or None)`` of a layer or dict."""
    if not _is_layer(obj):
        return None, [(str(k), v, None) for k, v in obj.items()], obj
    children, given = dict(obj.children or {}), params if isinstance(params, dict) else {}
    parts = [(k, c, given.get(k)) for k, c in children.items()] + [(k, v, None) for k, v in given.items()
                                                                     if k not in children]
    return _head(obj), parts, params


def _rows(obj, params, key: str | None, depth: int) -> list[tuple[int, str]]:
    """``(depth, text)`` rows of a layer and/or params tree, depth first."""
    label = "" if key is None else f"{key}: "
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return [(depth, label + _array(obj))]
    if not (_is_layer(obj) or isinstance(obj, dict)):
        return [(depth, label + _value(obj))]
    title, parts, counted = _parts(obj, params)
    n = 0 if counted is None else _count(counted)
    rows = [] if title is None and key is None else [
        (depth, label + (f"{title}  {n:,} params" if title and n else title or f"{n:,} params"))]
    return rows + [r for k, c, p in parts for r in _rows(c, p, k, depth + bool(rows))]


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
    lines = [ln for depth, label in rows for ln in _fit("  " * depth + label, width, 2 * depth)]
    lines += [f"  ... {len(deep)} rows deeper than {max_depth} levels ..."] if deep else []
    if max_lines is not None and len(lines) > max_lines:
        keep = max(max_lines - 1, 2)
        lines = lines[:keep // 2] + [f"  ... {len(lines) - keep} more lines ..."] + lines[len(lines) - (keep - keep // 2):]
    return "\n".join(lines)


_STYLE = ("<style>.jnn-tree{font-family:monospace;font-size:13px} .jnn-tree details{margin-left:1.2em}"
          " .jnn-tree td{padding:0 .6em;text-align:right} .jnn-tree .n{color:#777}</style>")


def _html_node(obj, params, key: str | None, depth: int = 0) -> str:
    label = "" if key is None else f"<b>{escape(key)}</b>: "
    if not (_is_layer(obj) or isinstance(obj, dict)):
        array = hasattr(obj, "shape") and hasattr(obj, "dtype")
        cells = [_array(obj), f"{int(np.size(obj)):,}"] + [f"{k}={v:.4g}" for k, v in _stats(obj).items()] \
            if array else [_value(obj)]
        return f"<tr><td style='text-align:left'>{label}</td>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
    title, parts, counted = _parts(obj, params)
    count = "" if counted is None else f" <span class='n'>{_count(counted):,} params</span>"
    body = [_html_node(c, p, k, depth + 1) for k, c, p in parts]
    arrays, nested = "".join(b for b in body if b.startswith("<tr>")), "".join(b for b in body if b.startswith("<d"))
    title = escape(title) if title is not None else "" if key else "params"
    return (f"<details{' open' * (depth < 3)}><summary>{label}{title}{count}</summary>"
            + (f"<table>{arrays}</table>" if arrays else "") + f"{nested}</details>")


def html(obj, params=None, *, treescope: bool = False) -> str:
    """HTML for a notebook: the layer tree (three levels open) with each layer's config and parameter
    count, and every array's shape, dtype, size, mean, std, min and max; ``treescope=True`` renders
    ``params`` (or ``obj``) with treescope instead.

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
