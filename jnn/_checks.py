"""Shared argument and parameter checks: one message style for every layer and function.

A factory or function declares its arguments' rules once, with :func:`declare`::

    @checks.declare(features=checks.positive_int, use_bias=checks.flag)
    def dense(features, *, use_bias=True, ...): ...

The rules (``positive_int``, ``flag``, ``rate``, ``above(0)``, ``between(0, 1)``, ``spatial(2)``,
...) run when a layer is built, and a factory's arguments become its ``Layer.config``. Parameter checks (``param``, ``child_params``) run in
``apply`` but look only at static facts (dict keys, shapes, dtypes), so under ``jax.jit`` they
run once at trace time and add nothing to the compiled program.

Every message starts with the layer or function label and names the argument, what was
expected and what was received::

    dense: features must be a positive integer, got 0
"""
from __future__ import annotations

import functools
import inspect
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "declare", "layer_name", "flag", "optional", "above", "between", "spatial", "one_of", "instance_of", "positive_int", "boolean", "rate", "finite_number", "number_above", "number_in", "per_axis",
    "param", "child_params", "float_input", "ids_in_range", "is_concrete", "values_in_unit_interval",
    "integer_labels", "float_labels_hint",
]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def declare(**rules):
    """Declares the rules of a factory's or function's arguments, checked on every call.

    Each rule is ``rule(label, what, value) -> value`` (it may normalize the value, e.g. an int
    to a per-axis tuple) and raises ``ValueError("label: what must be ..., got ...")``. The label
    is the call's ``name`` argument when given, else the function's name. When the function
    returns a :class:`jnn.Layer`, its bound arguments (defaults applied, ``name`` left out)
    become the layer's ``config``.

    Example:
      >>> from jnn import _checks as checks
      >>> @checks.declare(units=checks.positive_int)
      ... def widen(units, *, name=None):
      ...     return units * 2
      >>> widen(0)
      Traceback (most recent call last):
      ValueError: widen: units must be a positive integer, got 0
    """
    def wrap(fn):
        signature = inspect.signature(fn)
        unknown = set(rules) - set(signature.parameters)
        assert not unknown, f"{fn.__name__}: rules for unknown arguments {unknown}"

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            if "name" in arguments:
                arguments["name"] = layer_name(fn.__name__, "name", arguments["name"])
            label = arguments.get("name") or fn.__name__
            for what, rule in rules.items():
                arguments[what] = rule(label, what, arguments[what])
            out = fn(*bound.args, **bound.kwargs)
            if hasattr(out, "config") and hasattr(out, "_replace") and not out.config:
                config = {k: v for k, v in arguments.items() if k != "name"}
                out = out._replace(config=type(out.config)(config))
            return out

        return checked

    return wrap


def layer_name(label: str, what: str, value):
    """``None`` or a non-empty string without ``/`` (a key in params paths)."""
    if value is not None and not (isinstance(value, str) and value and "/" not in value):
        raise ValueError(f"{label}: {what} must be None or a non-empty string without '/', got {value!r}")
    return value


def flag(label: str, what: str, value) -> bool:
    """Exactly ``True`` or ``False`` (not 0/1, not ``None``)."""
    if not isinstance(value, bool):
        raise ValueError(f"{label}: {what} must be True or False, got {value!r}")
    return value


def optional(rule):
    """``rule``, or ``None``."""
    return lambda label, what, value: value if value is None else rule(label, what, value)


def above(bound: float):
    """A real number strictly greater than ``bound`` (returned as a float)."""
    return lambda label, what, value: number_above(label, what, value, bound)


def between(low: float, high: float):
    """A real number in the closed interval ``[low, high]`` (returned as a float)."""
    return lambda label, what, value: number_in(label, what, value, low, high)


def spatial(rank: int):
    """An int broadcast to ``rank`` spatial axes, or a tuple of ``rank`` positive ints."""
    return lambda label, what, value: per_axis(label, what, value, rank)


