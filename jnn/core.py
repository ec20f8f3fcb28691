"""The layer contract and the combinators that compose layers.

A :class:`Layer` is a pair of pure functions over plain pytrees::

    init(key, example) -> (params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

``example`` is an array or a ``jax.ShapeDtypeStruct`` (batch dimension included);
nothing concrete is computed from it. Every layer has the same ``apply`` signature,
stateless layers return their (empty) state unchanged, and ``params``/``state`` are
nested dicts with readable keys, so ``jax.grad``, ``jax.jit``, ``jax.vmap`` and
``jax.lax.scan`` apply to a model with nothing in between.

A layer may take extra ``apply`` keywords (``lengths``, ``mask``, ``context``) if it declares
them in ``Layer.keywords``; the combinators here accept the union of their children's, pass
each only to the children that declare it, and reject any other. Composites record their
children (``Layer.children``) and call them through :func:`apply_child`.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jnn import _checks as checks

__all__ = [
    "Layer", "Children", "serial", "fan_out", "residual", "named", "output_shape", "shape_of",
    "stateless", "identity", "layer_error", "apply_child", "CONTRACT",
]

#: The layer contract, quoted by the errors that catch a layer breaking it.
CONTRACT = ("init(key, example) -> (params, state) and "
            "apply(params, state, x, *, key=None, train=False) -> (y, new_state)")

PyTree = Any


class Layer(NamedTuple):
    """A layer: two pure functions, plus the names used to key its params.

    Attributes:
      init: ``(key, example) -> (params, state)``.
      apply: ``(params, state, x, *, key=None, train=False) -> (y, new_state)``.
      kind: short family name (``"dense"``, ``"relu"``); ``serial`` keys an
        unnamed child as ``f"{kind}_{i}"`` with ``i`` counted per kind.
      name: an explicit key chosen by the user (see :func:`named`), or ``None``.
      keywords: the extra keyword arguments ``apply`` accepts beyond ``key``/``train``
        (``lengths``, ``mask``, ``context``); combinators route each keyword to the children
        that declare it.
      children: a composite's children as :class:`Children` (``{key: layer}``, in order;
        keys as in its params), or ``None`` for a leaf. ``layer["key"]`` / ``layer[i]``
        return a child; :func:`jnn.get` follows a path ``"block_0/dense_1"``.

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
    keywords: frozenset[str] = frozenset()
    children: "Children" = None  # type: ignore[assignment]  # a leaf: no children

    @property
    def label(self) -> str:
        """The name used in error messages: the explicit name, else the kind."""
        return self.name or self.kind

    def __getitem__(self, index):
        """``model["dense_0"]`` / ``model[1]``: a composite's child, by key or position.

        A ``Layer`` is still a NamedTuple (``init, apply, *_ = layer`` and ``_replace`` work),
        but indexing reaches its children rather than its fields: use ``layer.init`` /
        ``layer.apply`` for those.
        """
        children = self.children or Children()
        if not children and isinstance(index, (int, str)):
            raise TypeError(f"{self.label}: a {self.kind!r} layer has no children to index" + _FIELDS_HINT)
        if isinstance(index, str):
            if index in children:
                return children[index]
            raise KeyError(f"{self.label}: no child {index!r}; its children are {list(children)}"
                           + _FIELDS_HINT)
        if isinstance(index, int) and not isinstance(index, bool):
            layers = list(children.values())
            if -len(layers) <= index < len(layers):
                return layers[index]
            raise IndexError(f"{self.label}: child index {index} out of range for its "
                             f"{len(layers)} children {list(children)}" + _FIELDS_HINT)
        raise TypeError(f"{self.label}: index a layer by a child's key (str) or position (int), "
                        f"got {type(index).__name__}" + _FIELDS_HINT)


_FIELDS_HINT = (" (layer[i] indexes children, never the NamedTuple's fields: use layer.init, "
                "layer.apply, or jnn.get(model, 'a/b') for a nested path)")


