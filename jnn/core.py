"""The layer contract (:data:`CONTRACT`, over plain nested dicts): :class:`Layer`, the one check of
params (:func:`verify_params`), and the helpers composites use (:func:`apply_child`).
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
import weakref
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "Layer", "Children", "Config", "output_shape", "shape_of", "layer_error", "apply_child",
    "CONTRACT", "ensure_layer", "check_signature", "checked_init", "checked_apply",
    "checked_output_shape", "child_of", "inferring", "split_key", "make_children",
    "check_keywords", "child_scope", "record", "recording", "inferring_shape", "verify_params", "input_signature",
]

CONTRACT = ("init(key, example) -> (params, state) and "
            "apply(params, state, x, *, key=None, train=False) -> (y, new_state)")

PyTree = Any


class Config(Mapping):
    """An immutable, ordered, hashable ``{name: value}`` mapping (a layer's config or methods).

    Example:
      >>> import jnn
      >>> jnn.dense(3).config["features"]
      3
    """

    __slots__ = ("_items",)

    def __init__(self, items=()):
        items = items.items() if isinstance(items, Mapping) else items
        self._items = tuple((str(k), v) for k, v in items)

    def __getitem__(self, key: str):
        return dict(self._items)[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        try:
            return hash(self._items)
        except TypeError:  # an unhashable value (a list): identity
            return id(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={_short(v)}" for k, v in self._items) + ")"


class Children(Config):
    """A composite's children in order, ``{key: layer}``.

    Example:
      >>> import jnn
      >>> model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.named("head", jnn.dense(2)))
      >>> list(model.children), model["head"].kind, model[1].kind
      (['dense_0', 'relu_0', 'head'], 'dense', 'relu')
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Children(" + ", ".join(f"{k}={v.kind}" for k, v in self._items) + ")"


def _short(value) -> str:
    """A value as a config entry reads in a repr: functions by name, long reprs cut."""
    if callable(value) and not isinstance(value, (Layer, type)) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_EMPTY = Config()


class _Fields(NamedTuple):
    init: Callable[..., tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[jax.Array, PyTree]]
    kind: str = "layer"
    name: str | None = None
    keywords: frozenset[str] = frozenset()
    children: "Children" = None  # type: ignore[assignment]  # a leaf: no children
    config: Config = _EMPTY
    methods: Config = _EMPTY


