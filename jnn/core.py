"""The layer contract and the combinators that compose layers.

A :class:`Layer` is a pair of pure functions over plain pytrees::

    init(key, example) -> (params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

``example`` is an array or a ``jax.ShapeDtypeStruct`` (batch dimension included);
nothing concrete is computed from it. Every layer has the same ``apply`` signature,
stateless layers return their (empty) state unchanged, and ``params``/``state`` are
nested dicts with readable keys, so ``jax.grad``, ``jax.jit``, ``jax.vmap`` and
``jax.lax.scan`` apply to a model with nothing in between.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jnn import _checks as checks

__all__ = [
    "Layer", "serial", "fan_out", "residual", "named", "output_shape", "shape_of",
    "stateless", "layer_error",
]

PyTree = Any


class Layer(NamedTuple):
    """A layer: two pure functions, plus the names used to key its params.

    Attributes:
      init: ``(key, example) -> (params, state)``.
      apply: ``(params, state, x, *, key=None, train=False) -> (y, new_state)``.
      kind: short family name (``"dense"``, ``"relu"``); ``serial`` keys an
        unnamed child as ``f"{kind}_{i}"`` with ``i`` counted per kind.
      name: an explicit key chosen by the user (see :func:`named`), or ``None``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = jnn.dense(3)
      >>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 4), jnp.float32))
      >>> y, state = layer.apply(params, state, jnp.ones((2, 4)))
      >>> y.shape
      (2, 3)
    """

    init: Callable[..., tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[jax.Array, PyTree]]
    kind: str = "layer"
    name: str | None = None

    @property
    def label(self) -> str:
        """The name used in error messages: the explicit name, else the kind."""
        return self.name or self.kind


def shape_of(example) -> jax.ShapeDtypeStruct:
    """The ``ShapeDtypeStruct`` of an array or ``ShapeDtypeStruct``."""
    if isinstance(example, jax.ShapeDtypeStruct):
        return example
    if hasattr(example, "shape") and hasattr(example, "dtype"):
        return jax.ShapeDtypeStruct(example.shape, example.dtype)
    raise TypeError(
        f"expected an array or jax.ShapeDtypeStruct as the example input, got {type(example).__name__}"
    )


def output_shape(layer: Layer, params: PyTree, state: PyTree, example) -> jax.ShapeDtypeStruct:
    """Shape and dtype of ``layer.apply(params, state, example)``, computed with ``jax.eval_shape``."""
    y, _ = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x), params, state, shape_of(example))
    return y


def layer_error(label: str, message: str, error: type[Exception] = ValueError) -> Exception:
    """An exception whose message starts with the layer's label: ``"dense: expected ..."``."""
    return error(f"{label}: {message}")


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
    _check_layer("named", layer)
    return layer._replace(name=name)


def _check_layer(where: str, layer) -> None:
    if not isinstance(layer, Layer):
        hint = " (did you forget to call it, e.g. jnn.relu() rather than jnn.relu?)" if callable(layer) else ""
        raise TypeError(f"{where}: expected a jnn.Layer, got {type(layer).__name__}{hint}")


def _child_keys(where: str, layers: Sequence[Layer]) -> list[str]:
    """Readable, unique keys: explicit names as given, others ``kind_i`` counted per kind."""
    for layer in layers:
        _check_layer(where, layer)
    counts: dict[str, int] = {}
    keys = []
    for layer in layers:
        if layer.name is not None:
            keys.append(layer.name)
        else:
            i = counts.get(layer.kind, 0)
            counts[layer.kind] = i + 1
            keys.append(f"{layer.kind}_{i}")
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"{where}: child names must be unique, got {duplicates} more than once")
    return keys


def _split(key, n: int):
    return [None] * n if key is None else list(jax.random.split(key, n))


# Records (path, output) pairs while `summary` traces a model; inactive otherwise.
_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("jnn_recorder", default=None)
_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("jnn_path", default=())


