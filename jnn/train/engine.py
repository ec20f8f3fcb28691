"""The epoch runner behind ``fit``, ``fit_population`` and streamed training: data preparation,
history, progress, the non-finite policy and the callbacks (:mod:`jnn.train.callbacks`). Each
caller supplies only its compiled epoch to :func:`run_epochs`.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks
from jnn.train import guard
from jnn.train.callbacks import Callback, CallbackList, EarlyStopping, select_members
from jnn.train.step import as_arrays, gather, num_examples_of

__all__ = ["Data", "Start", "NonFinite", "Outcome", "check_pair", "CALLBACK_RULES", "with_early_stopping",
           "split_validation", "hold_out", "prepare", "learning_rate", "progress_bar", "run_epochs"]


class Data(NamedTuple):
    """Training data with how to read it: ``fit(model, loss, opt, Data(stream, steps_per_epoch=100))``.

    Attributes:
      data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches.
      steps_per_epoch: batches per epoch of a stream, read on from one iterator (default: a
        Pipeline's own, else ``len(data)``, re-iterated every epoch).
      check: check the data's values (a stream's first batch) for NaN/Inf and rejected labels.

    Example:
      >>> import jax, optax, jnn
      >>> data = jnn.train.Data(iter([jnn.data.xor()] * 6), steps_per_epoch=3, check=False)   # a stream of 6 batches
      >>> result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), data, key=jax.random.key(0), epochs=2,
      ...                        metrics={}, verbose=0)
      >>> int(result.train_state.step)
      6
    """

    data: Any
    steps_per_epoch: int | None = None
    check: bool = True


class Start(NamedTuple):
    """Where ``fit`` starts (its ``train_state=``; a plain TrainState resumes at epoch 0).

    Attributes:
      train_state: resume from this state (``key`` then only splits the validation set).
      params, state: or start a new run (step 0) from these weights (``state``: default the model's).
      epoch: train epochs ``epoch + 1 .. epochs``; resuming the state saved after epoch k with
        ``epoch=k`` reproduces an uninterrupted run bit for bit.

    Example:
      >>> import jax, optax, jnn
      >>> run = lambda epochs, start=None: jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.data.xor(),
      ...     key=jax.random.key(0), epochs=epochs, batch_size=4, metrics={}, verbose=0,
      ...     train_state=start)
      >>> rest = run(3, jnn.train.Start(run(1).train_state, epoch=1))      # epochs 2 and 3
      >>> rest.history["epoch"], bool((rest.train_state.params["w"] == run(3).train_state.params["w"]).all())
      ([2, 3], True)
    """

    train_state: Any = None
    params: Any = None
    state: Any = None
    epoch: int = 0


class NonFinite(Callback):
    """The non-finite policy: a NaN/Inf epoch stops training (a population's failing members) at the
    last finite state and raises a :class:`jnn.train.NonFiniteError` (``action="raise"``) or warns
    (``"stop"``); ``debug`` replays it with :func:`jnn.train.find_nonfinite`.

    Example:
      >>> import jnn
      >>> jnn.train.NonFinite("stop", debug=True).action
      'stop'
    """

    def __init__(self, action: str = "raise", *, debug: bool = False):
        self.action = checks.one_of("raise", "stop")("NonFinite", "action", action)
        self.debug = checks.flag("NonFinite", "debug", debug)

    def on_population_epoch_end(self, epoch, states, logs, trained):
        return None

    def handle(self, where: str, epoch: int, state, history, row: dict, bad, replay) -> Any:
        """Raises or warns about non-finite ``row`` (members ``bad``); returns ``replay``'s reports."""
        if bad.ndim == 0:
            report = replay(None) if self.debug else None
            names = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            message = guard.nonfinite_message(where, epoch, row, names, report)
            members = None
        else:
            report = replay(np.flatnonzero(bad)) if self.debug else {}
            message = guard.population_message(where, epoch, row, bad, report, self.action)
            members = np.flatnonzero(bad).tolist()
        if self.action == "raise":
            raise guard.NonFiniteError(message, epoch=epoch, train_state=state, history=history,
                                       report=report or None, members=members)
        warnings.warn(message, RuntimeWarning, stacklevel=_outside_jnn())
        return report


def _outside_jnn() -> int:
    """The ``stacklevel`` of the first caller outside the jnn package: a warning points at the user's line."""
    root, frame, level = os.path.dirname(os.path.dirname(__file__)), sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level


def check_pair(where: str, data) -> tuple[Any, Any]:
    """``(x, y)`` as jax arrays (or dicts/tuples of them), every leaf with the same example count."""
    from jnn.train.stream import is_stream
    if not (isinstance(data, (tuple, list)) and len(data) == 2) or is_stream(data):
        got = (f"a list of {len(data)} (x, y) batches, which only fit streams; pass (x, y) as a tuple of arrays"
               if is_stream(data) else type(data).__name__)
        raise TypeError(f"{where}: expected a pair (x, y), got {got}")
    x, y = as_arrays(tuple(data))
    checks.examples(where, x, y)
    return x, y


#: Rules of ``fit``'s and ``fit_population``'s ``callbacks`` and ``early_stopping``.
CALLBACK_RULES = dict(callbacks=checks.instance_of(list, tuple, described="a list of callbacks"),
                      early_stopping=checks.optional(checks.instance_of(EarlyStopping,
                                                                        described="a jnn.train.EarlyStopping")))


def with_early_stopping(where: str, callbacks, early_stopping):
    """``callbacks`` with ``early_stopping`` added, and the run's one :class:`EarlyStopping` (or None)."""
    callbacks = list(callbacks) + ([early_stopping] if early_stopping is not None else [])
    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    checks.at_most_one(where, "EarlyStopping", stoppers, " (in callbacks and early_stopping together)")
    return callbacks, (stoppers[0] if stoppers else None)


@checks.declare(fraction=checks.satisfies(lambda f: 0.0 < f < 1.0, "in (0, 1)"))
def split_validation(x, y, fraction: float, key):
    """Shuffles ``(x, y)`` (arrays or pytrees of them) with ``key`` and splits off ``fraction``:
    ``(train_x, train_y), (val_x, val_y)``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> x, y = jnp.arange(20.0).reshape(10, 2), jnp.arange(10)
      >>> (tx, ty), (vx, vy) = jnn.train.split_validation(x, y, 0.2, jax.random.key(0))
      >>> tx.shape, ty.shape, vx.shape, vy.shape
      ((8, 2), (8,), (2, 2), (2,))
    """
    x, y = as_arrays((x, y))
    n = num_examples_of(x)
    n_val = int(round(n * fraction))
    order = np.asarray(jax.random.permutation(key, n))
    val, train = order[:n_val], order[n_val:]
    return (gather(x, train), gather(y, train)), (gather(x, val), gather(y, val))


def prepare(where: str, train_data, val_data, val_split, split_key, *, batch_size, eval_batch_size,
            first_batch=None, mesh=None):
    """``(x, y), val_data``, checked (a stream: its ``first_batch``; ``val_data`` re-iterable, no ``mesh``),
    ``val_split`` held out."""
    x, y = check_pair(f"{where} train_data" + (" (first batch)" if first_batch is not None else ""),
                      train_data if first_batch is None else first_batch)
    guard.check_fit_args(where, x, batch_size=batch_size, eval_batch_size=eval_batch_size, val_split=val_split)
    (x, y), val_data = hold_out(where, (x, y), val_data, val_split, split_key)
    from jnn.train.stream import is_stream
    if is_stream(val_data):
        checks.val_stream(where, val_data, mesh)
    elif val_data is not None:
        val_data = check_pair(f"{where} val_data", val_data)
    return (x, y), val_data


def hold_out(where: str, train_data, val_data, val_split, key):
    """``(train_data, val_data)`` with ``val_split`` of ``train_data`` held out (shuffled by ``key``)."""
    checks.require(val_data is None or not val_split, where, "pass either val_data or val_split, not both")
    if not val_split:
        return train_data, val_data
    return split_validation(*check_pair(f"{where} train_data", train_data), val_split, key)


def learning_rate(opt_state):
    """The learning rate ``optax.inject_hyperparams`` keeps (``[N]`` for a population), else None."""
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(leaf, "hyperparams") and "learning_rate" in leaf.hyperparams:
            return leaf.hyperparams["learning_rate"]
    return None


class _Bar(NamedTuple):
    progress: Any = None   # a rich Progress, or None: no bar
    task: Any = None

    def advance(self, logs):
        if self.progress is not None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "time")
            self.progress.update(self.task, advance=1, description=shown)