class Layer(_Fields):
    """A layer: two pure functions, plus what it was built with.

    Attributes:
      init, apply: the contract's functions (``.__wrapped__`` is the function given; ``apply``
        checks params once per trace, :func:`verify_params`).
      kind: family name (``"dense"``); ``serial`` keys an unnamed child ``f"{kind}_{i}"``.
      name: an explicit key (see :func:`named`), or ``None``.
      keywords: extra ``apply`` keywords (``lengths``, ``mask``, ``context``), routed by combinators.
      children: a composite's :class:`Children` (``layer["key"]``, ``layer[i]``), ``None`` for a leaf.
      config: the hyperparameters it was built with, a read-only :class:`Config`.
      methods: pure functions beyond ``init``/``apply`` (a decoder's ``decode_step``), a :class:`Config`.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = jnn.dense(3)
      >>> params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 4), jnp.float32))
      >>> layer.apply(params, state, jnp.ones((2, 4)))[0].shape, layer
      ((2, 3), dense(features=3, use_bias=True, w_init='lecun_normal', b_init='zeros'))
    """

    __slots__ = ()

    def __new__(cls, init, apply, kind="layer", name=None, keywords=frozenset(), children=None,
                config=_EMPTY, methods=_EMPTY):
        raw = getattr(apply, "__wrapped__", apply) if getattr(apply, "_jnn_checked", False) else apply
        cell: list = []

        def checked(params, state, x, **kwargs):
            if _VERIFIED.get():   # a nested apply: explained only when it lacks a key of its params or state
                try:
                    return raw(params, state, x, **kwargs)
                except KeyError as e:
                    if not _OWN_RUN.get() and any(isinstance(t, Mapping) and e.args and e.args[0] not in t
                                                  for t in (params, state)):
                        verify_params(cell[0], params, state, x, **kwargs)
                    raise
            token = _VERIFIED.set(True)
            try:
                verify_params(cell[0], params, state, x, **kwargs)
                return raw(params, state, x, **kwargs)
            finally:
                _VERIFIED.reset(token)

        checked.__wrapped__, checked._jnn_checked = raw, True  # signature(apply) is the layer's own
        self = super().__new__(cls, _remembering(init), checked, kind, name, frozenset(keywords), children,
                               config if isinstance(config, Config) else Config(config),
                               methods if isinstance(methods, Config) else Config(methods))
        cell.append(self)
        return self

    @classmethod
    def _make(cls, iterable):
        return cls(*iterable)

    def _replace(self, **fields):
        return type(self)(**{**self._asdict(), **fields})

    @property
    def label(self) -> str:
        """The name used in error messages: the explicit name, else the kind."""
        return self.name or self.kind

    def __repr__(self) -> str:  # a tree that fits a terminal; _repr_html_: the notebook's
        from jnn import display
        return display.text(self)

    def _repr_html_(self) -> str:
        from jnn import display
        return display.html(self)

    def __getitem__(self, index):
        """``model["dense_0"]`` / ``model[1]``: a composite's child (never a NamedTuple field)."""
        children = self.children or Children()
        if isinstance(index, str) and index in children:
            return children[index]
        if isinstance(index, int) and not isinstance(index, bool) and -len(children) <= index < len(children):
            return list(children.values())[index]
        raise _index_error(self, index)


def _index_error(layer: Layer, index) -> Exception:
    """Why ``layer[index]`` has no answer: no children, no such key, out of range, or a bad index."""
    children = list(layer.children or ())
    if not children and isinstance(index, (int, str)):
        error, message = TypeError, f"a {layer.kind!r} layer has no children to index"
    elif isinstance(index, str):
        error, message = KeyError, f"no child {index!r}; its children are {children}"
    elif isinstance(index, int) and not isinstance(index, bool):
        error, message = IndexError, f"child index {index} out of range for its {len(children)} children {children}"
    else:
        error, message = TypeError, f"index a layer by a child's key (str) or position (int), got {type(index).__name__}"
    return error(f"{layer.label}: {message}" + _FIELDS_HINT)


def _remembering(init):
    if getattr(init, "_jnn_checked", False):
        return init

    def remembering(key, example):
        out = init(key, example)
        _remember(init, example, out)
        return out

    remembering.__wrapped__, remembering._jnn_checked = init, True
    return remembering


_FIELDS_HINT = (" (layer[i] indexes children, never the NamedTuple's fields: use layer.init, "
                "layer.apply, or jnn.get(model, 'a/b') for a nested path)")


def shape_of(example):
    """The ``ShapeDtypeStruct`` of an array, or of each array in a dict or tuple (a pytree input)."""
    if isinstance(example, (dict, tuple)) and not isinstance(example, jax.ShapeDtypeStruct):
        if not jax.tree_util.tree_leaves(example):
            raise TypeError(f"expected arrays in the example input, got an empty {type(example).__name__}")
        return jax.tree_util.tree_map(shape_of, example)
    if isinstance(example, jax.ShapeDtypeStruct):
        return example
    if hasattr(example, "shape") and hasattr(example, "dtype"):
        return jax.ShapeDtypeStruct(example.shape, example.dtype)
    raise TypeError(
        f"expected an array or jax.ShapeDtypeStruct as the example input, got {type(example).__name__}"
    )