class Children(Mapping):
    """A composite's children in order, ``{key: layer}``: an immutable, hashable mapping.

    Example:
      >>> import jnn
      >>> model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.named("head", jnn.dense(2)))
      >>> list(model.children), model["head"].kind, model[1].kind
      (['dense_0', 'relu_0', 'head'], 'dense', 'relu')
    """

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[tuple[str, Layer]] = ()):
        self._items = tuple((str(k), v) for k, v in items)

    def __getitem__(self, key: str) -> Layer:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other) -> bool:
        return isinstance(other, Children) and self._items == other._items

    def __repr__(self) -> str:
        return "Children(" + ", ".join(f"{k}={v.kind}" for k, v in self._items) + ")"


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
    """Shape and dtype of ``layer.apply(params, state, example)``, computed with ``jax.eval_shape``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = jnn.dense(3)
      >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 4)))
      >>> out = jnn.output_shape(layer, params, state, jnp.zeros((5, 4)))
      >>> out.shape, out.dtype
      ((5, 3), dtype('float32'))
    """
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
    _check_layer("named", layer)
    return layer._replace(name=name)


def _check_layer(where: str, layer) -> None:
    if not isinstance(layer, Layer):
        hint = " (did you forget to call it, e.g. jnn.relu() rather than jnn.relu?)" if callable(layer) else ""
        raise TypeError(f"{where}: expected a jnn.Layer, got {type(layer).__name__}{hint}")


def _check_signature(where: str, layer: Layer) -> None:
    """``apply`` must take ``key`` and ``train`` (and the keywords it declares) by keyword."""
    try:
        parameters = inspect.signature(layer.apply).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    names = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    missing = sorted(({"key", "train"} | set(layer.keywords)) - names)
    if missing:
        raise TypeError(f"{where}: layer {layer.label!r} breaks the layer contract: its apply takes no "
                        f"keyword argument {', '.join(map(repr, missing))}. Every layer has "
                        f"{CONTRACT} (extra keywords declared in Layer(..., keywords=...)).")


def _describe(out) -> str:
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}"
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"a single array of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def _checked_init(where: str, layer: Layer, key, example):
    """``layer.init(key, example)``, with a clear message when the result is not a pair."""
    out = layer.init(key, example)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where}: layer {layer.label!r} breaks the layer contract: its init returned "
                        f"{_describe(out)}, expected a pair (params, state). Every layer has {CONTRACT}.")
    return out


# True while a combinator's init applies a child without keywords to learn its output shape: a
# layer that needs a keyword to run (cross-attention's context=) then stands in a placeholder.
_INFERRING_SHAPE: contextvars.ContextVar[bool] = contextvars.ContextVar("jnn_inferring_shape", default=False)


def _inferring_shape() -> bool:
    return _INFERRING_SHAPE.get()


def _checked_output_shape(where: str, layer: Layer, params, state, example):
    """The output ``ShapeDtypeStruct`` of ``layer``; checks that apply returns ``(y, new_state)``."""

    def run(p, s, x):
        token = _INFERRING_SHAPE.set(True)
        try:
            out = layer.apply(p, s, x)
        finally:
            _INFERRING_SHAPE.reset(token)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{where}: layer {layer.label!r} breaks the layer contract: its apply returned "
                            f"{_describe(out)}, expected a pair (y, new_state). Every layer has {CONTRACT}.")
        return out

    return jax.eval_shape(run, params, state, shape_of(example))[0]


def _child_keys(where: str, layers: Sequence[Layer]) -> list[str]:
    """Readable, unique keys: explicit names as given, others ``kind_i`` counted per kind."""
    for layer in layers:
        _check_layer(where, layer)
        _check_signature(where, layer)
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


def _union_keywords(layers: Sequence[Layer]) -> frozenset[str]:
    return frozenset().union(*(layer.keywords for layer in layers))