@contextlib.contextmanager
def _in_child(name: str):
    token = _PATH.set(_PATH.get() + (name,))
    try:
        yield
    except (ValueError, TypeError) as e:
        # Prefix the child's key so a deep error says where it happened: "[block_0/dense_1] ...".
        msg = str(e)
        msg = f"[{name}/{msg[1:]}" if msg.startswith("[") else f"[{name}] {msg}"
        if type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(msg) from e
    finally:
        _PATH.reset(token)


def _record(kind: str, y, params) -> None:
    records = _RECORDER.get()
    if records is not None:
        records.append(("/".join(_PATH.get()), kind, y, params))


def _apply_child(name, layer, params, state, x, key, train):
    with _in_child(name):
        y, new_state = layer.apply(params.get(name, {}), state.get(name, {}), x, key=key, train=train)
        _record(layer.kind, y, params.get(name, {}))
    return y, new_state


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
    keys = _child_keys("serial", layers)

    def init(key, example):
        x = shape_of(example)
        params, state = {}, {}
        for k, child, child_key in zip(keys, layers, _split(key, len(layers))):
            with _in_child(k):
                p, s = child.init(child_key, x)
                x = output_shape(child, p, s, x)
            _put(params, k, p)
            _put(state, k, s)
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        checks.child_params("serial", params, keys)  # static: free under jit
        new_state = {}
        for k, child, child_key in zip(keys, layers, _split(key, len(layers))):
            x, s = _apply_child(k, child, params, state, x, child_key, train)
            _put(new_state, k, s)
        return x, new_state

    return Layer(init, apply, "serial", name)


_MERGES: dict[str, Callable[[list], jax.Array]] = {
    "add": lambda ys: sum(ys[1:], ys[0]),
    "multiply": lambda ys: jax.tree_util.tree_reduce(jnp.multiply, ys),
    "concat": lambda ys: jnp.concatenate(ys, axis=-1),
}


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
    if isinstance(merge, str):
        if merge not in _MERGES:
            raise ValueError(f"fan_out: merge must be one of {sorted(_MERGES)} or a callable, got {merge!r}")
        merge_fn = _MERGES[merge]
    elif callable(merge):
        merge_fn = merge
    else:
        raise TypeError(f"fan_out: merge must be a string or a callable, got {type(merge).__name__}")
    keys = _child_keys("fan_out", branches)

    def merged(ys):
        shapes = [y.shape for y in ys]
        if merge in ("add", "multiply") and len(set(shapes)) > 1:
            raise ValueError(f"fan_out: merge={merge!r} needs branch outputs of one shape, got {shapes}")
        return merge_fn(ys)

    def init(key, example):
        x = shape_of(example)
        params, state, outs = {}, {}, []
        for k, branch, branch_key in zip(keys, branches, _split(key, len(branches))):
            with _in_child(k):
                p, s = branch.init(branch_key, x)
                outs.append(output_shape(branch, p, s, x))
            _put(params, k, p)
            _put(state, k, s)
        jax.eval_shape(merged, outs)  # a shape mismatch fails here, at init
        return params, state

    def apply(params, state, x, *, key=None, train=False):
        checks.child_params("fan_out", params, keys)  # static: free under jit
        ys, new_state = [], {}
        for k, branch, branch_key in zip(keys, branches, _split(key, len(branches))):
            y, s = _apply_child(k, branch, params, state, x, branch_key, train)
            ys.append(y)
            _put(new_state, k, s)
        return merged(ys), new_state

    return Layer(init, apply, "fan_out", name)


def residual(*layers: Layer, name: str | None = None) -> Layer:
    """``x + serial(*layers)(x)``: a skip connection around a block.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.residual(jnn.dense(3), jnn.relu())
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> sorted(params)
      ['serial_0']
    """
    from jnn.layers.basic import identity  # local import: layers depend on core

    return fan_out(serial(*layers), identity(), merge="add", name=name)._replace(kind="residual")