def output_shape(layer: Layer, params: PyTree, state: PyTree, example):
    """Shape and dtype of ``layer.apply(params, state, example)``, by ``jax.eval_shape``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, state = jnn.dense(3).init(jax.random.key(0), jnp.zeros((2, 4)))
      >>> out = jnn.output_shape(jnn.dense(3), params, state, jnp.zeros((5, 4)))
      >>> out.shape, out.dtype
      ((5, 3), dtype('float32'))
    """
    y, _ = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x), params, state, shape_of(example))
    return y


def layer_error(label: str, message: str, error: type[Exception] = ValueError) -> Exception:
    """An exception whose message starts with the layer's label: ``"dense: expected ..."``."""
    return error(f"{label}: {message}")


# ---- the framework's one check of params and state -------------------------------------------------

# True inside an apply whose params were verified: nested applies skip the check.
_VERIFIED: contextvars.ContextVar[bool] = contextvars.ContextVar("jnn_verified", default=False)
# Records (path, kind, output, params) while `summary` or `capture` traces a model; inactive otherwise.
_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("jnn_recorder", default=None)
_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("jnn_path", default=())
_OWN_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("jnn_own_run", default=False)  # see _unchecked


@contextlib.contextmanager
def _setting(*pairs, value=None):
    """Sets each ``(context variable, value)`` of ``pairs`` within the block, which gets ``value``."""
    tokens = [(var, var.set(v)) for var, v in pairs]
    try:
        yield value
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _unchecked():
    """Applies inside run unchecked, unexplained and unrecorded (the framework's own abstract runs)."""
    return _setting((_VERIFIED, True), (_RECORDER, None), (_OWN_RUN, True))


