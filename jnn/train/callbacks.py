"""Per-epoch callbacks for :func:`jnn.train.fit`: history files, TensorBoard, early stopping, your own.

``fit(..., callbacks=[...])`` calls each after every epoch, in order: a function ``fn(epoch,
train_state, logs)`` or an object with ``on_epoch_end`` (optionally ``on_train_begin(train_state)``
and ``on_train_end(train_state, history)``, whose returned state replaces ``fit``'s). **Returning
True stops training** (a bool, NumPy's and JAX's too; None or False goes on; anything else is a
TypeError). For :func:`jnn.train.fit_population`: ``on_population_epoch_end(epoch, states, logs,
trained)``, returning a bool ``[N]`` of members to stop. Built in: :class:`HistoryFile`,
:class:`TensorBoard`, :class:`EarlyStopping`, :class:`jnn.train.NonFinite`, ``Checkpointer.save_every(k)``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks
from jnn import io as _io
from jnn.io import atomic_write

MODE = checks.satisfies(lambda v: v in ("min", "max", "auto"), "'min', 'max' or 'auto'")   # EarlyStopping, PBT

__all__ = ["select_members", "Callback", "CallbackList", "HistoryFile", "TensorBoard", "EarlyStopping"]


class Callback:
    """Base class; override what you need. ``on_epoch_end`` returning True stops training.

    Example:
      >>> import jax, optax, jnn
      >>> class StopAtTwo(jnn.train.callbacks.Callback):
      ...     def on_epoch_end(self, epoch, train_state, logs):
      ...         return epoch == 2
      >>> result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.data.xor(), key=jax.random.key(0),
      ...                        epochs=5, batch_size=4, metrics={}, verbose=0, callbacks=[StopAtTwo()])
      >>> result.history["epoch"], result.stopped_early
      ([1, 2], True)
    """

    def on_train_begin(self, train_state) -> None:
        return None

    def on_epoch_end(self, epoch: int, train_state, logs: dict) -> bool | None:
        return None

    def on_train_end(self, train_state, history: dict):
        return None


class HistoryFile(Callback):
    """Writes the history so far to a new file ``path`` (``.csv`` or ``.jsonl``) after every epoch,
    atomically (process 0 only).

    Example:
      >>> import os, tempfile, jnn
      >>> path = os.path.join(tempfile.mkdtemp(), "history.csv")
      >>> history = jnn.train.callbacks.HistoryFile(path)
      >>> history.on_epoch_end(1, None, {"loss": 0.5})
      >>> history.on_epoch_end(2, None, {"loss": 0.25})
      >>> print(open(path).read().strip())
      epoch,loss
      1,0.5
      2,0.25
    """

    def __init__(self, path):
        self.path = checks.new_file("HistoryFile", "path", path, (".csv", ".jsonl"))
        self._started, self._history = False, {}

    def write(self, history: dict[str, list]) -> None:
        keys = list(history)
        rows = [dict(zip(keys, values)) for values in zip(*history.values())]
        if self.path.suffix == ".jsonl":
            text = "".join(json.dumps(row) + "\n" for row in rows)
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            text = buffer.getvalue()
        atomic_write(self.path, text, overwrite=self._started)
        self._started = True

    def on_epoch_end(self, epoch, train_state, logs):
        for k, v in {"epoch": epoch, **logs}.items():
            self._history.setdefault(k, []).append(v)
        if jax.process_index() == 0:
            self.write(self._history)


class CallbackList:
    """The callbacks of one run, in order: functions ``(epoch, train_state, logs)`` or objects
    with ``on_epoch_end``; for a population (``members=N``) objects with
    ``on_population_epoch_end(epoch, states, logs, trained)``.

    Example:
      >>> import jnn
      >>> callbacks = jnn.train.callbacks.CallbackList([lambda epoch, ts, logs: epoch >= 2, print])
      >>> len(callbacks.items), bool(callbacks.on_epoch_end(1, None, {})), bool(callbacks.on_epoch_end(2, None, {}))
      1 None {}
      2 None {}
      (2, False, True)
    """

    def __init__(self, callbacks: Sequence = (), *, members: int | None = None, where: str = "fit"):
        self.items, self.members, self.where = list(callbacks), members, where
        checks.callbacks(where, self.items, population=members is not None)

    def on_train_begin(self, train_state) -> None:
        for cb in self.items:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(train_state)

    def on_epoch_end(self, epoch: int, train_state, logs: dict, trained=True):
        """Runs every callback (all of them, even after one asks to stop): whether any asked
        (a bool ``[N]`` for a population: the members asked to stop)."""
        stop = np.zeros(() if self.members is None else (self.members,), bool)
        for cb in self.items:
            if self.members is not None:
                asked = cb.on_population_epoch_end(epoch, train_state, dict(logs), trained)
            else:
                asked = getattr(cb, "on_epoch_end", cb)(epoch, train_state, dict(logs)) if trained else None
            stop |= checks.stop_answer(self.where, cb, asked, stop.shape)
        return stop

    def on_train_end(self, train_state, history: dict):
        """Runs every ``on_train_end``; returns the train state the last one returned, else None."""
        replaced = None
        for cb in self.items:
            if hasattr(cb, "on_train_end"):
                out = checks.returned_state(self.where, cb, cb.on_train_end(train_state, history), train_state)
                replaced = out if out is not None else replaced
        return replaced


class TensorBoard(Callback):
    """TensorBoard event files in ``logdir`` through ``tensorboardX`` (``pip install jnn[logs]``).

    Every epoch: each numeric log as a scalar (``loss``, ``val_accuracy``, ``lr``; or
    ``learning_rate(step)``, an optax schedule, as ``lr``). Every ``histograms_every`` epochs: each
    param (``weights/<path>``) and, given ``model``, ``loss`` and ``probe = (x, y)``, its eval-mode
    gradient on the probe (``grads/<path>``) and norms (``grad_norm/<path>``, ``grad_norm/global``).
    A population member is its own run, ``<logdir>/member_<i>``. A hand-written loop calls :meth:`log`.

    Example:
      >>> import os, tempfile, jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model, loss = jnn.dense(1), jnn.losses.mse
      >>> logdir = tempfile.mkdtemp()
      >>> tb = jnn.train.callbacks.TensorBoard(logdir, histograms_every=1, model=model, loss=loss, probe=(x, y))
      >>> _ = jnn.train.fit(model, loss, optax.sgd(0.1), (x, y), key=jax.random.key(0), epochs=2, verbose=0,
      ...                   callbacks=[tb])
      >>> any(name.startswith("events.out.tfevents") for name in os.listdir(logdir))
      True
    """

    @checks.declare_as("TensorBoard", histograms_every=checks.int_at_least(0))
    def __init__(self, logdir, *, histograms_every: int = 0, learning_rate: Callable | None = None,
                 model=None, loss=None, probe=None):
        try:
            import tensorboardX
        except ImportError as e:
            raise ImportError("TensorBoard needs tensorboardX: pip install 'jnn[logs]'") from e
        if (model is None) != (loss is None) or (model is None) != (probe is None):
            raise ValueError("TensorBoard: pass model, loss and probe together (for gradient histograms), or none")
        self.logdir, self.every, self.learning_rate = pathlib.Path(logdir), histograms_every, learning_rate
        self._new_writer = lambda d: tensorboardX.SummaryWriter(str(d))
        self._writers: dict[Any, Any] = {}
        self._grads = None
        if model is not None:
            def data_loss(params, state, x, y):
                return loss(model.apply(params, state, x, train=False)[0].astype(jnp.float32), y)
            grad = jax.jit(jax.grad(data_loss))
            self._grads = lambda params, state: grad(params, state, *probe)

    def _writer(self, member=None):
        if member not in self._writers:
            self._writers[member] = self._new_writer(
                self.logdir if member is None else self.logdir / f"member_{member}")
        return self._writers[member]

    def log(self, step: int, scalars: dict, *, member=None) -> None:
        """Writes each finite scalar of ``scalars`` (``{name: number or 0-d array}``) at ``step``: the
        logging API of a hand-written loop (call :meth:`close` at its end).

        Example:
          >>> import tempfile, jax.numpy as jnp, jnn
          >>> tb = jnn.train.callbacks.TensorBoard(tempfile.mkdtemp())
          >>> tb.log(1, {"loss": jnp.float32(0.5), "note": "skipped"}); tb.close()
        """
        writer = self._writer(member)
        for k, v in scalars.items():
            if isinstance(v, (int, float, np.number, np.ndarray, jax.Array)) and np.ndim(v) == 0 and np.isfinite(v):
                writer.add_scalar(k, float(v), step)
        writer.flush()

    def _log(self, member, epoch, train_state, logs):
        lr = {} if self.learning_rate is None or "lr" in logs else {"lr": self.learning_rate(train_state.step)}
        self.log(epoch, {**logs, **lr}, member=member)
        writer = self._writer(member)
        if self.every and epoch % self.every == 0:
            for path, w in _io.flatten(train_state.params).items():
                writer.add_histogram(f"weights/{path}", w.astype(np.float32), epoch)
            if self._grads is not None:
                grads = _io.flatten(self._grads(train_state.params, train_state.state))
                for path, g in grads.items():
                    writer.add_histogram(f"grads/{path}", g.astype(np.float32), epoch)
                    writer.add_scalar(f"grad_norm/{path}", float(np.linalg.norm(g)), epoch)
                total = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))
                writer.add_scalar("grad_norm/global", total, epoch)
        writer.flush()

    def on_epoch_end(self, epoch, train_state, logs):
        self._log(None, epoch, train_state, logs)

    def on_population_epoch_end(self, epoch: int, states, logs: dict, trained) -> None:
        """For :func:`jnn.train.fit_population`: ``states`` batched over members, ``logs``
        ``{name: [N]}``, ``trained`` the members that trained this epoch."""
        for i in np.flatnonzero(np.asarray(trained)):
            member = jax.tree_util.tree_map(lambda a: a[i], states)
            self._log(int(i), epoch, member, {k: float(v[i]) for k, v in logs.items()})

    def on_train_end(self, train_state, history):
        self.close()

    def close(self) -> None:
        """Closes the event files (a later :meth:`log` opens new ones)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


