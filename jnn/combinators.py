"""Combinators: layers made of layers (serial, fan_out, residual) and the small ones (stateless,
identity, named). Each builds its children's keys, threads shapes through ``jax.eval_shape`` at
init and calls children through :func:`jnn.apply_child`, the way any composite does.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.core import (Layer, apply_child, check_keywords, checked_init, checked_output_shape, child_scope,
                      ensure_layer, make_children, shape_of, split_key)

__all__ = ["serial", "fan_out", "residual", "named", "stateless", "identity", "towers", "heads", "select", "merge"]


def stateless(kind: str, fn: Callable[[jax.Array], jax.Array], *, name: str | None = None) -> Layer:
    """A layer with no params and no state that applies ``fn`` to its input.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> square = jnn.stateless("square", lambda x: x * x)
      >>> square.apply({}, {}, jnp.array([3.0]))[0]
      Array([9.], dtype=float32)
    """

    def init(key, example):
        shape_of(example)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, kind, name)


def identity(*, name: str | None = None) -> Layer:
    """Returns its input unchanged (the skip branch of a residual block).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.identity().apply({}, {}, jnp.array([1.0, 2.0]))[0]
      Array([1., 2.], dtype=float32)
    """
    return stateless("identity", lambda x: x, name=name)


def named(name: str, layer: Layer) -> Layer:
    """The same layer, keyed as ``name`` inside any combinator.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.named("encoder", jnn.dense(4)), jnn.dense(2))
      >>> params, _ = model.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> sorted(params)
      ['dense_0', 'encoder']
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"named: expected a non-empty name without '/', got {name!r}")
    ensure_layer("named", layer)
    return layer._replace(name=name)




def _put(tree: dict, name: str, value) -> None:
    if jax.tree_util.tree_structure(value).num_leaves or not isinstance(value, dict):
        tree[name] = value


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Layers applied one after another; params keyed by child name.

    Each child's init sees the output shape of the previous one (by ``jax.eval_shape``);
    ``key`` is split among the children at both init and apply. Children without params
    or state are left out of the params/state dicts.

    Args:
      *layers: the children, in order.
      name: optional explicit name for the whole block.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> mlp = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(1))
      >>> params, state = mlp.init(jax.random.key(0), jax.ShapeDtypeStruct((8, 2), jnp.float32))
      >>> sorted(params), params["dense_1"]["w"].shape
      (['dense_0', 'dense_1'], (4, 1))
      >>> mlp.apply(params, state, jnp.ones((8, 2)))[0].shape
      (8, 1)
    """
    if not layers:
        raise ValueError("serial: expected at least one layer, got none")
    children = make_children("serial", layers)
    keys, keywords = list(children), frozenset().union(*(layer.keywords for layer in layers))
    label = name or "serial"

    def init(key, example):
        x = shape_of(example)
        params, state = {}, {}
        for k, child, child_key in zip(keys, layers, split_key(key, len(layers))):
            with child_scope(k):
                p, s = checked_init(label, child, child_key, x)
                x = checked_output_shape(label, child, p, s, x)
            _put(params, k, p)
            _put(state, k, s)
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        check_keywords(label, keywords, kwargs)
        new_state = {}
        for k, child, child_key in zip(keys, layers, split_key(key, len(layers))):
            x, s = apply_child(k, child, params, state, x, key=child_key, train=train, **kwargs)
            _put(new_state, k, s)
        return x, new_state

    return Layer(init, apply, "serial", name, keywords, children)


_MERGES: dict[str, Callable[[list], jax.Array]] = {
    "add": lambda ys: sum(ys[1:], ys[0]),
    "multiply": lambda ys: jax.tree_util.tree_reduce(jnp.multiply, ys),
    "concat": lambda ys: jnp.concatenate(ys, axis=-1),
}


@checks.declare(merge=checks.name_or_callable(_MERGES))
def fan_out(*branches: Layer, merge: str | Callable[[list], jax.Array] = "add",
            name: str | None = None) -> Layer:
    """Every branch applied to the same input, the outputs merged into one.

    Args:
      *branches: the branches (any layers, e.g. ``serial`` blocks or ``identity()``).
      merge: ``"add"``, ``"multiply"``, ``"concat"`` (last axis), or a function from the
        list of branch outputs to one array.
      name: optional explicit name for the block.

    Example (a residual connection, ``y = x + f(x)``):
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.fan_out(jnn.serial(jnn.dense(3), jnn.relu()), jnn.identity(), merge="add")
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> block.apply(params, state, jnp.ones((2, 3)))[0].shape
      (2, 3)
    """
    if len(branches) < 2:
        raise ValueError(f"fan_out: expected at least two branches, got {len(branches)}")
    merge_fn = _MERGES[merge] if isinstance(merge, str) else merge
    children = make_children("fan_out", branches)
    keys, keywords = list(children), frozenset().union(*(layer.keywords for layer in branches))
    label = name or "fan_out"

    def merged(ys):
        shapes = [y.shape for y in ys]
        if merge in ("add", "multiply") and len(set(shapes)) > 1:
            raise ValueError(f"fan_out: merge={merge!r} needs branch outputs of one shape, got {shapes}")
        return merge_fn(ys)

    def init(key, example):
        x = shape_of(example)
        params, state, outs = {}, {}, []
        for k, branch, branch_key in zip(keys, branches, split_key(key, len(branches))):
            with child_scope(k):
                p, s = checked_init(label, branch, branch_key, x)
                outs.append(checked_output_shape(label, branch, p, s, x))
            _put(params, k, p)
            _put(state, k, s)
        jax.eval_shape(merged, outs)  # a shape mismatch fails here, at init
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        check_keywords(label, keywords, kwargs)
        ys, new_state = [], {}
        for k, branch, branch_key in zip(keys, branches, split_key(key, len(branches))):
            y, s = apply_child(k, branch, params, state, x, key=branch_key, train=train, **kwargs)
            ys.append(y)
            _put(new_state, k, s)
        return merged(ys), new_state

    return Layer(init, apply, "fan_out", name, keywords, children)


def residual(*layers: Layer, name: str | None = None) -> Layer:
    """``x + serial(*layers)(x)``: a skip connection around a block.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.residual(jnn.dense(3), jnn.relu())
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> sorted(params)
      ['serial_0']
    """
    return fan_out(serial(*layers), identity(), merge="add", name=name)._replace(kind="residual")


def _branches(kind: str, layers: Mapping[str, Layer], pick: Callable, name: str | None) -> Layer:
    """Children keyed by ``layers``' keys, child ``k`` applied to ``pick(x, k)``; a dict out."""
    if not layers:
        raise ValueError(f"{kind}: expected at least one layer, given as key=layer, got none")
    children = make_children(kind, [named(k, layer) for k, layer in layers.items()])
    keywords = frozenset().union(*(layer.keywords for layer in layers.values()))
    label = name or kind

    def init(key, example):
        x = shape_of(example)
        params, state = {}, {}
        for (k, child), child_key in zip(children.items(), split_key(key, len(children))):
            with child_scope(k):
                p, s = checked_init(label, child, child_key, pick(label, x, k))
            _put(params, k, p)
            _put(state, k, s)
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        check_keywords(label, keywords, kwargs)
        ys, new_state = {}, {}
        for (k, child), child_key in zip(children.items(), split_key(key, len(children))):
            ys[k], s = apply_child(k, child, params, state, pick(label, x, k), key=child_key, train=train,
                                   **kwargs)
            _put(new_state, k, s)
        return ys, new_state

    return Layer(init, apply, kind, name, keywords, children)


