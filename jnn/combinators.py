"""Combinators: layers made of layers (:func:`composite`, serial, fan_out, residual, towers, heads)
and the small ones (stateless, identity, named, select, merge)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn.core import (Children, Layer, apply_child, check_keywords, checked_apply, checked_init, child_of,
                      child_scope, ensure_layer, inferring, input_signature, make_children, shape_of,
                      split_key)

__all__ = ["composite", "serial", "fan_out", "residual", "named", "stateless", "identity", "towers", "heads", "select", "merge"]


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


def composite(forward: Callable, children: Mapping[str, Layer] | Sequence[Layer], *, kind: str = "composite",
              name: str | None = None, keywords: Sequence[str] = ()) -> Layer:
    """A layer made of children, written as its forward pass alone: the way to write a composite.

    ``forward(call, x) -> y`` (any pytrees) calls child ``k`` as ``call(k, x_k)``, which passes the
    child its params, state, a key split for it, ``train`` and the keywords it declares, keeps its
    new state and returns its output. ``init`` runs ``forward`` once abstractly to learn each
    child's input shape. ``children``: ``{key: layer}`` or a sequence (keyed ``kind_i``);
    ``keywords``: extra ``apply`` keywords the forward itself accepts.

    Example (a two-input model):
      >>> import jax, jax.numpy as jnp, jnn
      >>> def forward(call, x):
      ...     return call("head", jnp.concatenate([call("image", x["image"]), x["extra"]], -1))
      >>> model = jnn.composite(forward, {"image": jnn.serial(jnn.flatten(), jnn.dense(8)),
      ...                                 "head": jnn.dense(2)}, kind="two_input")
      >>> x = {"image": jnp.zeros((4, 5, 5, 1)), "extra": jnp.zeros((4, 3))}
      >>> params, state = model.init(jax.random.key(0), x)
      >>> params["head"]["w"].shape, model.apply(params, state, x)[0].shape
      ((11, 2), (4, 2))
    """
    label = name or kind
    if not isinstance(children, Children):
        items = children.items() if isinstance(children, Mapping) else None
        children = make_children(label, [named(k, c) for k, c in items] if items else list(children))
    keywords = frozenset(keywords).union(*(c.keywords for c in children.values()))

    known: dict = {}  # input signature -> each child's input shape, from one abstract forward

    def child_inputs(keys, example):
        specs = known.setdefault(input_signature(example), {})
        if specs:
            return specs

        def probe(x):
            def call(k, x_k, **kw):
                with child_scope(k):
                    specs.setdefault(k, shape_of(x_k))
                    p, s = checked_init(label, child_of(label, children, k), keys[k], x_k)
                    return checked_apply(label, child_of(label, children, k), p, s, x_k)[0]
            return forward(call, x)

        try:
            with inferring():
                jax.eval_shape(probe, shape_of(example))
        except BaseException:
            specs.clear()
            raise
        return specs

    def init(key, example):
        keys = dict(zip(children, split_key(key, len(children))))
        specs = child_inputs(keys, example)
        params, state = {}, {}
        for k, child in children.items():
            if k not in specs:
                raise ValueError(f"{label}: its forward never calls child {k!r}, so it cannot be initialized")
            with child_scope(k):
                p, s = checked_init(label, child, keys[k], specs[k])
            _put(params, k, p)
            _put(state, k, s)
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        check_keywords(label, keywords, kwargs)
        keys, new_state = dict(zip(children, split_key(key, len(children)))), dict(state)

        def call(k, x_k, **kw):
            y, s = apply_child(k, child_of(label, children, k), params, state, x_k, key=keys[k], train=train,
                               **{**kwargs, **kw})
            _put(new_state, k, s)
            return y

        return forward(call, x), new_state

    return Layer(init, apply, kind, name, keywords, children)


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Layers applied one after another; params keyed by child (those without params left out).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> mlp = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(1))
      >>> params, state = mlp.init(jax.random.key(0), jax.ShapeDtypeStruct((8, 2), jnp.float32))
      >>> sorted(params), params["dense_1"]["w"].shape, mlp.apply(params, state, jnp.ones((8, 2)))[0].shape
      (['dense_0', 'dense_1'], (4, 1), (8, 1))
    """
    children = make_children("serial", _enough("serial", layers, 1, "expected at least one layer, got none"))

    def forward(call, x):
        for k in children:
            x = call(k, x)
        return x

    return composite(forward, children, kind="serial", name=name)