@contextlib.contextmanager
def progress_bar(epochs: int, *, enabled: bool = True):
    """A rich progress bar over epochs with the latest metrics (a no-op when disabled or without rich)."""
    try:
        import rich.progress
    except ImportError:
        enabled = False
    if not enabled:
        yield _Bar()
        return
    columns = [rich.progress.TextColumn("epoch {task.completed}/{task.total}"), rich.progress.BarColumn(),
               rich.progress.TextColumn("{task.description}"), rich.progress.TimeElapsedColumn()]
    with rich.progress.Progress(*columns, transient=True) as progress:
        yield _Bar(progress, progress.add_task("", total=epochs))


class Outcome(NamedTuple):
    """What :func:`run_epochs` returns (per member arrays for a population, scalars otherwise)."""

    train_state: Any
    history: dict
    stopped_early: Any
    epochs_trained: Any
    nonfinite_epoch: Any
    reports: Any


class _Book:
    """The history: ``{name: [values]}`` for one run, ``{name: [epochs, N]}`` (NaN: not trained)."""

    def __init__(self, epochs: int, members: int | None, history: dict | None, names=()):
        self.epochs, self.members = epochs, members
        self.data = {} if history is None else history
        for k in names:
            self.data[k] = np.full((epochs, members), np.nan)

    def add(self, epoch: int, logs: dict, trained) -> dict:
        if self.members is None:
            for k, v in {"epoch": epoch, **logs}.items():
                self.data.setdefault(k, []).append(v)
            return logs
        for k, v in logs.items():  # the names of a loss's own logs first appear here
            self.data.setdefault(k, np.full((self.epochs, self.members), np.nan))
            self.data[k][epoch - 1] = np.where(trained, np.asarray(v, np.float64), np.nan)
        return {k: v[epoch - 1] for k, v in self.data.items()}

    def finite(self, row: dict):
        if self.members is None:
            return np.bool_(all(math.isfinite(v) for v in row.values() if isinstance(v, float)))
        return np.all([np.isfinite(v) for v in row.values()], axis=0)


