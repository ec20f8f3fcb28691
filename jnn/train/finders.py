"""A learning-rate finder (K rates trained as one population) and a batch-size finder (compiled
memory analysis on abstract shapes, nothing executed).

Example:
  >>> import jax, optax, jnn
  >>> x, y = jnn.data.xor()
  >>> model = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
  >>> found = jnn.train.lr_find(model, jnn.losses.mse, optax.sgd, (x, y), key=jax.random.key(0),
  ...                           min_lr=1e-3, max_lr=1.0, num=4, epochs=20, batch_size=4, metrics={})
  >>> found.lrs.round(3).tolist(), found.losses.shape
  ([0.001, 0.01, 0.1, 1.0], (4,))
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks
from jnn.core import Layer
from jnn.train import guard
from jnn.train.population import PopulationResult, fit_population
from jnn.train.step import LossFn, init_train_state, make_train_step

__all__ = ["LRFinder", "lr_find", "step_bytes", "BatchSizeFound", "find_batch_size"]


class LRFinder(NamedTuple):
    """What :func:`lr_find` returns.

    Attributes:
      lrs: the learning rates, ``[K]`` log-spaced.
      losses: each rate's final ``monitor`` value ``[K]`` (``inf`` where the run went non-finite).
      suggestion: the rule's pick (see :func:`lr_find`).
      population: the :class:`jnn.train.PopulationResult` of the K runs.

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> found = jnn.train.lr_find(jnn.dense(1), jnn.losses.mse, optax.sgd, (x, y), key=jax.random.key(0),
      ...                           num=3, batch_size=4, metrics={})
      >>> found.population.history["loss"].shape, bool(found.lrs[found.losses.argmin()] >= found.suggestion)
      ((1, 3), True)
    """

    lrs: np.ndarray
    losses: np.ndarray
    suggestion: float
    population: PopulationResult

    def plot(self, ax=None):
        """The loss-vs-learning-rate curve (log x; log y for positive losses), the suggestion marked
        (needs matplotlib); returns the axes."""
        if ax is None:
            import matplotlib.pyplot as plt
            ax = plt.subplots(figsize=(5, 3.5))[1]
        finite = np.isfinite(self.losses)
        ax.semilogx(self.lrs[finite], self.losses[finite], "o-")
        ax.axvline(self.suggestion, color="C1", ls="--", label=f"suggested {self.suggestion:.2g}")
        ax.set(xlabel="learning rate", ylabel="final loss",
               yscale="log" if (self.losses[finite] > 0).all() else "linear")
        ax.legend()
        return ax


class _WithLR(NamedTuple):  # hp -> make_optimizer(hp["lr"]); hashable, so runs share compiled code
    make_optimizer: Callable

    def __call__(self, hp):
        return self.make_optimizer(hp["lr"])


class _Fixed(NamedTuple):  # hp -> model
    model: Layer

    def __call__(self, hp):
        return self.model

    def __hash__(self):
        return id(self.model)

    def __eq__(self, other):
        return isinstance(other, _Fixed) and other.model is self.model


@checks.declare(num=checks.int_at_least(2), epochs=checks.positive_int, tolerance=checks.finite_at_least(0.0),
                min_lr=checks.above(0.0), max_lr=checks.above(0.0), key=guard.prng_key,
                **guard.parts("model", "make_optimizer"))
def lr_find(model: Layer, loss: LossFn, make_optimizer: Callable, train_data, *, key: jax.Array,
            min_lr: float = 1e-5, max_lr: float = 1.0, num: int = 16, epochs: int = 1, monitor: str = "loss",
            tolerance: float = 0.1, **fit_kwargs) -> LRFinder:
    """Trains ``model`` with ``num`` log-spaced learning rates in ``[min_lr, max_lr]`` as one
    population (:func:`jnn.train.fit_population`: vmapped; one after another, stepwise, for conv
    nets on CPU, or as ``members=`` says) for ``epochs`` epochs.

    Every member starts from the same ``key``: member ``i`` equals ``fit(model, loss,
    make_optimizer(lrs[i]), train_data, key=key, epochs=epochs, ...)``.

    Rule: the suggestion is the smallest learning rate whose final ``monitor`` value is within
    ``tolerance`` (relative) of the lowest one, ``loss <= min + tolerance * |min|``: the low edge
    of the best valley, away from where training diverges. Members that go non-finite stop
    there (no warning) and count as ``inf``.

    Args:
      model, loss, train_data: as for :func:`jnn.train.fit`.
      make_optimizer: ``lr -> optax optimizer``, e.g. ``optax.adam`` (``lr`` is a traced scalar).
      key: one PRNG key, shared by every member.
      monitor: the metric read at the last epoch (``"val_loss"`` with ``val_data``).
      fit_kwargs: ``batch_size``, ``val_data``, ``metrics``, ``members``, ... for :func:`jnn.train.fit_population`.

    Returns:
      An :class:`LRFinder`; ``.plot()`` draws the curve.

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> found = jnn.train.lr_find(jnn.dense(1), jnn.losses.mse, optax.sgd, (x, y), key=jax.random.key(0),
      ...                           min_lr=0.01, max_lr=100.0, num=5, epochs=20, batch_size=4, metrics={})
      >>> found.losses[[0, 1, 4]].round(2).tolist(), found.suggestion      # lr 100 diverges
      ([0.8, 0.27, inf], 0.1)
    """
    checks.require(min_lr < max_lr, "lr_find", f"min_lr must be below max_lr, got {min_lr} and {max_lr}")
    checks.require(not str(monitor).startswith("val_") or fit_kwargs.get("val_data") is not None
                   or fit_kwargs.get("val_split"), "lr_find", f"monitor {monitor!r} needs val_data or val_split")
    lrs = np.geomspace(min_lr, max_lr, num)
    keys = checks.key_batch("lr_find", "key", jnp.stack([key] * num), num)
    with warnings.catch_warnings():   # diverging rates are expected: they show as inf
        warnings.filterwarnings("ignore", "fit_population: ", RuntimeWarning)
        result = fit_population(_Fixed(model), loss, _WithLR(make_optimizer), train_data, key=keys,
                                hparams={"lr": jnp.asarray(lrs, jnp.float32)}, epochs=epochs, **fit_kwargs)
    checks.logged_metric("lr_find", "monitor", monitor, result.history)
    last = result.history[monitor][result.epochs_trained - 1, np.arange(num)]
    losses = np.where((result.nonfinite_epoch > 0) | ~np.isfinite(last), np.inf, last)
    checks.require(np.isfinite(losses).any(), "lr_find", f"every learning rate went non-finite; lower "
                   f"max_lr (got min_lr={min_lr}, max_lr={max_lr})")
    best = losses.min()
    suggestion = lrs[np.flatnonzero(losses <= best + tolerance * abs(best))[0]]
    return LRFinder(lrs, losses, float(suggestion), result)


def _at_batch(example, batch: int):
    """``example``'s leaves as ShapeDtypeStructs with leading axis ``batch``."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch, *np.shape(a)[1:]), a.dtype), example)