_MERGES: dict[str, Callable[[list], jax.Array]] = {
    "add": lambda ys: sum(ys[1:], ys[0]),
    "multiply": lambda ys: jax.tree_util.tree_reduce(jnp.multiply, ys),
    "concat": lambda ys: jnp.concatenate(ys, axis=-1),
}


def _enough(label: str, items, n: int, message: str):
    checks.require(len(items) >= n, label, message)
    return items


def _join(label: str, what: str, how, ys: list):
    """``ys`` joined by ``how`` (a name in ``_MERGES`` or a function); an elementwise join needs one shape."""
    shapes = [tuple(y.shape) for y in ys]
    checks.require(how not in ("add", "multiply") or len(set(shapes)) < 2, label, f"{what} of one shape, got {shapes}")
    return (_MERGES[how] if isinstance(how, str) else how)(ys)


@checks.declare(merge=checks.name_or_callable(_MERGES))
def fan_out(*branches: Layer, merge: str | Callable[[list], jax.Array] = "add",
            name: str | None = None) -> Layer:
    """Every branch applied to the same input, the outputs merged: ``merge`` is ``"add"``,
    ``"multiply"``, ``"concat"`` (last axis), or a function of the list of outputs.

    Example (a residual connection, ``y = x + f(x)``):
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.fan_out(jnn.serial(jnn.dense(3), jnn.relu()), jnn.identity(), merge="add")
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> block.apply(params, state, jnp.ones((2, 3)))[0].shape
      (2, 3)
    """
    _enough("fan_out", branches, 2, f"expected at least two branches, got {len(branches)}")
    children = make_children("fan_out", branches)

    def forward(call, x):
        return _join("fan_out", f"merge={merge!r} needs branch outputs", merge, [call(k, x) for k in children])

    return composite(forward, children, kind="fan_out", name=name)


def residual(*layers: Layer, name: str | None = None) -> Layer:
    """``x + serial(*layers)(x)``: a skip connection around a block.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, state = jnn.residual(jnn.dense(3), jnn.relu()).init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> sorted(params)
      ['serial_0']
    """
    return fan_out(serial(*layers), identity(), merge="add", name=name)._replace(kind="residual")


def _branches(kind: str, layers: Mapping[str, Layer], pick: Callable, name: str | None) -> Layer:
    """Children keyed by ``layers``' keys, child ``k`` applied to ``pick(x, k)``; a dict out."""
    _enough(kind, layers, 1, "expected at least one layer, given as key=layer, got none")
    label = name or kind
    return composite(lambda call, x: {k: call(k, pick(label, x, k)) for k in layers}, layers, kind=kind,
                     name=name)


def _entry(label: str, x, k):
    """``x[k]`` of a dict (or tuple) input, or a message naming what the input has."""
    if (isinstance(x, Mapping) and k in x) or (isinstance(x, tuple) and isinstance(k, int) and -len(x) <= k < len(x)):
        return x[k]
    have = sorted(x) if isinstance(x, Mapping) else f"a {type(x).__name__}"
    raise ValueError(f"{label}: expected a dict (or tuple) input with entry {k!r}, got {have}")


def towers(name: str | None = None, **layers: Layer) -> Layer:
    """Each layer applied to its own entry of a dict input: ``{k: layers[k](x[k])}`` (params keyed by ``k``).

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
    return stateless("select", lambda x: _entry(label, x, key), name=name)._replace(config={"key": key})


def merge(how: str | Callable[[list], jax.Array] = "concat", *, name: str | None = None) -> Layer:
    """Joins a dict (in sorted key order) or tuple of arrays into one array: ``"concat"`` (last
    axis), ``"add"``, ``"multiply"``, or a function of the list of arrays.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.merge("concat").apply({}, {}, {"b": jnp.ones((2, 1)), "a": jnp.zeros((2, 3))})[0][0]
      Array([0., 0., 0., 1.], dtype=float32)
    """
    label = name or "merge"
    how = checks.name_or_callable(_MERGES)(label, "how", how)

    def fn(x):
        if not isinstance(x, (Mapping, tuple, list)) or not x:
            raise ValueError(f"{label}: expected a non-empty dict or tuple of arrays, got {type(x).__name__}")
        return _join(label, f"how={how!r} needs entries", how, [x[k] for k in sorted(x)] if isinstance(x, Mapping)
                     else list(x))

    return stateless("merge", fn, name=name)._replace(config={"how": how})