def one_of(*choices):
    """One of ``choices`` (compared with ``==``)."""
    def rule(label, what, value):
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ValueError(f"{label}: {what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    return rule


def instance_of(*types, described: str | None = None):
    """An instance of one of ``types`` (bools are never ints here)."""
    def rule(label, what, value):
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            need = described or " or ".join(t.__name__ for t in types)
            raise TypeError(f"{label}: {what} must be {need}, got {type(value).__name__}")
        return value
    return rule


def positive_int(label: str, what: str, value, *, optional: bool = False):
    """``value`` if it is a Python int > 0 (or ``None`` when ``optional``), else ``ValueError``."""
    if optional and value is None:
        return value
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{label}: {what} must be a positive integer, got {value!r}")
    return value


def boolean(label: str, **flags) -> None:
    """Each keyword must be exactly ``True`` or ``False`` (not 0/1, not ``None``)."""
    for what, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{label}: {what} must be True or False, got {value!r}")


def finite_number(label: str, what: str, value) -> float:
    """``float(value)`` if it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{label}: {what} must be a finite number, got {value!r}")
    return float(value)


def number_above(label: str, what: str, value, bound: float) -> float:
    """``float(value)`` if it is a real number strictly greater than ``bound``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > bound:
        need = "a positive number" if bound == 0 else f"a number > {bound:g}"
        raise ValueError(f"{label}: {what} must be {need}, got {value!r}")
    return float(value)


def number_in(label: str, what: str, value, low: float, high: float) -> float:
    """``float(value)`` if it is a real number in the closed interval ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise ValueError(f"{label}: {what} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def rate(label: str, what: str, value):
    """A probability in [0, 1): a Python float, or a scalar array (a traced one is not checked)."""
    if isinstance(value, bool):
        raise ValueError(f"{label}: {what} must be a number in [0, 1), got {value!r}")
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, jax.core.Tracer):
        # A traced rate (e.g. built inside jax.vmap over rates) cannot be checked here.
        if np.shape(value) != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(f"{label}: a traced {what} must be a float scalar, got "
                             f"{value.dtype}{list(np.shape(value))}")
        return value
    elif hasattr(value, "shape") and hasattr(value, "dtype") and np.shape(value) == ():
        number = float(value)
    else:
        raise ValueError(f"{label}: {what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{label}: {what} is the probability of dropping a unit and must be in "
                         f"[0, 1), got {number!r}")
    return number


def per_axis(label: str, what: str, value, rank: int) -> tuple[int, ...]:
    """An int broadcast to every spatial axis, or a tuple of ``rank`` positive ints."""
    values = (value,) * rank if _is_int(value) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != rank or not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(f"{label}: {what} must be a positive integer or a tuple of {rank} positive "
                         f"integers (one per spatial axis), got {value!r}")
    return values


def _names(keys) -> str:
    return ", ".join(sorted(map(str, keys))) or "nothing"


def param(label: str, params, name: str, shape=None, built_with: str = ""):
    """``params[name]``, after checking the key exists and (if given) its static shape.

    Raises ``ValueError`` "dense: params lack 'w' (have: kernel)" or "dense: w has shape
    (64, 3) but this layer was built with features=5" instead of a bare ``KeyError`` or a
    wrong output shape. Free under ``jit``: keys and shapes are static.
    """
    if not isinstance(params, dict) or name not in params:
        have = _names(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{label}: params lack {name!r} (have: {have}); were these params "
                         f"made by this layer's init?")
    value = params[name]
    if shape is not None:
        got = tuple(np.shape(value))
        if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
            want = tuple("?" if e is None else e for e in shape)
            raise ValueError(f"{label}: {name} has shape {got} but this layer was built with "
                             f"{built_with} (expected shape {want})")
    return value


def child_params(where: str, params, children) -> None:
    """Params of a combinator must be keyed by its children's names.

    A key that is no child's name means the params come from another model; the message
    names the first child with nothing under its name: "params lack 'dense_0' (have:
    encoder, head)". Children without params are left out of the dict, so a missing key
    alone is not an error here (the child's own check reports it).
    """
    if not isinstance(params, dict):
        raise TypeError(f"{where}: params must be a dict keyed by child name, got "
                        f"{type(params).__name__}")
    unknown = [k for k in params if k not in children]
    if unknown:
        missing = [k for k in children if k not in params]
        lack = f"params lack {missing[0]!r}" if missing else f"params have unexpected {unknown[0]!r}"
        raise ValueError(f"{where}: {lack} (have: {_names(params)}; this model's children are "
                         f"{', '.join(children)})")


def float_input(x, dtype):
    """The dtype rule: integer and bool inputs are promoted to the param dtype ``dtype``.

    Float inputs are kept as they are (the product runs in the input's float dtype, e.g.
    bfloat16 for mixed precision); weights are never cast to an integer dtype.
    """
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return x.astype(dtype)


def is_concrete(x) -> bool:
    """True for a value that can be read now (not a tracer under ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def ids_in_range(label: str, ids, size: int, what: str = "token ids",
                 hint: str = "; check the vocabulary size or the tokenizer") -> None:
    """Eager check that integer ``ids`` lie in ``[0, size)``; skipped (unchecked) under ``jit``."""
    if not is_concrete(ids) or np.size(ids) == 0:
        return
    values = np.asarray(ids)  # NumPy: stays concrete even while an enclosing function is traced
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{label}: {what} must lie in [0, {size}), got {bad}{hint}")


def values_in_unit_interval(label: str, what: str, values, hint: str = "") -> None:
    """Eager check that concrete ``values`` lie in [0, 1]; skipped (unchecked) under ``jit``."""
    if not is_concrete(values) or np.size(values) == 0:
        return
    values = np.asarray(values)
    low, high = float(values.min()), float(values.max())
    if not (0.0 <= low and high <= 1.0):  # NaN fails too
        bad = low if not 0.0 <= low else high
        raise ValueError(f"{label}: {what} must lie in [0, 1], got {bad:g}{hint}")


def float_labels_hint(label: str, logits, labels) -> None:
    """Float labels shaped like class ids (``logits.shape[:-1]``) are class ids stored as floats:
    say so, rather than complain that they are not one-hot."""
    if not jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1] \
            and labels.shape != logits.shape:
        raise ValueError(f"{label}: labels of shape {tuple(labels.shape)} are class ids, which must be integers; "
                         f"got {labels.dtype} (use labels.astype(int)), or pass one-hot labels of shape "
                         f"{tuple(logits.shape)}")


def integer_labels(label: str, logits, labels) -> None:
    """Integer class ids: shape ``logits.shape[:-1]`` and (eagerly) values in ``[0, C)``."""
    num_classes = logits.shape[-1]
    if labels.shape == logits.shape:
        raise ValueError(f"{label}: integer labels of shape {tuple(labels.shape)} look one-hot; pass "
                         f"class ids of shape {tuple(logits.shape[:-1])} (labels.argmax(-1)) or float "
                         f"one-hot labels (labels.astype(float))")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"{label}: integer labels must have shape {tuple(logits.shape[:-1])} for "
                         f"logits of shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    ids_in_range(label, labels, num_classes, what=f"integer labels (class ids for {num_classes} classes)",
                 hint="; check the labels or the model's number of outputs")