def step_bytes(model: Layer, loss: LossFn, optimizer, example, batch_size: int, **step_kwargs) -> int:
    """Bytes of the compiled train step (:func:`jnn.train.make_train_step`) at ``batch_size``:
    temp + argument + output sizes from XLA's memory analysis of the program lowered on abstract
    shapes (no donation counted). Nothing is executed.

    ``example``: ``(x, y)`` arrays or ShapeDtypeStructs; only shapes after the first axis and
    dtypes are read.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> example = (jnp.zeros((1, 8)), jnp.zeros((1, 1)))
      >>> a, b = (step_bytes(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), example, n) for n in (16, 32))
      >>> a < b
      True
    """
    spec = jax.eval_shape(lambda k: init_train_state(model, optimizer, k, _at_batch(example[0], 1)),
                          jax.random.key(0))
    step = make_train_step(model, loss, optimizer, **step_kwargs)
    stats = jax.jit(step).lower(spec, _at_batch(tuple(example), batch_size)).compile().memory_analysis()
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)


class BatchSizeFound(NamedTuple):
    """What :func:`find_batch_size` returns: the batch size, its bytes, and every probe
    ``{batch_size: bytes}``.

    Example:
      >>> import jax.numpy as jnp, optax, jnn
      >>> found = jnn.train.find_batch_size(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1),
      ...                                   (jnp.zeros((1, 8)), jnp.zeros((1, 1))), budget=10**6, high=64)
      >>> found.batch_size, sorted(found.probes)
      (64, [1, 2, 4, 8, 16, 32, 64])
    """

    batch_size: int
    bytes: int
    probes: dict


@checks.declare(budget=checks.positive_int, low=checks.positive_int, high=checks.positive_int,
                multiple_of=checks.positive_int, **guard.parts("model", "optimizer", "loss"))
def find_batch_size(model: Layer, loss: LossFn, optimizer, example, *, budget: int, low: int = 1,
                    high: int = 65536, multiple_of: int = 1, **step_kwargs) -> BatchSizeFound:
    """The largest batch size in ``[low, high]`` (a multiple of ``multiple_of``) whose train
    step fits ``budget`` bytes (:func:`step_bytes`), nothing executed: sizes double from the
    smallest until one does not fit, then a binary search between the last two (memory is
    assumed to grow with the batch). Each probe compiles the step once.

    Example:
      >>> import jax.numpy as jnp, optax, jnn
      >>> example = (jnp.zeros((1, 8)), jnp.zeros((1, 1)))
      >>> found = find_batch_size(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), example, budget=2000)
      >>> found.batch_size, found.bytes <= 2000 < found.probes[found.batch_size + 1]
      (32, True)
    """
    probes = {}

    def fits(units: int) -> bool:
        size = units * multiple_of
        probes[size] = probes.get(size) or step_bytes(model, loss, optimizer, example, size, **step_kwargs)
        return probes[size] <= budget

    first, last = -(-low // multiple_of), high // multiple_of
    checks.require(first <= last, "find_batch_size", f"no multiple of {multiple_of} in [{low}, {high}]")
    checks.require(fits(first), "find_batch_size", f"batch size {first * multiple_of} needs "
                   f"{probes[first * multiple_of]} bytes, over the budget of {budget}")
    good, bad = first, last + 1
    while 2 * good < bad:
        if not fits(2 * good):
            bad = 2 * good
            break
        good *= 2
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return BatchSizeFound(good * multiple_of, probes[good * multiple_of], dict(sorted(probes.items())))
