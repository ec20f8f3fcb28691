"""Checks around ``fit``: arguments and data before the first step (naming the argument at
fault), non-finite metrics after each epoch (:class:`NonFiniteError`)."""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from jnn import _checks as checks
from jnn import core as _core
from jnn import losses as _losses
from jnn import metrics as _metrics

__all__ = ["NonFiniteError", "check_parts", "PARTS", "parts", "switch", "prng_key", "check_fit_args", "check_fit_plan", "check_val_data",
           "nonfinite_message", "population_message", "check_values", "check_features", "check_labels",
           "default_metrics"]

_CLASSIFICATION_LOSSES = (_losses.softmax_cross_entropy, _losses.binary_cross_entropy,
                          _losses.binary_cross_entropy_with_logits)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite metric in (1-based) ``epoch``; ``train_state`` is the last finite
    one, ``history`` runs up to the failing epoch, ``report`` (``NonFinite(debug=True)``) is a
    :class:`jnn.train.NonFiniteReport` (a population's: ``{member: report}``, failing ``members``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> nan_loss = lambda out, y: jnp.mean(out - y) * jnp.nan
      >>> try:
      ...     jnn.train.fit(jnn.dense(1), nan_loss, optax.sgd(0.1), jnn.data.xor(), key=jax.random.key(0), epochs=2,
      ...                   batch_size=4, metrics={}, verbose=0)
      ... except jnn.train.NonFiniteError as e:
      ...     print(e.epoch, int(e.train_state.step), e.report)
      1 0 None
    """

    def __init__(self, message, *, epoch, train_state, history, report=None, members=None):
        super().__init__(message)
        self.epoch, self.train_state, self.history, self.report = epoch, train_state, history, report
        self.members = members


def default_metrics(loss) -> dict:
    """``{"accuracy": ...}`` for classification losses, ``{}`` otherwise."""
    base = getattr(loss, "func", loss)  # functools.partial of a jnn loss counts too
    return {"accuracy": _metrics.accuracy} if base in _CLASSIFICATION_LOSSES else {}


def _described(value) -> str:
    hint = " (did you forget to call it?)" if callable(value) else ""
    return f"{type(value).__name__}{hint}"


_typename = lambda value: type(value).__name__
_PARTS = {   # what: (test, what it must be, how a wrong value is described); all TypeErrors
    "model": (lambda v: isinstance(v, _core.Layer), "a jnn.Layer (e.g. jnn.dense(10))", _described),
    "optimizer": (lambda v: callable(getattr(v, "init", None)) and callable(getattr(v, "update", None)),
                  "an optax.GradientTransformation (e.g. optax.adam(1e-3))", _described),
    "make_model": (callable, "a function of the hyperparameters", _typename),
    "make_optimizer": (callable, "a function of the hyperparameters", _typename),
    "loss": (callable, "a function (predictions, targets) -> scalar, e.g. jnn.losses.mse", _typename),
    "regularizer": (lambda v: v is None or callable(v), "a function params -> scalar or None", _typename),
    "metrics": (lambda v: v is None or isinstance(v, Mapping), "a dict {name: fn(predictions, targets)}",
                _typename),
}


def _metric_functions(label, what, value):
    bad = [(name, fn) for name, fn in (value or {}).items() if not isinstance(name, str) or not callable(fn)]
    if bad:
        raise TypeError(f"{label}: {what} must map names to functions (predictions, targets) -> scalar; "
                        f"{bad[0][0]!r} maps to {type(bad[0][1]).__name__}")
    return value


def switch(label: str, what: str, value):
    """A bool (``verbose``/``progress`` also take Keras's 0 and 1)."""
    keras_style = what in ("verbose", "progress") and type(value) is int and value in (0, 1)   # verbose=0
    return value if keras_style else checks.flag(label, what, value)


def prng_key(label: str, what: str, key):
    """One PRNG key: typed (``jax.random.key``) or a legacy ``jax.random.PRNGKey`` (uint32[2])."""
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0
    legacy = isinstance(key, jax.Array) and key.dtype == np.uint32 and key.shape == (2,)
    if not (typed or legacy):
        got = f"{key.dtype}{list(key.shape)}" if hasattr(key, "dtype") and hasattr(key, "shape") else repr(key)
        raise TypeError(f"{label}: {what} must be one PRNG key (jax.random.key(0)), got {got}")
    return key


#: Rules (for :func:`jnn._checks.declare`) of the training recipe's parts; all raise TypeErrors.
PARTS = {what: checks.satisfies(test, need, TypeError, shown) for what, (test, need, shown) in _PARTS.items()}
PARTS["metrics"] = checks.all_of(PARTS["metrics"], _metric_functions, checks.log_names)


def parts(*names: str) -> dict:
    """``{name: rule}`` of these :data:`PARTS`, for ``checks.declare(**parts("model", "loss"))``."""
    return {name: PARTS[name] for name in names}


def check_parts(where: str, **parts) -> None:
    """Applies :data:`PARTS`' rule to each part given, and :func:`switch` to any other (a flag)."""
    for what, value in parts.items():
        PARTS.get(what, switch)(where, what, value)


def check_fit_args(where: str, x, *, batch_size, eval_batch_size, val_split) -> None:
    """Argument checks that need no tracing; raises before any data is split or traced."""
    checks.positive_int(where, "batch_size", batch_size)
    checks.positive_int(where, "eval_batch_size", eval_batch_size)
    leaves = jax.tree_util.tree_leaves(x)
    n = len(leaves[0]) if leaves else 0
    checks.require(n > 0, where, "train_data is empty (0 examples); pass at least one batch")
    if val_split:
        checks.split_fraction(where, "val_split", val_split, n)


def _spec(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _example_shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)[1:]), tree)