# ---- rules added for train ----

def index_below(label: str, what: str, value, size: int, size_name: str) -> int:
    """``value`` if it is a Python int in ``[0, size)``; ``size_name`` names the bound in the message."""
    if not _is_int(value) or not 0 <= value < size:
        raise ValueError(f"{label}: {what} must be an integer in [0, {size_name}={size}), got {value!r}")
    return value


def positive_int_or(*choices):
    """A positive Python int, or one of ``choices`` (e.g. ``None``, ``"auto"``)."""
    def rule(label, what, value):
        if not any(value is c or (isinstance(c, str) and value == c) for c in choices) \
                and not (_is_int(value) and value > 0):
            items = ["a positive integer", *map(repr, choices)]
            raise ValueError(f"{label}: {what} must be {', '.join(items[:-1])} or {items[-1]}, got {value!r}")
        return value
    return rule


def satisfies(test, need: str, error=ValueError):
    """A value ``test`` accepts; else ``error("label: what must be <need>, got <value>")``."""
    def rule(label, what, value):
        if not test(value):
            raise error(f"{label}: {what} must be {need}, got {value!r}")
        return value
    return rule


def int_at_least(low: int):
    """A Python int ``>= low`` (not a bool)."""
    return satisfies(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def fields(label: str, obj, **rules) -> None:
    """Applies each rule to the attribute of ``obj`` of that name (a dataclass's fields)."""
    for what, rule in rules.items():
        rule(label, what, getattr(obj, what))


def int_in(low: int, high: int, shown: str):
    """A Python int in ``[low, high)``; ``shown`` is the interval as the message writes it."""
    return satisfies(lambda v: _is_int(v) and low <= v < high, f"an integer in {shown}")


def is_real(value) -> bool:
    """A real number (int, float, NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def integral(label: str, what: str, value) -> int:
    """An integer (Python or NumPy, or an integer scalar array) as a Python int; not a bool."""
    ok = isinstance(value, (int, np.integer)) or (
        hasattr(value, "dtype") and np.ndim(value) == 0 and np.issubdtype(value.dtype, np.integer))
    if not ok or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{label}: {what} must be a non-negative integer, got {value!r}")
    return int(value)