@jax.jit
def select_members(keep, new, old):
    """Per member (leading axis): ``new`` where ``keep`` else ``old``.

    Example:
      >>> import jax.numpy as jnp
      >>> select_members(jnp.array([True, False]), {"w": jnp.ones((2, 3))}, {"w": jnp.zeros((2, 3))})["w"].sum(1)
      Array([3., 0.], dtype=float32)
    """
    pick = lambda k, a, b: jnp.where(k, a, b)
    return jax.vmap(lambda k, n, o: jax.tree_util.tree_map(lambda a, b: pick(k, a, b), n, o))(keep, new, old)


_EARLY_STOPPING = dict(  # EarlyStopping's fields and their rules
    monitor=checks.satisfies(lambda v: isinstance(v, str), "a metric name (str)", TypeError), mode=MODE,
    patience=checks.int_at_least(1),
    min_delta=checks.satisfies(lambda v: checks.is_real(v) and 0 <= v < math.inf, "a finite number >= 0"),
    restore_best=checks.flag)


@dataclasses.dataclass(eq=False)
class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved (finite, better than the best by more than
    ``min_delta``) for ``patience`` epochs in a row; ``fit(early_stopping=...)`` adds it to the
    callbacks. With ``restore_best``, ``fit`` returns the best epoch's state (the starting state
    when none improved). Population members are judged and stopped one by one.

    Attributes:
      monitor: a history key, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      mode: ``"min"``, ``"max"``, or ``"auto"`` (max for names containing "acc", else min).
      patience: epochs without improvement before stopping (>= 1).
      min_delta: the smallest change that counts as an improvement (>= 0).
      restore_best: return the params/state of the best epoch rather than the last.

    After a run, ``best_epoch`` is the 1-based best epoch (``0``: none; ``[N]`` for a population)
    and ``best`` its value; both reset when a run begins.

    Example:
      >>> import jax, optax, jnn
      >>> es = jnn.train.EarlyStopping(monitor="val_accuracy", patience=2)
      >>> es.maximize, es.improved(0.9, best=0.8), es.improved(0.7, best=0.8)
      (True, True, False)
      >>> result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(-0.1), jnn.data.xor(), key=jax.random.key(0),
      ...                        epochs=10, batch_size=4, metrics={}, verbose=0,   # gradient ascent: the loss rises
      ...                        callbacks=[jnn.train.EarlyStopping(monitor="loss", patience=2)])
      >>> result.history["epoch"], result.best_epoch, result.stopped_early, int(result.train_state.step)
      ([1, 2, 3], 1, True, 1)
    """

    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self):
        checks.fields("EarlyStopping", self, **_EARLY_STOPPING)
        self.on_train_begin(None)

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)

    def improved(self, value, best):
        """Whether ``value`` beats ``best`` (``None`` or NaN: nothing yet) by more than ``min_delta``."""
        best = np.nan if best is None else best
        beats = value > best + self.min_delta if self.maximize else value < best - self.min_delta
        out = np.isfinite(value) & (np.isnan(best) | beats)
        return bool(out) if np.ndim(out) == 0 else out

    def on_train_begin(self, train_state) -> None:
        self.best, self.best_epoch, self.wait, self.best_state = None, 0, 0, train_state

    def _judge(self, epoch: int, logs: dict, trained):
        """The decision, elementwise over members: ``(improved, stop)``."""
        checks.logged_metric("EarlyStopping", "monitors", self.monitor, logs)
        value = np.asarray(logs[self.monitor], np.float64)
        best = np.full(value.shape, np.nan) if self.best is None else self.best
        better = trained & self.improved(value, best)
        self.best = np.where(better, value, best)
        self.best_epoch = np.where(better, epoch, self.best_epoch)
        self.wait = np.where(better, 0, np.where(trained, self.wait + 1, self.wait))
        return better, trained & (self.wait >= self.patience)

    def on_epoch_end(self, epoch, train_state, logs):
        better, stop = self._judge(epoch, logs, True)
        if better and self.restore_best:
            self.best_state = train_state
        return bool(stop)

    def on_population_epoch_end(self, epoch, states, logs, trained):
        """Each member judged on its own; returns the members to stop (bool ``[N]``)."""
        better, stop = self._judge(epoch, logs, np.asarray(trained, bool))
        if self.restore_best and better.any():
            self.best_state = select_members(jnp.asarray(better), states, self.best_state)
        return stop

    def on_train_end(self, train_state, history):
        return self.best_state if self.restore_best else None
