"""Looking inside a model by path (child keys joined by ``/``, as in the params: ``"block_0/dense_1"``)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax

from jnn import _checks as checks
from jnn import core, tree

__all__ = ["get", "capture"]


def get(model_or_tree, path: str):
    """The sub-layer of a model, or the sub-tree of its params/state, at ``path`` (``""``: the whole).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.named("head", jnn.dense(10)))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> jnn.get(model, "head").config["features"], jnn.get(params, "dense_0/w").shape
      (10, (4, 8))
    """
    if not isinstance(path, str):
        raise TypeError(f"get: expected a path string like 'block_0/dense_1', got {type(path).__name__}")
    is_layer = isinstance(model_or_tree, core.Layer)
    if not is_layer and not isinstance(model_or_tree, Mapping):
        raise TypeError(f"get: expected a jnn.Layer or a params/state dict, got {type(model_or_tree).__name__}")
    node, walked = model_or_tree, []
    for key in [k for k in path.split("/") if k]:
        children = (node.children or {}) if is_layer else node
        if is_layer and key not in children:
            raise KeyError(f"get: {'/'.join(walked) or 'the model'} ({node.kind}) has no child {key!r}; its children "
                           f"are {list(children)}")
        if not is_layer and (not isinstance(node, Mapping) or key not in node):
            keys = list(node) if isinstance(node, Mapping) else f"a leaf of type {type(node).__name__}"
            raise KeyError(f"get: no key {key!r} at {'/'.join(walked) or 'the top level'} (keys there: {keys}); "
                           f"children without params or state have no entry (their params are {{}})")
        node = children[key]
        walked.append(key)
    return node


def _current_trace():
    try:
        from jax._src import core as jax_core  # the trace that is running now (jit, vmap, eager)
        return jax_core.trace_ctx.trace
    except (ImportError, AttributeError):  # pragma: no cover - a newer JAX: skip the leak check
        return None


def _from_inner_trace(value, trace) -> bool:
    """Whether ``value`` holds tracers of a transformation nested inside the model (scan, remat)."""
    return trace is not None and any(isinstance(leaf, jax.core.Tracer) and getattr(leaf, "_trace", trace) is not trace
                                     for leaf in jax.tree_util.tree_leaves(value))


@checks.declare(model=checks.instance_of(core.Layer, described="a jnn.Layer"))
def capture(model: core.Layer, params, state, x, patterns: Iterable[str] | str, *, key=None,
            train: bool = False, **keywords) -> tuple[Any, Any, dict[str, Any]]:
    """``(y, new_state, {path: output})``: ``model`` applied once, with the outputs of the sub-layers
    matching :mod:`jnn.tree` ``patterns``; works under ``jit``, ``vmap``, ``grad``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(2))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> run = jax.jit(lambda p, x: jnn.capture(model, p, state, x, ["relu_0", "dense_1"]))
      >>> y, _, out = run(params, jnp.ones((5, 3)))
      >>> sorted(out), out["relu_0"].shape, bool((out["dense_1"] == y).all())
      (['dense_1', 'relu_0'], (5, 4), True)
    """
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"capture: expected one or more non-empty path patterns, got {patterns!r}")
    trace = _current_trace()
    with core.recording() as records:
        y, new_state = model.apply(params, state, x, key=key, train=train, **keywords)
    captured: dict[str, Any] = {}
    for path, _, output, _ in records:
        if tree.matches(path, patterns):
            if _from_inner_trace(output, trace):
                raise ValueError(f"capture: {path!r} runs inside a jax transformation of the model "
                                 f"(lax.scan, checkpoint), so its output cannot be returned; capture "
                                 f"the layer that contains it")
            captured.pop(path, None)
            captured[path] = output
    if not captured:
        raise ValueError(f"capture: no sub-layer of {model.label!r} matches {list(patterns)}; its paths are "
                         f"{list(dict.fromkeys(r[0] for r in records))}")
    return y, new_state, captured