def check_fit_plan(where: str, step, evaluate, ts, train_data, batch_size: int, val_data,
                   early_stopping, logs_lr: bool, data_check=None) -> None:
    """Traces (never runs) a train step and the evaluation, so misfits fail before the first step;
    ``data_check = (out, loss, metrics)`` also checks the data's values."""
    x, y = train_data
    batch = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), (x, y))

    def plan(ts, batch, val):   # the train step and (with val_data) the evaluation, traced together
        return step(ts, batch)[1], ({} if val is None else evaluate(ts.params, ts.state, val, step=ts.step))

    trace = lambda spec: jax.eval_shape(plan, ts, batch, spec)
    logs, val_logs = trace(None) if val_data is None else check_val_data(
        where, (x, y), val_data, trace, alone=lambda: jax.eval_shape(step, ts, batch))
    names = set(logs) | {"time"} | ({"lr"} if logs_lr else set()) | {f"val_{k}" for k in val_logs}
    if data_check is not None:
        check_values(where, *data_check, (x, y), val_data)
    if early_stopping is not None:
        checks.logged_metric(where, "early_stopping monitors", early_stopping.monitor, names,
                             " (checked before training)")


def check_val_data(where: str, train_data, val_data, trace, alone=None):
    """``trace(val_spec)`` for val examples shaped like the training ones (on failure, ``alone()`` first)."""
    (x, y), (vx, vy) = train_data, val_data
    for what, v, t in (("x", vx, x), ("y", vy, y)):
        if _example_shapes(v) != _example_shapes(t):
            raise ValueError(f"{where}: val_data {what} has examples of shape {_example_shapes(v)} "
                             f"but train_data {what} has {_example_shapes(t)}")
    try:
        return trace((_spec(vx), _spec(vy)))
    except (ValueError, TypeError) as e:
        if alone is not None:
            alone()
        raise type(e)(f"{where}: val_data does not fit the model: {e}") from e


def nonfinite_message(where: str, epoch: int, logs: dict, bad: list[str], report=None) -> str:
    values = ", ".join(f"{k}={logs[k]}" for k in bad)
    hint = (f"\n{report}" if report is not None else
            "; pass NonFinite(debug=True) to find the step, layer and examples")
    return (f"{where}: epoch {epoch} produced non-finite metrics ({values}); training stopped and "
            f"the state after the last finite epoch was kept{hint}")


def population_message(where: str, epoch: int, row: dict, bad, reports: dict, action: str) -> str:
    """Names each failing member, its non-finite metrics and (when replayed) where it happened."""
    lines = []
    for i in np.flatnonzero(bad):
        values = ", ".join(f"{k}={v[i]}" for k, v in row.items() if not np.isfinite(v[i]))
        lines.append(f"member {i}: {values}" + (f"; {reports[int(i)]}" if int(i) in reports else ""))
    then = ("training stopped" if action == "raise" else
            "they stopped there and keep their state from the epoch before; the others train on")
    hint = "" if reports else " (pass debug_nonfinite=True to find the step, layer and examples)"
    return (f"{where}: epoch {epoch} produced non-finite metrics for member(s) "
            f"{np.flatnonzero(bad).tolist()}: " + "; ".join(lines) + f"; {then}{hint}")


def check_values(where: str, out, loss, metrics, train_data, val_data=None) -> None:
    """:func:`check_features` and :func:`check_labels` of concrete data, once before training."""
    for what, (x, y) in {"train_data": train_data, "val_data": val_data or (None, None)}.items():
        if y is not None:
            check_features(where, what, x)
            check_labels(where, what, out, loss, metrics, y)


def check_features(where: str, what: str, x) -> None:
    """Raises when a float leaf of ``x`` holds NaN or Inf, naming the first example."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(x):
        if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
            continue
        rows = np.flatnonzero(~np.isfinite(np.asarray(leaf).reshape(len(leaf), -1)).all(axis=1))
        if len(rows):
            raise ValueError(f"{where}: {what} x{jax.tree_util.keystr(path)} has non-finite values (NaN or Inf) in "
                             f"{len(rows)} example(s), first at index {int(rows[0])}; clean or drop them")


def check_labels(where: str, what: str, out, loss, metrics, y) -> None:
    """Labels ``y`` the loss or a metric rejects (traced on outputs shaped like ``out``) raise here."""
    if not (isinstance(out, jax.ShapeDtypeStruct) and hasattr(y, "shape")):
        return  # several outputs or targets: the loss decides what they mean; nothing to probe
    placeholder = jax.ShapeDtypeStruct((len(y), *out.shape[1:]), jax.numpy.float32)
    for name, fn in {"loss": loss, **metrics}.items():
        try:
            jax.eval_shape(lambda outputs: fn(outputs, y), placeholder)
        except TypeError:
            continue  # e.g. a loss that takes the step: not probed here
        except ValueError as e:
            raise ValueError(f"{where}: {what} y does not suit the {name}: {e}") from e