def _check_keywords(label: str, accepted: frozenset[str], given: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise TypeError(f"{label}: unexpected keyword argument {', '.join(map(repr, unknown))}: this model's "
                        f"apply accepts key, train and {sorted(accepted) or 'no extra keywords'} "
                        f"(a keyword reaches the layers that declare it in Layer.keywords)")


def _split(key, n: int):
    return [None] * n if key is None else list(jax.random.split(key, n))


# Records (path, kind, output, params) while `summary` or `capture` traces a model; inactive otherwise.
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


def apply_child(name: str, layer: Layer, params: PyTree, state: PyTree, x, *, key=None,
                train: bool = False, **keywords):
    """Applies a composite's child ``layer`` under the key ``name``: the way to call a child.

    Looks up the child's params and state as ``params.get(name, {})`` and
    ``state.get(name, {})`` (so pass the *composite's* dicts), passes on only the keywords
    the child declares in ``layer.keywords``, prefixes errors raised inside with
    ``[name]`` (``"[block_0/dense_1] dense: expected ..."``), and records the output for
    :func:`jnn.summary` rows and :func:`jnn.capture`. Only Python runs here, at trace time:
    the compiled program is the same as calling ``layer.apply`` directly.

    Args:
      name: the child's key in the composite's params and state.
      layer: the child.
      params, state: the composite's params and state dicts.
      x: the child's input.
      key, train: as for any ``apply`` (split the key among children yourself).
      **keywords: extra keywords; those the child does not declare are dropped.

    Returns:
      ``(y, child_state)``: the child's output and new state (store it under ``name``).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> inner = jnn.dense(2)
      >>> def init(key, example):
      ...     params, _ = inner.init(key, example)
      ...     return {"proj": params}, {}
      >>> def apply(params, state, x, *, key=None, train=False):
      ...     y, _ = jnn.apply_child("proj", inner, params, state, x, key=key, train=train)
      ...     return jnp.tanh(y), state
      >>> block = jnn.Layer(init, apply, "block", children=jnn.Children([("proj", inner)]))
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> block.apply(params, state, jnp.ones((1, 3)))[0].shape
      (1, 2)
    """
    routed = {k: v for k, v in keywords.items() if k in layer.keywords}
    child_params = params.get(name, {}) if isinstance(params, Mapping) else params
    child_state = state.get(name, {}) if isinstance(state, Mapping) else state
    with _in_child(name):
        y, new_state = layer.apply(child_params, child_state, x, key=key, train=train, **routed)
        _record(layer.kind, y, child_params)
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
    keywords = _union_keywords(layers)
    label = name or "serial"

    def init(key, example):
        x = shape_of(example)
        params, state = {}, {}
        for k, child, child_key in zip(keys, layers, _split(key, len(layers))):
            with _in_child(k):
                p, s = _checked_init(label, child, child_key, x)
                x = _checked_output_shape(label, child, p, s, x)
            _put(params, k, p)
            _put(state, k, s)
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        _check_keywords(label, keywords, kwargs)
        checks.child_params("serial", params, keys)  # static: free under jit
        new_state = {}
        for k, child, child_key in zip(keys, layers, _split(key, len(layers))):
            x, s = apply_child(k, child, params, state, x, key=child_key, train=train, **kwargs)
            _put(new_state, k, s)
        return x, new_state

    return Layer(init, apply, "serial", name, keywords, Children(zip(keys, layers)))


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
    keywords = _union_keywords(branches)
    label = name or "fan_out"

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
                p, s = _checked_init(label, branch, branch_key, x)
                outs.append(_checked_output_shape(label, branch, p, s, x))
            _put(params, k, p)
            _put(state, k, s)
        jax.eval_shape(merged, outs)  # a shape mismatch fails here, at init
        return params, state

    def apply(params, state, x, *, key=None, train=False, **kwargs):
        _check_keywords(label, keywords, kwargs)
        checks.child_params("fan_out", params, keys)  # static: free under jit
        ys, new_state = [], {}
        for k, branch, branch_key in zip(keys, branches, _split(key, len(branches))):
            y, s = apply_child(k, branch, params, state, x, key=branch_key, train=train, **kwargs)
            ys.append(y)
            _put(new_state, k, s)
        return merged(ys), new_state

    return Layer(init, apply, "fan_out", name, keywords, Children(zip(keys, branches)))


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