# (input signature) -> expected (params, state) shapes, per init function.
_EXPECTED: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def input_signature(x):
    """A hashable key of what params can depend on: the input's structure, per-example shapes, dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(shape_of(x))
    return treedef, tuple((s.shape[1:], s.dtype) for s in leaves)


def _remember(init, example, out) -> None:
    """Records what ``init`` gave for ``example``, for the check of a later apply."""
    try:
        _EXPECTED.setdefault(init, {})[input_signature(example)] = _shapes(out)
    except (TypeError, AttributeError):
        pass


def _expected(layer: Layer, x):
    """The (params, state) shapes init gives for an input like ``x`` (remembered, else by
    ``jax.eval_shape``); ``None`` when init cannot run on this input."""
    init = layer.init.__wrapped__
    try:
        signature, spec = input_signature(x), shape_of(x)
    except TypeError as e:
        if isinstance(x, list) and all(hasattr(v, "shape") for v in x):
            return None   # a list of arrays: a layer of its own (merge) may take one
        raise TypeError(f"{layer.label}: {e}".replace("the example input", "input") + "; use jnp.asarray") from None
    cache = _EXPECTED.setdefault(init, {})
    if signature not in cache:
        cache[signature] = None
        try:
            with _unchecked():
                jax.eval_shape(lambda k, x: _remember(init, x, init(k, x)), jax.random.key(0), spec)
        except Exception:  # noqa: BLE001 - not checkable on this input; apply reports its own errors
            cache[signature] = None
    return cache[signature]


def _shapes(tree):
    if isinstance(tree, Mapping):
        return {k: _shapes(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(map(_shapes, tree)) if type(tree) in (tuple, list) else tree
    return jax.ShapeDtypeStruct(tree.shape, tree.dtype) if hasattr(tree, "shape") else tree


def _names(keys) -> str:
    return ", ".join(sorted(map(str, keys))) or "nothing"


def _at(layer: Layer, path: tuple[str, ...]) -> tuple[Layer, tuple[str, ...]]:
    """The deepest sub-layer along ``path`` and the child keys leading to it."""
    walked = []
    for key in path:
        if not layer.children or key not in layer.children:
            break
        layer = layer.children[key]
        walked.append(key)
    return layer, tuple(walked)


def _built_with(layer: Layer) -> str:
    """The config entries that can size a param: integers and tuples of them."""
    sizes = lambda v: isinstance(v, int) and not isinstance(v, bool)
    items = [f"{k}={v!r}" for k, v in layer.config.items()
             if sizes(v) or (isinstance(v, tuple) and v and all(map(sizes, v)))]
    return ", ".join(items) or "its config"


def _difference(model: Layer, what: str, got, want, path: tuple[str, ...] = ()):
    """The first ``(path, message)`` where ``got`` differs from ``want`` in keys or shapes, or ``None``."""
    if isinstance(want, dict):
        missing = [k for k in want if k not in got] if isinstance(got, Mapping) else []
        extra = [k for k in got if k not in want] if isinstance(got, Mapping) else []
        init = f"pass the {what} that {_at(model, path)[0].label}'s init returned"
        if not isinstance(got, Mapping):
            return path, f"{what} must be a dict with keys {_names(want)}, got {type(got).__name__}; {init}"
        if missing or extra:
            lack = f"lack {missing[0]!r}" if missing else f"have unexpected {extra[0]!r}"
            hint = ("were these made by this layer's init?" if path or not model.children
                    else f"this model's children are {', '.join(model.children)}")
            hint = _related(what, got, want) or (hint if got else init)
            return path, f"{what} {lack} (have: {_names(got)}); {hint}"
        found = (_difference(model, what, got[k], want[k], path + (k,)) for k in want)
        return next((d for d in found if d is not None), None)
    shape = getattr(got, "shape", None)
    if hasattr(want, "shape") and (shape is None or tuple(shape) != tuple(want.shape)):
        layer, walked = _at(model, path)
        got_shape = tuple(shape) if shape is not None else type(got).__name__
        return path, (f"{'/'.join(path[len(walked):]) or what} has shape {got_shape} but this layer was "
                      f"built with {_built_with(layer)} (expected shape {tuple(want.shape)})")
    return None


def _related(what: str, got, want) -> str:
    """A hint when ``got`` holds ``want`` (a parent's params given to its child) or the reverse, else ``""``."""
    inner = [k for k, v in got.items() if isinstance(v, Mapping) and set(v) == set(want)]
    outer = [k for k, v in want.items() if isinstance(v, Mapping) and set(v) == set(got) and got]
    return (inner and f"these look like a parent's {what}, holding this layer's under {inner[0]!r}: pass "
                      f"{what}[{inner[0]!r}], or apply the parent (inside a composite: jnn.apply_child)"
            or outer and f"these look like the {what} of its child {outer[0]!r}: pass the whole model's {what} "
                         f"(jnn.apply_child({outer[0]!r}, child, {what}, ...) looks the child's up itself)" or "")


def _mismatch(model: Layer, params, state, expected) -> ValueError | None:
    """A ``ValueError`` naming the sub-layer whose params or state differ from ``expected``."""
    found = (_difference(model, "params", params, expected[0])
             or _difference(model, "state", state, expected[1]))
    if found is None:
        return None
    layer, walked = _at(model, found[0])
    return ValueError(("[" + "/".join(walked) + "] " if walked else "") + f"{layer.label}: {found[1]}")


# A layer's own message: an optional "[path] " then "label: "; raw Python or XLA errors ("'NoneType'
# object is not subscriptable", "Incompatible shapes for broadcasting: ...") do not match.
_OWN_MESSAGE = re.compile(r"(\[[^\]]*\] )?[^\s:\[]+: ")


def verify_params(layer: Layer, params, state, x, **keywords) -> None:
    """Checks that ``params`` and ``state`` have the keys and shapes ``layer.init`` gives for an
    input like ``x``, naming the sub-layer at fault (keys and shapes only: free under ``jit``).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> params, state = jnn.dense(3).init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> jnn.core.verify_params(jnn.dense(5), params, state, jnp.zeros((1, 4)))
      Traceback (most recent call last):
      ValueError: dense: w has shape (4, 3) but this layer was built with features=5 (expected shape (4, 5))
    """
    expected = _expected(layer, x)
    if expected is None:
        return
    mismatch = _mismatch(layer, params, state, expected)
    if mismatch is None:
        return
    # A wrong input makes right params look wrong: prefer the layer's own message about its input.
    try:
        with _unchecked():
            if isinstance(params, Mapping) and isinstance(state, Mapping):   # else nothing to blame on x
                jax.eval_shape(lambda p, s, x: layer.apply.__wrapped__(p, s, x, **keywords), params, state, x)
    except Exception as own:  # noqa: BLE001 - a layer's own message ("[path] label: ...") wins
        if isinstance(own, (ValueError, TypeError)) and _OWN_MESSAGE.match(str(own)) \
                and "apply_child(" not in str(own):   # not a complaint about the params themselves
            mismatch = own
    raise mismatch from None


# ---- writing composites --------------------------------------------------------------------------

def ensure_layer(where: str, layer) -> Layer:
    """``layer`` if it is a :class:`Layer`, else a ``TypeError`` naming ``where``."""
    if not isinstance(layer, Layer):
        hint = " (did you forget to call it, e.g. jnn.relu() rather than jnn.relu?)" if callable(layer) else ""
        raise TypeError(f"{where}: expected a jnn.Layer, got {type(layer).__name__}{hint}")
    return layer


def check_signature(where: str, layer: Layer) -> None:
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


def make_children(where: str, layers: Sequence[Layer]) -> Children:
    """A composite's :class:`Children`, keyed by explicit names, else ``kind_i`` counted per kind.

    Example:
      >>> import jnn
      >>> list(jnn.core.make_children("mine", [jnn.dense(2), jnn.relu(), jnn.dense(1)]))
      ['dense_0', 'relu_0', 'dense_1']
    """
    counts: dict[str, int] = {}
    keys = []
    for layer in layers:
        check_signature(where, ensure_layer(where, layer))
        if layer.name is None:
            counts[layer.kind] = counts.get(layer.kind, -1) + 1
        keys.append(layer.name if layer.name is not None else f"{layer.kind}_{counts[layer.kind]}")
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"{where}: child names must be unique, got {duplicates} more than once")
    return Children(zip(keys, layers))


