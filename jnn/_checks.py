"""Shared argument checks, one message style: a rule is ``rule(label, what, value) -> value``
raising ``ValueError("label: what must be ..., got ...")``, declared with :func:`declare`."""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jnn import core

__all__ = [
    "declare", "layer_name", "flag", "optional", "above", "between", "spatial", "one_of",
    "name_or_callable", "instance_of", "positive_int", "finite_number", "number_above",
    "rate", "per_axis", "float_input", "ids_in_range",
    "values_in_unit_interval", "float_labels_hint", "integer_labels", "is_integer", "integer",
    "static_rate", "divides", "none_or_positive_int", "finite_at_least", "positive_int_or",
    "stages", "jnn_layer", "key_for", "int_lengths", "fraction", "int_in", "an_int", "axes",
    "new_shape", "float_dtype", "window", "padding", "layer_input", "last_axis", "window_input",
    "divisible", "batch_axes", "sequence_input", "index_below", "satisfies", "int_at_least",
    "fields", "int_range", "is_real", "integral", "require", "width", "float_array",
    "float_sequence", "copies", "leading_axis", "kind", "records", "each", "all_of",
    "bounds_space", "member_arrays", "declare_as", "within_space", "examples", "key_batch",
    "logged_metric", "at_most_one", "writable_directory", "new_file", "like_tree", "loss_result",
    "split_fraction", "callbacks", "like_first_batch", "hashable", "num_batches", "among",
    "indices_below",
    "micro_batches",   # w-loop
]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def declare(**rules):
    """Declares the rules of a function's arguments, checked on every call, labelled by the call's
    ``name`` (else the function's name). A returned :class:`jnn.Layer` gets the bound arguments
    (``name`` and child layers left out) as its ``config``.

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
                config = {k: v for k, v in arguments.items() if k != "name" and not _children(signature, k, v)}
                out = out._replace(config=type(out.config)(config))
            return out

        return checked

    return wrap


def layer_name(label: str, what: str, value):
    """``None`` or a non-empty string without ``/`` (a key in params paths).

    Example:
      >>> import jnn
      >>> jnn.checks.layer_name("dense", "name", "head")
      'head'
    """
    return satisfies(lambda v: v is None or isinstance(v, str) and v and "/" not in v,
                     "None or a non-empty string without '/'")(label, what, value)


def _children(signature, name: str, value) -> bool:
    """``*layers`` of a composite: its children, not part of its config."""
    return (signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL and bool(value)
            and all(isinstance(v, core.Layer) for v in value))


def flag(label: str, what: str, value) -> bool:
    """Exactly ``True`` or ``False`` (not 0/1, not ``None``).

    Example:
      >>> import jnn
      >>> jnn.checks.flag("dense", "use_bias", True)
      True
    """
    return satisfies(lambda v: isinstance(v, bool), "True or False")(label, what, value)


def optional(rule):
    """``rule``, or ``None``.

    Example:
      >>> import jnn
      >>> jnn.checks.optional(jnn.checks.positive_int)("f", "top_k", None) is None
      True
    """
    return lambda label, what, value: value if value is None else rule(label, what, value)


def above(bound: float):
    """A real number strictly greater than ``bound`` (returned as a float).

    Example:
      >>> import jnn
      >>> jnn.checks.above(0)("layer_norm", "epsilon", 1e-6)
      1e-06
    """
    return lambda label, what, value: number_above(label, what, value, bound)


def between(low: float, high: float):
    """A real number in the closed interval ``[low, high]`` (returned as a float).

    Example:
      >>> import jnn
      >>> jnn.checks.between(0, 1)("batch_norm", "momentum", 0.9)
      0.9
    """
    rule = satisfies(lambda v: is_real(v) and low <= v <= high, f"a number in [{low:g}, {high:g}]")
    return lambda label, what, value: float(rule(label, what, value))


def spatial(rank: int):
    """An int broadcast to ``rank`` spatial axes, or a tuple of ``rank`` positive ints.

    Example:
      >>> import jnn
      >>> jnn.checks.spatial(2)("conv", "strides", 2)
      (2, 2)
    """
    return lambda label, what, value: per_axis(label, what, value, rank)


def one_of(*choices):
    """One of ``choices`` (compared with ``==``).

    Example:
      >>> import jnn
      >>> jnn.checks.one_of("SAME", "VALID")("conv", "padding", "SAME")
      'SAME'
    """
    return satisfies(lambda v: any(v == c and type(v) is type(c) for c in choices),
                     f"one of {', '.join(map(repr, choices))}")


def name_or_callable(choices):
    """One of the names in ``choices``, or a callable (e.g. a merge: ``"add"`` or a function).

    Example:
      >>> import jnn
      >>> jnn.checks.name_or_callable(["add", "concat"])("fan_out", "merge", "add")
      'add'
    """
    def rule(label, what, value):
        if isinstance(value, str) and value not in choices:
            raise ValueError(f"{label}: {what} must be one of {sorted(choices)} or a callable, got {value!r}")
        if not isinstance(value, str) and not callable(value):
            raise TypeError(f"{label}: {what} must be a string or a callable, got {type(value).__name__}")
        return value
    return rule


def instance_of(*types, described: str | None = None):
    """An instance of one of ``types`` (bools are never ints here).

    Example:
      >>> import jnn
      >>> jnn.checks.instance_of(str)("f", "path", "a.csv")
      'a.csv'
    """
    return kind(lambda v: isinstance(v, types) and (bool in types or not isinstance(v, bool)),
                described or " or ".join(t.__name__ for t in types))


def positive_int(label: str, what: str, value, *, optional: bool = False):
    """``value`` if it is a Python int > 0 (or ``None`` when ``optional``), else ``ValueError``.

    Example:
      >>> import jnn
      >>> jnn.checks.positive_int("dense", "features", 3)
      3
    """
    if not (optional and value is None) and (not _is_int(value) or value <= 0):
        raise ValueError(f"{label}: {what} must be a positive integer, got {value!r}")
    return value


def finite_number(label: str, what: str, value) -> float:
    """``float(value)`` if it is a finite real number (not a bool).

    Example:
      >>> import jnn
      >>> jnn.checks.finite_number("f", "clip", 2)
      2.0
    """
    return float(satisfies(lambda v: is_real(v) and np.isfinite(v), "a finite number")(label, what, value))


def number_above(label: str, what: str, value, bound: float) -> float:
    """``float(value)`` if it is a real number strictly greater than ``bound``."""
    need = "a positive number" if bound == 0 else f"a number > {bound:g}"
    return float(satisfies(lambda v: is_real(v) and v > bound, need)(label, what, value))


def rate(label: str, what: str, value):
    """A probability in [0, 1): a Python float, or a scalar array (a traced one is not checked).

    Example:
      >>> import jnn
      >>> jnn.checks.rate("dropout", "rate", 0.5)
      0.5
    """
    if isinstance(value, jax.core.Tracer):   # e.g. under jax.vmap over rates: unchecked
        if np.shape(value) != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(f"{label}: a traced {what} must be a float scalar, got "
                             f"{value.dtype}{list(np.shape(value))}")
        return value
    if not (is_real(value) or hasattr(value, "shape") and hasattr(value, "dtype") and np.shape(value) == ()):
        raise ValueError(f"{label}: {what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{label}: {what} is the probability of dropping a unit and must be in "
                         f"[0, 1), got {float(value)!r}")
    return float(value)


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


def float_input(x, dtype):
    """Integer and bool inputs promoted to the param dtype ``dtype``; float inputs kept as they are."""
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(dtype)


def ids_in_range(label: str, ids, size: int, what: str = "token ids",
                 hint: str = "; check the vocabulary size or the tokenizer") -> None:
    """Eager check that integer ``ids`` lie in ``[0, size)``; skipped (unchecked) under ``jit``."""
    if isinstance(ids, jax.core.Tracer) or np.size(ids) == 0:
        return
    values = np.asarray(ids)  # NumPy: stays concrete even while an enclosing function is traced
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= size:
        raise ValueError(f"{label}: {what} must lie in [0, {size}), got {low if low < 0 else high}{hint}")


def values_in_unit_interval(label: str, what: str, values, hint: str = "") -> None:
    """Eager check that concrete ``values`` lie in [0, 1]; skipped (unchecked) under ``jit``."""
    if isinstance(values, jax.core.Tracer) or np.size(values) == 0:
        return
    values = np.asarray(values)
    low, high = float(values.min()), float(values.max())
    if not (0.0 <= low and high <= 1.0):  # NaN fails too
        raise ValueError(f"{label}: {what} must lie in [0, 1], got {low if not 0.0 <= low else high:g}{hint}")


def float_labels_hint(label: str, logits, labels) -> None:
    """Float labels shaped like class ids (``logits.shape[:-1]``): say they must be integers."""
    if not jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1]:
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


# ---- rules added for data/io ----

def is_integer(value) -> bool:
    """A Python or NumPy integer, never a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(low: int = 0, high: int | None = None, *, or_none: bool = False, described: str | None = None):
    """A Python or NumPy int (not a bool) in ``[low, high]`` (or ``None`` when ``or_none``)."""
    def rule(label, what, value):
        if or_none and value is None:
            return value
        if not is_integer(value) or value < low or (high is not None and value > high):
            need = described or ("a positive integer" if low == 1 and high is None else
                                 f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")
            raise ValueError(f"{label}: {what} must be {need}{' or None' if or_none else ''}, got {value!r}")
        return value
    return rule


# ---- rules added for layers B (attention, transformer, nets, generate) ----

def static_rate(label: str, what: str, value) -> float:
    """A probability in [0, 1) known when the layer is built: a Python number, not a traced array."""
    number = rate(label, what, value)
    if not isinstance(number, float):
        raise ValueError(f"{label}: {what} must be a Python number in [0, 1), got {value!r}")
    return number


def divides(label: str, what: str, value: int, multiple: int, of: str) -> None:
    """``value`` (argument ``what``) must divide ``multiple`` (argument ``of``)."""
    divisible(label, of, multiple, what, value)


def none_or_positive_int(label: str, what: str, value):
    """``None`` or a Python int > 0 (the message says both are allowed)."""
    return satisfies(lambda v: v is None or _is_int(v) and v > 0, "None or a positive integer")(label, what, value)


def finite_at_least(bound: float, note: str = ""):
    """A finite real number >= ``bound`` (returned as given); ``note`` follows the bound in the message."""
    return satisfies(lambda v: is_real(v) and bound <= v < np.inf, f"a finite number >= {bound:g}{note}")


def positive_int_or(*choices, described: str | None = None):
    """A Python int > 0, or one of ``choices`` (strings by value, others by identity)."""
    def rule(label, what, value):
        if not any(value is c or (isinstance(c, str) and value == c) for c in choices) \
                and not (_is_int(value) and value > 0):
            items = ["a positive integer", *map(repr, choices)]
            need = f"a positive integer or {described}" if described else f"{', '.join(items[:-1])} or {items[-1]}"
            raise ValueError(f"{label}: {what} must be {need}, got {value!r}")
        return value
    return rule


def stages(label: str, what: str, value) -> tuple[int, ...]:
    """A non-empty sequence of positive ints (per-stage widths), returned as a tuple."""
    return tuple(satisfies(lambda v: isinstance(v, (list, tuple)) and v and all(_is_int(i) and i > 0 for i in v),
                           "a non-empty sequence of positive integers")(label, what, value))


def jnn_layer(label: str, what: str, value):
    """A :class:`jnn.Layer` (``TypeError`` naming the likely slip: a factory passed uncalled)."""
    return core.ensure_layer(label, value)


def key_for(label: str, needed: bool, key, what: str = "dropout") -> None:
    """A layer that draws randomness in training (``needed``) must be given a PRNG key."""
    require(not needed or key is not None, label,
            f"train=True with {what} needs a PRNG key: call apply(..., key=jax.random.key(0), train=True)")


def int_lengths(label: str, lengths, batch: int, what: str = "lengths", note: str = ""):
    """``lengths`` as an int32 array of shape ``[batch]`` (valid positions per example), or ``None``."""
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"{label}: expected {what} as integers of shape [{batch}]{note}, got "
                         f"{lengths.dtype}{list(lengths.shape)}")
    return lengths.astype(jnp.int32)