def run_epochs(where: str, ts, epoch_fn, *, epochs: int, callbacks: CallbackList, policy: NonFinite,
               initial_epoch: int = 0, members: int | None = None, history: dict | None = None, names=(),
               verbose: bool = False, progress: bool = False, replay=None, describe=None) -> Outcome:
    """Runs epochs ``initial_epoch + 1 .. epochs`` of ``epoch_fn(ts, epoch, trained) -> (ts, logs)``
    for one run or ``members`` of a population: history, a ``verbose`` line (a population's from
    ``describe``), a non-finite epoch reverted and handed to ``policy``, then the ``callbacks``
    (True, or a bool ``[N]``, stops the run or those members)."""
    shape = () if members is None else (members,)
    book = _Book(epochs, members, history, names)
    active, stopped = np.ones(shape, bool), np.zeros(shape, bool)
    trained_until, bad_epoch, reports = np.zeros(shape, int), np.zeros(shape, int), {}
    callbacks.on_train_begin(ts)
    with progress_bar(epochs - initial_epoch, enabled=progress) as bar:
        for epoch in range(initial_epoch + 1, epochs + 1):
            start, trained, last_good = time.perf_counter(), active.copy(), ts
            ts, logs = epoch_fn(ts, epoch, trained)
            if members is None:
                logs["time"] = time.perf_counter() - start
                if verbose:
                    print(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
            row = book.add(epoch, logs, trained)
            trained_until[trained] = epoch
            bar.advance(logs)
            bad = trained & ~book.finite(row)
            if bad.any():   # the failing run or members stop here, back at their last finite state
                ts = last_good if members is None else select_members(jnp.asarray(~bad), ts, last_good)
                bad_epoch[bad], active, trained = epoch, active & ~bad, trained & ~bad
                found = policy.handle(where, epoch, ts, book.data, row, bad,
                                      lambda which: replay(last_good, which))
                if members is None:
                    reports = found
                    break
                reports.update(found)
            stop = trained & callbacks.on_epoch_end(epoch, ts, row, trained)
            stopped |= stop & (epoch < epochs)
            active &= ~stop
            if verbose and members is not None:
                print(describe(epoch, book.data, trained), flush=True)
            if not active.any():
                break
    restored = callbacks.on_train_end(ts, book.data)   # EarlyStopping(restore_best=True) returns its best state
    ts = ts if restored is None else restored
    return Outcome(ts, book.data, stopped, trained_until, bad_epoch, reports)