def check_keywords(label: str, accepted: frozenset[str], given: Mapping[str, Any]) -> None:
    """Refuses ``apply`` keywords that no child declares (see :attr:`Layer.keywords`)."""
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise TypeError(f"{label}: unexpected keyword argument {', '.join(map(repr, unknown))}: this model's "
                        f"apply accepts key, train and {sorted(accepted) or 'no extra keywords'} "
                        f"(a keyword reaches the layers that declare it in Layer.keywords)")


def _describe(out) -> str:
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}"
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"a single array of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def _pair(where: str, layer: Layer, fn: str, out, names: str):
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where}: layer {layer.label!r} breaks the layer contract: its {fn} returned "
                        f"{_describe(out)}, expected a pair ({names}). Every layer has {CONTRACT}.")
    return out


def checked_init(where: str, layer: Layer, key, example):
    """``layer.init(key, example)``, with a clear message when the result is not a pair."""
    return _pair(where, layer, "init", layer.init(key, example), "params, state")


_INFERRING_SHAPE: contextvars.ContextVar[bool] = contextvars.ContextVar("jnn_inferring_shape", default=False)


def inferring_shape() -> bool:
    """True while a combinator's ``init`` learns a child's output shape (``context=`` layers use a placeholder)."""
    return _INFERRING_SHAPE.get()


def inferring():
    """Within the block :func:`inferring_shape` is true, and applies are neither checked nor recorded."""
    return _setting((_INFERRING_SHAPE, True), (_VERIFIED, True), (_RECORDER, None))