def _entry(label: str, x, k: str):
    if not isinstance(x, Mapping) or k not in x:
        have = sorted(x) if isinstance(x, Mapping) else f"a {type(x).__name__}"
        raise ValueError(f"{label}: expected a dict input with key {k!r} (one per tower), got {have}")
    return x[k]


def towers(name: str | None = None, **layers: Layer) -> Layer:
    """Each layer applied to its own entry of a dict input: ``{k: layers[k](x[k])}``.

    The first half of a multi-input model: an image and a feature vector each go through
    their own tower; :func:`merge` then joins the outputs. Params are keyed by the same keys.

    Shapes: ``x: {k: [B, ...]}`` -> ``{k: [B, ...]}``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.towers(image=jnn.serial(jnn.flatten(), jnn.dense(8)), extra=jnn.dense(4)),
      ...                    jnn.merge("concat"), jnn.dense(2))
      >>> x = {"image": jnp.zeros((5, 4, 4, 1)), "extra": jnp.zeros((5, 3))}
      >>> params, state = model.init(jax.random.key(0), x)
      >>> sorted(params["towers_0"]), model.apply(params, state, x)[0].shape
      (['extra', 'image'], (5, 2))
    """
    return _branches("towers", layers, _entry, name)


def heads(name: str | None = None, **layers: Layer) -> Layer:
    """Every layer applied to the same input, the outputs as a dict: ``{k: layers[k](x)}``.

    The end of a multi-output model (a class head and a value head on one body); a loss over
    a dict of outputs and a dict of targets then trains it with ``fit``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.heads(label=jnn.dense(10), score=jnn.dense(1)))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> {k: v.shape for k, v in model.apply(params, state, jnp.ones((2, 3)))[0].items()}
      {'label': (2, 10), 'score': (2, 1)}
    """
    return _branches("heads", layers, lambda label, x, k: x, name)


def select(key: str | int, *, name: str | None = None) -> Layer:
    """The entry ``x[key]`` of a dict (or tuple) input.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.select("image").apply({}, {}, {"image": jnp.ones((2, 3)), "extra": jnp.zeros((2, 1))})[0].shape
      (2, 3)
    """
    label = name or "select"

    def pick(x):
        if isinstance(x, Mapping):
            return _entry(label, x, key)
        if isinstance(x, tuple) and isinstance(key, int) and -len(x) <= key < len(x):
            return x[key]
        raise ValueError(f"{label}: expected a dict or tuple input with entry {key!r}, got {type(x).__name__}")

    return stateless("select", pick, name=name)._replace(config={"key": key})


def merge(how: str | Callable[[list], jax.Array] = "concat", *, name: str | None = None) -> Layer:
    """Joins a dict or tuple of arrays into one array: ``"concat"`` (last axis), ``"add"``,
    ``"multiply"``, or a function of the list of arrays. A dict's entries are taken in sorted
    key order (JAX's order for dicts), so the result does not depend on how it was built.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.merge("concat").apply({}, {}, {"b": jnp.ones((2, 1)), "a": jnp.zeros((2, 3))})[0][0]
      Array([0., 0., 0., 1.], dtype=float32)
    """
    label = name or "merge"
    how = checks.name_or_callable(_MERGES)(label, "how", how)
    join = _MERGES[how] if isinstance(how, str) else how

    def fn(x):
        if not isinstance(x, (Mapping, tuple, list)) or not x:
            raise ValueError(f"{label}: expected a non-empty dict or tuple of arrays, got {type(x).__name__}")
        ys = [x[k] for k in sorted(x)] if isinstance(x, Mapping) else list(x)
        shapes = [tuple(y.shape) for y in ys]
        if how in ("add", "multiply") and len(set(shapes)) > 1:
            raise ValueError(f"{label}: how={how!r} needs entries of one shape, got {shapes}")
        return join(ys)

    return stateless("merge", fn, name=name)._replace(config={"how": how})