# ---- rules added for layers (basic, activations, conv, pooling, norm, dropout, embedding, positional) ----

def fraction(label: str, what: str, value) -> float:
    """A real number in ``[0, 1)`` (returned as a float), e.g. a label-smoothing amount."""
    return float(satisfies(lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)")(label, what, value))


def int_in(label: str, what: str, value, low: int, high: int) -> int:
    """A Python int (not a bool) in the closed interval ``[low, high]``."""
    return satisfies(lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]")(label, what, value)


def an_int(label: str, what: str, value) -> int:
    """A Python int (not a bool), e.g. an axis."""
    return satisfies(_is_int, "an integer")(label, what, value)


def axes(label: str, what: str, value) -> tuple[int, ...] | None:
    """``None``, an int or a non-empty tuple (or list) of ints, returned as a tuple of ints."""
    values = (value,) if _is_int(value) else value
    if value is not None and not (isinstance(values, (tuple, list)) and values and all(map(_is_int, values))):
        raise ValueError(f"{label}: {what} must be None, an int or a non-empty tuple of ints, got {value!r}")
    return value if value is None else tuple(values)


def new_shape(label: str, what: str, value) -> tuple[int, ...]:
    """A target shape: positive ints and at most one ``-1`` (the size left over)."""
    shape = tuple(value)
    if not all(_is_int(d) and (d > 0 or d == -1) for d in shape) or shape.count(-1) > 1:
        raise ValueError(f"{label}: {what} must hold positive integers and at most one -1, got {shape}")
    return shape


def float_dtype(label: str, what: str, value):
    """``None`` or a floating dtype (``jnp.float32``, ``"bfloat16"``)."""
    return satisfies(lambda v: v is None or jnp.issubdtype(v, jnp.floating), "a floating dtype")(label, what, value)


def window(max_rank: int | None = 3):
    """A kernel or window size: a tuple of positive ints, one per spatial axis (never an int)."""
    def rule(label, what, value):
        if _is_int(value):
            raise ValueError(f"{label}: {what} must be a tuple with one entry per spatial axis, e.g. "
                             f"({value},) for 1-D or ({value}, {value}) for 2-D, got the int {value!r}")
        try:
            values = tuple(value)
        except TypeError:
            raise ValueError(f"{label}: {what} must be a tuple of positive integers, got {value!r}") from None
        if not values or not all(_is_int(v) and v > 0 for v in values):
            raise ValueError(f"{label}: {what} must be a non-empty tuple of positive integers, got {value!r}")
        if max_rank is not None and len(values) > max_rank:
            raise ValueError(f"{label}: {what} must have 1, 2 or 3 entries (1-D, 2-D or 3-D), got {value!r}")
        return values
    return rule


def padding(label: str, what: str, value, rank: int) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``, ``"VALID"`` (any case; returned upper-case) or ``rank`` pairs ``(lo, hi)`` of ints >= 0."""
    if isinstance(value, str):
        if value.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{label}: {what} must be 'SAME', 'VALID' or a sequence of {rank} (lo, hi) pairs, "
                             f"got {value!r}")
        return value.upper()
    try:
        pairs = tuple(tuple(p) for p in value)
    except TypeError:
        pairs = ()
    if len(pairs) != rank or not all(len(p) == 2 and all(_is_int(v) and v >= 0 for v in p) for p in pairs):
        raise ValueError(f"{label}: {what} must be 'SAME', 'VALID' or a sequence of {rank} (lo, hi) pairs of "
                         f"non-negative integers (e.g. {[(1, 1)] * rank}), got {value!r}")
    return pairs


def layer_input(label: str, x, expected: str = "", *, ndim: int | None = None, min_ndim: int = 0,
                floating: bool = False) -> None:
    """An input of ``ndim`` axes (or at least ``min_ndim``), floating if ``floating``, as ``expected``."""
    if len(x.shape) < min_ndim or ndim is not None and len(x.shape) != ndim:
        raise ValueError(f"{label}: expected {expected}, got shape {tuple(x.shape)}")
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{label}: expected a floating-point input, got {jnp.dtype(x.dtype).name}")


def last_axis(label: str, x, size: int | None, what: str = "") -> None:
    """The input's last axis must hold ``size`` entries, the size it was initialized with (``None``: any)."""
    if len(x.shape) < 1 or size is not None and x.shape[-1] != size:
        raise ValueError(f"{label}: expected input of shape [..., {size or 'F'}] ({what}the size it was initialized "
                         f"with), got {tuple(x.shape)}")


def window_input(label: str, shape, window, dilation, padding, what: str = "kernel") -> None:
    """A conv or pooling input ``[B, *spatial, C]`` whose padded spatial axes hold the dilated window."""
    rank = len(window)
    if len(shape) != rank + 2:
        want = ("[B, W, C]", "[B, H, W, C]", "[B, D, H, W, C]")[rank - 1] if rank <= 3 else \
            f"[B, {rank} spatial axes..., C]"
        raise ValueError(f"{label}: a {rank}-D {what} of size {tuple(window)} expects inputs of rank {rank + 2} "
                         f"{want}, got shape {tuple(shape)}")
    pads = [(0, 0)] * rank if isinstance(padding, str) else padding
    for axis, (n, k, d, (lo, hi)) in enumerate(zip(shape[1:-1], window, dilation, pads)):
        if padding != "SAME" and n + lo + hi < d * (k - 1) + 1:
            raise ValueError(f"{label}: {what} of size {tuple(window)} (span {d * (k - 1) + 1} with dilation {d}) is "
                             f"larger than the padded input along spatial axis {axis} (size {n} + padding {lo + hi}) "
                             f"for input shape {tuple(shape)}; use padding='SAME', more padding or a smaller {what}")


def divisible(label: str, what: str, value: int, by_what: str, by: int, context: str = "") -> None:
    """``value`` (``what``) must be a multiple of ``by`` (``by_what``); ``context`` ends the message."""
    if value % by:
        raise ValueError(f"{label}: {what} ({value}) must be divisible by {by_what} ({by}){context}")


def batch_axes(label: str, what: str, value, ndim: int) -> tuple[int, ...]:
    """Distinct axes ``value`` of an ``ndim``-axis input, including the batch axis 0, sorted, >= 0."""
    if not all(-ndim <= a < ndim for a in value):
        raise ValueError(f"{label}: {what} {value} out of range for an input with {ndim} axes")
    resolved = tuple(sorted(a % ndim for a in value))
    if len(set(resolved)) != len(resolved) or 0 not in resolved:
        raise ValueError(f"{label}: {what} must name distinct axes including the batch axis 0, got {value} for an "
                         f"input with {ndim} axes")
    return resolved


def sequence_input(label: str, x, max_len: int | None = None, width: int | None = None) -> None:
    """A float sequence ``[B, T, F]`` with ``T <= max_len`` and ``F == width``, each when given."""
    layer_input(label, x, "a sequence [B, T, F]", ndim=3, floating=True)
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(f"{label}: expected at most max_len={max_len} positions, got a sequence of length "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    if width is not None and x.shape[2] != width:
        raise ValueError(f"{label}: expected input of shape [B, T, {width}] (the width it was initialized with), "
                         f"got {tuple(x.shape)}")


# ---- rules added for train ----

def index_below(label: str, what: str, value, size: int, size_name: str) -> int:
    """``value`` if it is a Python int in ``[0, size)``; ``size_name`` names the bound in the message."""
    return int_range(0, size, f"[0, {size_name}={size})")(label, what, value)


def satisfies(test, need: str, error=ValueError, described=repr):
    """A value ``test`` accepts; else ``error("label: what must be <need>, got <described(value)>")``."""
    def rule(label, what, value):
        if not test(value):
            raise error(f"{label}: {what} must be {need}, got {described(value)}")
        return value
    return rule


def int_at_least(low: int):
    """A Python int ``>= low`` (not a bool)."""
    return satisfies(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def fields(label: str, obj, **rules) -> None:
    """Applies each rule to the attribute of ``obj`` of that name (a dataclass's fields)."""
    for what, rule in rules.items():
        rule(label, what, getattr(obj, what))


def int_range(low: int, high: int, shown: str):
    """A Python int in ``[low, high)``; ``shown`` is the interval as the message writes it."""
    return satisfies(lambda v: _is_int(v) and low <= v < high, f"an integer in {shown}")


def is_real(value) -> bool:
    """A real number (int, float, NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def integral(label: str, what: str, value) -> int:
    """An integer (Python or NumPy, or an integer scalar array) as a Python int; not a bool."""
    ok = lambda v: not isinstance(v, (bool, np.bool_)) and (isinstance(v, (int, np.integer)) or (
        hasattr(v, "dtype") and np.ndim(v) == 0 and np.issubdtype(v.dtype, np.integer)))
    return int(satisfies(ok, "a non-negative integer")(label, what, value))


# ---- rules added for layers 2 (attention, recurrent, repeat, transformer, remat) ----

def require(ok, label: str, message: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error(f"{label}: {message}")`` unless ``ok`` (one check that needs no helper of its own)."""
    if not ok:
        raise error(f"{label}: {message}")


def width(label: str, x, size: int, shape: str = "[B, T, {}]", what: str = "width") -> None:
    """The input's last axis must hold ``size``, the ``what`` it was initialized with (``shape``: "[B, T, {}]")."""
    if x.shape[-1] != size:
        raise ValueError(f"{label}: expected input of shape {shape.format(size)} (the {what} it was initialized "
                         f"with), got {tuple(x.shape)}")


def float_array(label: str, x, rank: int, expected: str, width: int | None = None) -> None:
    """A floating-point array of ``rank`` axes (and last axis ``width`` if given), as ``expected``."""
    if len(x.shape) != rank or not jnp.issubdtype(x.dtype, jnp.floating) or width not in (None, x.shape[-1]):
        raise ValueError(f"{label}: expected a floating-point {expected}, got "
                         f"{jnp.dtype(x.dtype).name}{list(x.shape)}")


def float_sequence(label: str, x, width: int | None = None) -> None:
    """A floating-point sequence ``[B, T, F]``, with ``F == width`` when given."""
    float_array(label, x, 3, "sequence [B, T, F]")
    sequence_input(label, x, width=width)


def copies(label: str, copies) -> list:
    """The values of a dict keyed ``"<kind>_<i>"``, ``i = 0..n-1``, in order, all of one tree structure."""
    if not isinstance(copies, dict) or not copies:
        raise ValueError(f"{label}: expected a non-empty dict of copies, got {copies!r:.80}")
    index = {}
    for k in copies:
        found = re.fullmatch(r"(.+)_(\d+)", k)
        if found is None:
            raise ValueError(f"{label}: expected keys '<kind>_<i>', got {k!r}")
        index[int(found.group(2))] = k
    if sorted(index) != list(range(len(copies))):
        raise ValueError(f"{label}: expected copies numbered 0..{len(copies) - 1}, got {sorted(copies)}")
    trees = [copies[index[i]] for i in range(len(copies))]
    if len({jax.tree.structure(t) for t in trees}) != 1:
        raise ValueError(f"{label}: the copies have different tree structures")
    return trees


def leading_axis(label: str, leaves) -> int:
    """The size of the leading axis that every one of ``leaves`` (a non-empty list of arrays) shares."""
    if not leaves:
        raise ValueError(f"{label}: the stacked tree has no leaves")
    n = leaves[0].shape[0] if leaves[0].ndim else None
    if n is None or any(leaf.ndim == 0 or leaf.shape[0] != n for leaf in leaves):
        raise ValueError(f"{label}: expected every leaf to have the same leading (copy) axis, got "
                         f"shapes {[tuple(leaf.shape) for leaf in leaves]}")
    return n


# ---- rules added for train (wave 2) ----

def kind(test, need: str):
    """A value ``test`` accepts; else ``TypeError("label: what must be <need>, got <type name>")``."""
    return satisfies(test, need, TypeError, lambda value: type(value).__name__)


def records(label: str, what: str, value) -> list[dict]:
    """A non-empty list of dicts (one per member) that all have the same keys, as a list of dicts."""
    if isinstance(value, (Mapping, str)) or not isinstance(value, Iterable):
        raise TypeError(f"{label}: {what} must be a list of dicts (one per member), got {type(value).__name__}")
    value = list(value)
    if not value:
        raise ValueError(f"{label}: {what} is empty")
    for i, v in enumerate(value):
        if not isinstance(v, Mapping):
            raise TypeError(f"{label}: {what} must be a list of dicts (one per member); config {i} is a "
                            f"{type(v).__name__}")
        if set(v) != set(value[0]):
            raise ValueError(f"{label}: every config needs the same fields; config 0 has {sorted(value[0])}, "
                             f"config {i} has {sorted(v)}")
    return [dict(v) for v in value]


def each(rule):
    """A mapping whose every value passes ``rule`` (named ``what[key]``)."""
    def check(label, what, value):
        for key, item in value.items():
            rule(label, f"{what}[{key!r}]", item)
        return value
    return check


def all_of(*rules):
    """A value that passes every rule in turn (each may normalize it)."""
    def check(label, what, value):
        for rule in rules:
            value = rule(label, what, value)
        return value
    return check


def bounds_space(label: str, what: str, space) -> tuple:
    """A space ``{name: (low, high[, 'log'])}`` (or its result) as sorted ``((name, (low, high, log)), ...)``."""
    if isinstance(space, Mapping):
        items = list(space.items())
    elif isinstance(space, (tuple, list)) and all(isinstance(i, (tuple, list)) and len(i) == 2
                                                  and isinstance(i[0], str) for i in space):
        items = list(space)
    else:
        raise TypeError(f"{label}: {what} must be a dict {{name: (low, high)}} or {{name: (low, high, 'log')}}, "
                        f"got {type(space).__name__}")
    if not items:
        raise ValueError(f"{label}: {what} is empty; give {{name: (low, high)}} for each explored hyperparameter")
    checked = []
    for name, bounds in sorted(items, key=lambda item: str(item[0])):
        if not isinstance(name, str):
            raise TypeError(f"{label}: {what} names must be strings (hyperparameter names), got {name!r}")
        bounds = tuple(bounds) if isinstance(bounds, (tuple, list)) else (bounds,)
        log = len(bounds) == 3 and (bounds[2] == "log" or bounds[2] is True)
        linear = len(bounds) == 2 or (len(bounds) == 3 and bounds[2] is False)
        if not (log or linear) or not all(is_real(b) and math.isfinite(b) for b in bounds[:2]) \
                or not bounds[0] <= bounds[1] or (log and bounds[0] <= 0):
            raise ValueError(f"{label}: {what}[{name!r}] must be (low, high) or (low, high, 'log'): finite numbers "
                             f"with low <= high (and low > 0 for 'log'), got {bounds!r}")
        checked.append((name, (float(bounds[0]), float(bounds[1]), log)))
    return tuple(checked)


def member_arrays(label: str, what: str, value) -> dict:
    """None or ``{name: values [N]}``, 1-D numeric arrays of one length ``N > 0``, as jax arrays."""
    instance_of(Mapping, type(None), described="a dict {name: array [N]}")(label, what, value)
    arrays = {name: jnp.asarray(v) for name, v in (value or {}).items()}
    for name, v in arrays.items():
        if v.ndim != 1 or not (jnp.issubdtype(v.dtype, jnp.number) or v.dtype == bool):
            raise ValueError(f"{label}: {what}[{name!r}] must be a 1-D numeric array with one value per "
                             f"member, got {v.dtype}{list(v.shape)}")
    sizes = {name: v.shape[0] for name, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{label}: every {what} array needs one value per member; got lengths {sizes}")
    if 0 in sizes.values():
        raise ValueError(f"{label}: the population is empty ({what} arrays have length 0)")
    return arrays


def declare_as(label: str, **rules):
    """:func:`declare` with a fixed label, e.g. ``"Checkpointer.save"`` for a method."""
    def wrap(fn):
        name, fn.__name__ = fn.__name__, label
        checked = declare(**rules)(fn)
        checked.__name__ = name
        return checked
    return wrap


def within_space(label: str, what: str, arrays: dict, space: tuple) -> None:
    """Each name of a :func:`bounds_space` has a float array in ``arrays`` within its bounds (NaN passes)."""
    for name, _ in space:
        if name not in arrays or not jnp.issubdtype(arrays[name].dtype, jnp.floating):
            raise ValueError(f"{label}: PBT explores {name!r}, so {what} needs a float array for it; "
                             f"got {what} {sorted(arrays)}")
    for name, (low, high, _) in space:
        values = np.asarray(arrays[name])
        outside = np.flatnonzero((values < values.dtype.type(low)) | (values > values.dtype.type(high)))
        if outside.size:
            raise ValueError(f"{label}: {what}[{name!r}] must lie within PBT space bounds [{low:g}, {high:g}]; "
                             f"member {outside[0]} has {float(values[outside[0]])!r}")


def examples(label: str, x, y) -> None:
    """``x`` and ``y`` (pytrees) each hold arrays, all with one number of examples on the first axis."""
    leaves = [(name + jax.tree_util.keystr(path), leaf) for name, tree in (("x", x), ("y", y))
              for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    if not any(name.startswith("x") for name, _ in leaves) or not any(name.startswith("y") for name, _ in leaves):
        raise ValueError(f"{label}: x and y must each hold at least one array")
    scalars = [name for name, leaf in leaves if leaf.ndim == 0]
    if scalars:
        raise ValueError(f"{label}: every array needs a leading example axis; {scalars[0]} is a scalar")
    (first, leaf0), counts = leaves[0], {name: leaf.shape[0] for name, leaf in leaves}
    bad = [name for name, count in counts.items() if count != leaf0.shape[0]]
    if bad:
        raise ValueError(f"{label}: x and y must have the same number of examples, got {leaf0.shape[0]} and "
                         f"{counts[bad[0]]} ({first} has {leaf0.shape[0]}, {bad[0]} has {counts[bad[0]]}; every "
                         f"array holds the examples on its first axis)")


def key_batch(label: str, what: str, key, n: int | None):
    """Typed keys: ``split(key, n)`` for one key, or the given batch of ``n`` keys (any when ``n`` is None)."""
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2) or key.shape[-1] != 2:
            raise ValueError(f"{label}: {what} must be a PRNG key (jax.random.key) or a batch of them, got "
                             f"{key.dtype}{list(key.shape)}")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        if n is None:
            raise ValueError(f"{label}: with no hparams, pass one key per member (a batch of keys) "
                             f"to set the population size")
        return jax.random.split(key, n)
    if key.ndim != 1 or (n is not None and key.shape[0] != n):
        raise ValueError(f"{label}: expected one key or a batch of {n if n is not None else 'N'} keys, "
                         f"got keys of shape {tuple(key.shape)}")
    return key


def logged_metric(label: str, what: str, name, names, note: str = "") -> None:
    """``name`` must be among the logged metric ``names``; ``what`` says who wants it."""
    if name not in names:
        which = ", which" if what.endswith("monitors") else ""
        raise ValueError(f"{label}: {what} {name!r}{which} is not among the logged metrics {sorted(set(names))}{note}")


def at_most_one(label: str, what: str, items: list, note: str = "") -> None:
    """A run takes at most one ``what`` (e.g. one EarlyStopping among its callbacks)."""
    if len(items) > 1:
        raise ValueError(f"{label}: at most one {what} per run, got {len(items)}{note}")


def writable_directory(label: str, directory) -> None:
    """``directory`` exists or can be created: its nearest existing ancestor is a writable directory."""
    existing = next(p for p in [directory, *directory.parents] if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{label}: cannot use {str(directory)!r}: {str(existing)!r} is a file, "
                                 f"not a directory; choose another path")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{label}: cannot write to {str(existing)!r} (for {str(directory)!r}); "
                              f"fix its permissions or choose another path")


def new_file(label: str, what: str, path, suffixes: tuple):
    """``path`` as a ``pathlib.Path`` to a new, writable file ending in one of ``suffixes``."""
    file = pathlib.Path(os.fspath(path))
    if file.suffix not in suffixes:
        raise ValueError(f"{label}: {what} must end in {' or '.join(suffixes)}, got {path}")
    if file.exists():
        raise FileExistsError(f"{label}: {path} already exists; choose another path")
    blocker = next((p for p in [file.parent, *file.parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"{label}: {path} cannot be written: {blocker} is a file, not a directory")
    if blocker is not None and not os.access(blocker, os.W_OK):
        raise PermissionError(f"{label}: {path} cannot be written: {blocker} is not writable")
    return file


def like_tree(label: str, what: str, tree, expected) -> None:
    """``tree`` (the given ``what``) has the structure and leaf shapes of ``expected``."""
    paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(t)]
    if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(expected):
        missing, extra = sorted(set(paths(expected)) - set(paths(tree))), sorted(set(paths(tree)) - set(paths(expected)))
        raise ValueError(f"{label}: the given {what} do not have the model's structure: missing "
                         f"{', '.join(missing) or 'nothing'}; unexpected {', '.join(extra) or 'nothing'}")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(expected)):
        if np.shape(a) != b.shape:
            raise ValueError(f"{label}: given {what}{jax.tree_util.keystr(path)} has shape {np.shape(a)}, "
                             f"the model expects {b.shape}")


def loss_result(result, reserved=()) -> tuple:
    """A loss's scalar or ``(scalar, {name: scalar})`` as a pair; no log named as the history's own
    (:func:`log_names`) nor as one of ``reserved`` (the metrics)."""
    pair = isinstance(result, tuple)
    if pair and (len(result) != 2 or not isinstance(result[1], Mapping)):
        raise TypeError(f"loss must return a scalar or a pair (loss, {{name: scalar}}), got a tuple of "
                        f"{len(result)} whose second item is {type(result[-1]).__name__}")
    value, logs = result if pair else (result, {})
    if jnp.shape(value) != ():
        raise ValueError(f"loss must return a scalar (e.g. the mean over the batch), it returned shape "
                         f"{jnp.shape(value)}")
    clash = sorted(n for n in logs if n in reserved or _reserved_log(n))
    if clash:
        raise ValueError(f"loss: the logs it returns use the reserved name(s) {clash} (the history's own: loss, "
                         f"epoch, time, lr, val_*; and the metrics); rename them")
    bad = next((k for k, v in logs.items() if jnp.shape(v) != ()), None)
    if bad is not None:
        raise ValueError(f"loss: its log {bad!r} must be a scalar (a mean over the batch), got shape "
                         f"{jnp.shape(logs[bad])}")
    return value, dict(logs)


def split_fraction(label: str, what: str, value, n: int) -> None:
    """A fraction in (0, 1) of ``n`` examples that leaves examples on both sides of the split."""
    satisfies(lambda v: is_real(v) and 0 < v < 1, "a fraction in (0, 1)")(label, what, value)
    held = int(round(n * value))
    if held == 0 or held == n:
        raise ValueError(f"{label}: {what}={value} of {n} examples leaves {'no' if held == 0 else 'all'} examples "
                         f"for validation; use a {what} between {1 / n:.3g} and {1 - 1 / n:.3g}")


def callbacks(label: str, items, *, population: bool = False) -> None:
    """Callbacks: functions or ``on_epoch_end`` objects (a population's: ``on_population_epoch_end``)."""
    for cb in items:
        if not population and not (callable(cb) or hasattr(cb, "on_epoch_end")):
            raise TypeError(f"{label}: each callback must be a function (epoch, train_state, logs) or have an "
                            f"on_epoch_end method, got {type(cb).__name__}")
        if population and not hasattr(cb, "on_population_epoch_end"):
            raise TypeError(f"{label}: each callback needs an on_population_epoch_end(epoch, states, logs, "
                            f"trained) method, got {type(cb).__name__}")


def like_first_batch(label: str, at: str, names: list, spec: tuple, first: tuple) -> None:
    """A streamed batch's ``spec = (treedef, [(shape, dtype)])`` is the first batch's (``first``)."""
    if spec[0] != first[0]:
        raise ValueError(f"{label}: {at} has the structure {spec[0]}, the first batch had {first[0]}; every "
                         f"batch must have the same structure")
    for name, got, want in zip(names, spec[1], first[1]):
        if got != want:
            raise ValueError(f"{label}: the shapes changed mid-stream: {at} has {name} of shape {got[0]} {got[1]}, "
                             f"the first batch had {want[0]} {want[1]}; every batch must have the first one's "
                             f"shapes (drop the ragged last batch, as jnn.data.grain.pipeline does, or pad it)")


def hashable(label: str, what: str, value):
    """A hashable value (a number, string or tuple; a list is turned into a tuple)."""
    value = tuple(value) if isinstance(value, list) else value
    try:
        hash(value)
    except TypeError:
        raise ValueError(f"{label}: {what} must be hashable (a number, string or tuple), "
                         f"got {type(value).__name__}") from None
    return value


def num_batches(label: str, num_examples: int, batch_size: int) -> int:
    """How many full batches of ``batch_size`` (> 0) ``num_examples`` make (at least one)."""
    if batch_size <= 0:
        raise ValueError(f"{label}: batch_size must be positive, got {batch_size}")
    if num_examples // batch_size == 0:
        raise ValueError(f"{label}: {num_examples} training examples is fewer than one batch "
                         f"of {batch_size}; lower batch_size")
    return num_examples // batch_size


def among(label: str, what: str, names, known, known_what: str) -> None:
    """Every one of ``names`` is in ``known``; else ``"label: what [missing] are not known_what [known]"``."""
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"{label}: {what} {missing} are not {known_what} {sorted(known)}")


def indices_below(label: str, what: str, values: np.ndarray, n: int) -> np.ndarray:
    """Integer ``values`` that all lie in ``[0, n)`` (the message gives their range)."""
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(f"{label}: {what} must lie in [0, {n}), got [{values.min()}, {values.max()}]")
    return values



# ---- rules added for w-loop (gradient accumulation) ----
def micro_batches(label: str, batch_size: int, accumulate: int) -> int:
    """The micro-batch size when ``accumulate`` splits a batch of ``batch_size``; else a ValueError."""
    if batch_size % accumulate:
        raise ValueError(f"{label}: accumulate={accumulate} splits each batch into {accumulate} equal micro-batches, "
                         f"but a batch has {batch_size} examples, not a multiple of {accumulate}")
    return batch_size // accumulate


# ---- rules added for attention (bias, mask and the attention_bias hook) ----

#: ``None`` or an ``attention_bias`` hook: a function ``(query_positions, key_positions) -> array``.
attention_hook = optional(satisfies(callable, "a function (query_positions, key_positions) -> bias or mask",
                                    TypeError, lambda value: type(value).__name__))


def attention_operand(label: str, what: str, value, shape: tuple, boolean: bool | None = False):
    """``value`` (``None`` stays ``None``) as an array broadcastable to ``shape`` ``[B, N, T, S]``:
    boolean if ``boolean``, floating-point if not, either if ``None``."""
    if value is None:
        return None
    value = jnp.asarray(value)
    kinds = {True: "boolean", False: "floating-point", None: "boolean or floating-point"}
    fits = value.ndim <= 4 and all(a in (1, b) for a, b in zip(value.shape[::-1], shape[::-1]))
    is_bool, floating = value.dtype == bool, jnp.issubdtype(value.dtype, jnp.floating)
    if not fits or not {True: is_bool, False: floating, None: is_bool or floating}[boolean]:
        raise ValueError(f"{label}: {what} must be a {kinds[boolean]} array broadcastable to [B, N, T, S] = "
                         f"{list(shape)}, got {jnp.dtype(value.dtype).name}{list(value.shape)}")
    return value


__all__ += ["attention_hook", "attention_operand"]


# ---- rules added for resume (checkpoint paths and metadata) ----

def creatable_directory(label: str, directory: pathlib.Path) -> None:
    """:func:`writable_directory`, and a probe file really created (and removed) in its nearest existing ancestor."""
    writable_directory(label, directory)
    existing = next(p for p in [directory, *directory.parents] if p.exists())
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=".jnn-probe-").close()
    except OSError as e:
        raise PermissionError(f"{label}: cannot create anything in {str(existing)!r} (for {str(directory)!r}): "
                              f"{e.strerror or e}; choose another path") from None


def complete_meta(label: str, meta: dict) -> dict:
    """``meta`` if it holds every item a ``Checkpointer`` writes (a stream's ``progress`` with its ``data_state``)."""
    items = ["format", "step", "logs", "config", "saved_at", "versions", "key_impls", "tree"]
    missing = [k for k in items + (["progress", "data_state"] if {"progress", "data_state"} & set(meta) else [])
               if k not in meta]
    if missing:
        raise ValueError(f"{label} lacks metadata item {', '.join(map(repr, missing))}: it was altered or not "
                         f"completely written; restore(step=...) another step, or delete this one")
    return meta


def val_stream(label: str, val_data, mesh) -> None:
    """A streamed ``val_data`` is re-iterable (it is evaluated every epoch) and runs without a mesh."""
    require(mesh is None, label, "val_data as a stream is not supported with a mesh; pass (x, y) arrays")
    require(not hasattr(val_data, "__next__"), label, f"val_data is a one-shot iterator ({type(val_data).__name__}), "
            f"empty after the first evaluation; pass list(val_data), a re-iterable (a Grain pipeline with "
            f"num_epochs=1) or (x, y)", TypeError)


def unused_directory(label: str, directory, latest: int | None, resume: bool,
                     how: str = "pass every_steps(k, resume=True) to continue from them") -> None:
    """A checkpoint ``directory`` that holds steps (the newest: ``latest``) is written to again only to resume."""
    require(latest is None or resume, label, f"{directory} already holds checkpoints (latest: step {latest}); "
            f"{how}, or choose a new directory", FileExistsError)


def stream_progress(label: str, where: str, progress: dict | None, steps_per_epoch: int, batch_size: int) -> None:
    """A stream checkpoint (``where``) has ``progress``, saved with these batches (old ones: a fitting position)."""
    require(progress is not None, label, f"{where} has no data iterator state; it was not saved by "
            f"fit(..., checkpoint=checkpointer.every_steps(k)) over a stream")
    saved = progress.get("steps_per_epoch", steps_per_epoch), progress.get("batch_size", batch_size)
    require(saved == (steps_per_epoch, batch_size) and progress["step_in_epoch"] <= steps_per_epoch, label,
            f"{where} was saved by a run of {saved[0]} batches an epoch of {saved[1]} examples; this one has "
            f"{steps_per_epoch} of {batch_size}: resume with the same batches, or start in a new directory")


__all__ += ["creatable_directory", "complete_meta", "val_stream", "unused_directory", "stream_progress"]


# ---- rules added for names (issue 40: a name means one thing) ----

_reserved_log = lambda name: name in ("loss", "epoch", "time", "lr") or str(name).startswith("val_")


def log_names(label: str, what: str, names):
    """Metric names (``names``: a dict or None) that are not the history's own: loss, epoch, time, lr, val_*."""
    clash = [n for n in names or () if _reserved_log(n)]
    if clash:
        raise ValueError(f"{label}: {what} use the name(s) {clash} the history reserves (loss, epoch, time, lr, "
                         f"val_*); rename them")
    return names


def metric_values(metrics: dict, outputs, y) -> dict:
    """Each metric's value on ``(outputs, y)``, a scalar (a mean over the batch)."""
    values = {name: fn(outputs, y) for name, fn in metrics.items()}
    bad = next((k for k, v in values.items() if jnp.shape(v) != ()), None)
    if bad is not None:
        raise ValueError(f"metrics: {bad!r} must return a scalar (a mean over the batch), got shape "
                         f"{jnp.shape(values[bad])}")
    return values


def stop_answer(label: str, callback, asked, shape: tuple):
    """A callback's answer (None, a bool, a NumPy/JAX bool array ``shape``) as a bool array of ``shape``."""
    kinds = (type(None), bool, np.bool_, np.ndarray, jax.Array, list)
    value = np.asarray(False if asked is None else asked) if isinstance(asked, kinds) else None
    if value is None or value.dtype != bool or value.shape not in ((), shape):
        got = type(asked).__name__ if value is None else f"{value.dtype}{list(value.shape)}"
        named, array = getattr(callback, "__name__", type(callback).__name__), f" or a bool array {list(shape)}"
        raise TypeError(f"{label}: callback {named} must return None, a bool{array if shape else ''} (True stops), "
                        f"got {got}")
    return np.broadcast_to(value, shape)


def returned_state(label: str, callback, state, given):
    """What ``callback.on_train_end`` returned: None or a train state shaped like ``given``."""
    if state is not None and jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(given):
        raise TypeError(f"{label}: callback {type(callback).__name__}'s on_train_end must return None or a train "
                        f"state like the one it was given, got {type(state).__name__}")
    return state


__all__ += ["log_names", "metric_values", "stop_answer", "returned_state"]


# ---- rules added for hub (transformers' layouts) ----
_ROPE_SCALING = {"linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_scaling(label: str, what: str, value):
    """``None`` or a ``transformers`` ``rope_scaling`` dict of a kind jnn implements (``"default"``: ``None``)."""
    kind = value.get("rope_type", value.get("type")) if isinstance(value, dict) else None
    if value is None or kind == "default":
        return None
    if kind not in _ROPE_SCALING or not all(isinstance(value.get(k), (int, float)) for k in _ROPE_SCALING[kind]):
        raise ValueError(f"{label}: {what} must be None or a dict with rope_type 'linear' (factor) or 'llama3' "
                         f"({', '.join(_ROPE_SCALING['llama3'])}), got {value!r}")
    return dict(value)


__all__ += ["rope_scaling"]


# ---- rules added for losses and metrics (array arguments) ----

def arrays(label: str, names, *values) -> list:
    """Each of ``values`` as a jax array, or a ``TypeError`` naming ``label`` and the argument
    (``None`` and strings are not arrays)."""
    out = []
    for name, value in zip(names, values):
        try:
            out.append(jnp.asarray(value))
        except (TypeError, ValueError) as e:   # ValueError: None ("not a valid value for jnp.array")
            raise TypeError(f"{label}: {name} must be an array, got {type(value).__name__}") from e
    return out


__all__ += ["arrays"]