def checked_apply(where: str, layer: Layer, params, state, x):
    """``layer.apply(params, state, x)`` without keywords, checked to return ``(y, new_state)``."""
    return _pair(where, layer, "apply", layer.apply(params, state, x), "y, new_state")


def checked_output_shape(where: str, layer: Layer, params, state, example):
    """The output ``ShapeDtypeStruct`` (pytree) of ``layer``, checking that apply returns a pair."""
    with inferring():
        return jax.eval_shape(lambda p, s, x: checked_apply(where, layer, p, s, x), params, state,
                              shape_of(example))[0]


def child_of(where: str, children: Mapping[str, Layer], key: str) -> Layer:
    """``children[key]``, or a ``KeyError`` that lists the children."""
    if key not in children:
        raise KeyError(f"{where}: no child {key!r}; its children are {list(children)}")
    return children[key]


def split_key(key, n: int) -> list:
    """``n`` keys split from ``key``, or ``n`` times ``None`` when ``key`` is ``None``."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def recording():
    """Within the block, each :func:`apply_child` appends ``(path, kind, output, params)`` to the yielded list."""
    records: list = []
    return _setting((_RECORDER, records), (_PATH, ()), value=records)


@contextlib.contextmanager
def child_scope(name: str):
    """Runs the block as child ``name``: errors inside gain the prefix ``[name/...]``, records the path."""
    token = _PATH.set(_PATH.get() + (name,))
    try:
        with jax.named_scope(name):   # the name in jaxprs, HLO and profiles (and export errors)
            yield
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        msg = str(e)
        msg = f"[{name}/{msg[1:]}" if msg.startswith("[") else f"[{name}] {msg}"
        raise type(e)(msg) from e
    finally:
        _PATH.reset(token)


def record(kind: str, y, params) -> None:
    """Records a child's output for :func:`recording` (nothing when no recording is active)."""
    records = _RECORDER.get()
    if records is not None:
        records.append(("/".join(_PATH.get()), kind, y, params))


def _lookup_error(name: str, layer: Layer, params, error: ValueError) -> ValueError:
    """``error``, or a clearer one when ``params`` lack ``name`` (a child's own params given to :func:`apply_child`)."""
    own = isinstance(params, Mapping) and params and name not in params and "params lack" in str(error)
    return ValueError(f"{layer.label}: apply_child({name!r}, ...) found no {name!r} in the params given (have: "
                      f"{_names(params)}): pass the composite's params, not the child's own") if own else error


def apply_child(name: str, layer: Layer, params: PyTree, state: PyTree, x, *, key=None,
                train: bool = False, **keywords):
    """Applies a composite's child ``layer`` under the key ``name``: the way to call a child.

    Takes the *composite's* ``params``/``state`` (looks up ``[name]``), passes only the keywords
    the child declares, prefixes errors with ``[name]`` and records the output for
    :func:`jnn.summary` and :func:`jnn.capture`; trace-time Python only. Returns ``(y, child_state)``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> inner = jnn.dense(2)
      >>> init = lambda key, x: ({"proj": inner.init(key, x)[0]}, {})
      >>> apply = lambda p, s, x, *, key=None, train=False: (jnp.tanh(jnn.apply_child("proj", inner, p, s, x)[0]), s)
      >>> block = jnn.Layer(init, apply, "block", children=jnn.Children([("proj", inner)]))
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> block.apply(params, state, jnp.ones((1, 3)))[0].shape
      (1, 2)
    """
    routed = {k: v for k, v in keywords.items() if k in layer.keywords}
    child_params = params.get(name, {}) if isinstance(params, Mapping) else params
    child_state = state.get(name, {}) if isinstance(state, Mapping) else state
    with child_scope(name):
        try:
            y, new_state = layer.apply(child_params, child_state, x, key=key, train=train, **routed)
        except ValueError as e:
            raise _lookup_error(name, layer, params, e) from e.__cause__
        record(layer.kind, y, child_params)
    return y, new_state
