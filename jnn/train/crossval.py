"""Cross-validation and seed variance in one program: configs x folds x seeds members trained as
one population (vmapped, or one after another for conv nets on CPU), with t-intervals and a paired
t-test (``scipy.stats``, which jax needs).

Example:
  >>> import jax, jax.numpy as jnp, optax, jnn
  >>> x = jax.random.normal(jax.random.key(1), (40, 3)); y = x @ jnp.ones((3, 1))
  >>> cv = jnn.train.cross_validate(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(hp["lr"]),
  ...                               (x, y), key=jax.random.key(0), folds=4, seeds=2,
  ...                               hparams={"lr": jnp.array([0.01, 0.1])}, epochs=5, batch_size=5)
  >>> cv.scores["val_loss"].shape, cv.compare("val_loss").mean < 0      # lr 0.1 has the lower loss
  ((2, 4, 2), True)
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks as checks
from jnn.train import guard
from jnn.train.callbacks import CallbackList
from jnn.train.engine import NonFinite, check_pair, run_epochs
from jnn.train.population import (MakeModel, MakeOptimizer, Program, as_keys, check_hparams, init_population,
                                  loop_members, loops_members, make_member_epoch)
from jnn.train.step import LossFn, Metrics, epoch_order, gather, make_eval_fn, num_examples_of

__all__ = ["Interval", "mean_interval", "paired_test", "CrossValidation", "cross_validate"]


class Interval(NamedTuple):
    """A mean with its two-sided confidence interval ``[low, high]`` over ``n`` values; from
    :func:`paired_test`, also the p-value of "mean difference = 0".

    Example:
      >>> import jnn
      >>> jnn.train.mean_interval([2.0, 2.0, 2.0])
      Interval(mean=2.0, low=2.0, high=2.0, n=3, p_value=nan)
    """

    mean: float
    low: float
    high: float
    n: int
    p_value: float = math.nan


def _t(values, confidence: float, test_ratio: float):
    """Mean, half-width, standard error and degrees of freedom of the t-interval."""
    from scipy import stats
    v = np.asarray(values, np.float64).ravel()
    checks.require(v.size >= 2, "mean_interval", f"needs at least 2 values, got {v.size}")
    se = math.sqrt(v.var(ddof=1) * (1 / v.size + test_ratio))
    return v.mean(), stats.t.ppf((1 + confidence) / 2, v.size - 1) * se, se, v.size - 1


@checks.declare(confidence=checks.satisfies(lambda c: 0 < c < 1, "in (0, 1)"),
                test_ratio=checks.finite_at_least(0.0))
def mean_interval(values, confidence: float = 0.95, *, test_ratio: float = 0.0) -> Interval:
    """Student-t interval of the mean of ``values`` (all of them, flattened, taken as independent):
    ``mean -+ t_{(1+confidence)/2, n-1} * s * sqrt(1/n + test_ratio)``, ``s`` the sample standard
    deviation. ``test_ratio = 0`` is the plain t-interval; cross-validation scores are correlated
    (their training sets overlap), and ``test_ratio = n_test / n_train`` is the Nadeau-Bengio
    correction, which widens the interval for it.

    Example:
      >>> [round(v, 3) for v in mean_interval([1.0, 2.0, 3.0])[:3]]      # 2 -+ 4.303 * 1 / sqrt(3)
      [2.0, -0.484, 4.484]
    """
    mean, half, _, _ = _t(values, confidence, test_ratio)
    return Interval(float(mean), float(mean - half), float(mean + half), int(np.size(values)))


@checks.declare(confidence=checks.satisfies(lambda c: 0 < c < 1, "in (0, 1)"),
                test_ratio=checks.finite_at_least(0.0))
def paired_test(a, b, confidence: float = 0.95, *, test_ratio: float = 0.0) -> Interval:
    """Paired t-test of ``b - a`` (same shapes, paired element by element, e.g. the same folds
    and seeds): the mean difference, its interval (as :func:`mean_interval`) and the two-sided
    p-value ``2 * (1 - T_{n-1}(|mean| / se))`` from ``scipy.stats.t``.

    Example:
      >>> r = paired_test([1.0, 2.0, 3.0, 4.0], [1.5, 2.4, 3.6, 4.5])
      >>> round(r.mean, 3), round(r.p_value, 4)
      (0.5, 0.0012)
    """
    from scipy import stats
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    checks.require(a.shape == b.shape, "paired_test", f"a and b must pair up (same shape), got {a.shape} and {b.shape}")
    mean, half, se, dof = _t(b - a, confidence, test_ratio)
    p = 2 * stats.t.sf(abs(mean) / se, dof) if se > 0 else float(mean == 0)
    return Interval(float(mean), float(mean - half), float(mean + half), int(a.size), float(p))


class CrossValidation(NamedTuple):
    """What :func:`cross_validate` returns; member ``(c, f, s)`` (config, fold, seed) is
    ``train_states[(c * folds + f) * seeds + s]``.

    Attributes:
      scores: ``{name: [configs, folds, seeds]}``, each logged metric after the last epoch
        (``val_*``: on the held-out fold; NaN for a member that went non-finite).
      history: ``{name: [epochs, configs, folds, seeds]}``.
      train_states: the final states, stacked ``[configs * folds * seeds]``.
      hparams: ``{name: [configs]}``.
      folds: ``int [folds, m]``, the held-out example indices of each fold.
      keys: the seed keys ``[seeds]``; member ``(c, f, s)`` trains with ``keys[s]``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> x = jnp.arange(12.0).reshape(6, 2); y = x[:, :1]
      >>> cv = jnn.train.cross_validate(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(0.01),
      ...                               (x, y), key=jax.random.key(0), folds=3, epochs=1, batch_size=2)
      >>> (train_x, _), (held_x, _) = cv.fold(0, (x, y))
      >>> train_x.shape, held_x.shape, cv.history["val_loss"].shape
      ((4, 2), (2, 2), (1, 1, 3, 1))
    """

    scores: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    train_states: Any
    hparams: dict[str, np.ndarray]
    folds: np.ndarray
    keys: jax.Array

    def interval(self, metric: str = "val_loss", config: int = 0, confidence: float = 0.95,
                 corrected: bool = False) -> Interval:
        """:func:`mean_interval` of a config's ``metric`` over its folds x seeds (``corrected``:
        with the Nadeau-Bengio ``test_ratio = 1 / (folds - 1)``)."""
        return mean_interval(self.scores[metric][config], confidence, test_ratio=self._ratio(corrected))

    def compare(self, metric: str = "val_loss", a: int = 0, b: int = 1, confidence: float = 0.95,
                corrected: bool = False) -> Interval:
        """:func:`paired_test` of config ``b`` against config ``a`` on ``metric``, paired by fold
        and seed (a positive mean: ``b`` scores higher)."""
        scores = self.scores[metric]
        return paired_test(scores[a], scores[b], confidence, test_ratio=self._ratio(corrected))

    def _ratio(self, corrected: bool) -> float:
        return 1 / (len(self.folds) - 1) if corrected else 0.0

    def fold(self, f: int, data):
        """``(train, held_out)`` of fold ``f``, each ``(x, y)``: member ``(c, f, s)`` equals
        ``fit(..., train, key=keys[s], val_data=held_out)``."""
        rest = np.concatenate([self.folds[j] for j in range(len(self.folds)) if j != f])
        x, y = check_pair("CrossValidation.fold", data)
        return (gather(x, rest), gather(y, rest)), (gather(x, self.folds[f]), gather(y, self.folds[f]))


@lru_cache(maxsize=64)
def _member_fn(program: Program):
    """One member's epoch on its own training indices, then its held-out fold's metrics, vmapped."""
    make_model, loss, metrics = program.make_model, program.loss, dict(program.metrics)
    n_train, batch_size = program.num_examples, program.batch_size
    member_epoch = make_member_epoch(make_model, loss, program.make_optimizer, n_train, batch_size, metrics=metrics,
                                     regularizer=program.regularizer)

    def member(hp, ts, active, train_idx, test_idx, data):
        order = train_idx[epoch_order(jax.random.split(ts.key)[1], n_train, batch_size)]   # fit's own shuffle
        ts, logs = member_epoch(hp, ts, active, data, order)
        evaluate = make_eval_fn(make_model(hp), loss, metrics=metrics, batch_size=program.eval_batch_size)
        held_out = evaluate(ts.params, ts.state, gather(data, test_idx), ts.step)
        return ts, {**logs, **{f"val_{k}": v for k, v in held_out.items()}}

    return jax.jit(jax.vmap(member, in_axes=(0, 0, 0, 0, 0, None)))


@checks.declare(folds=checks.int_at_least(2), seeds=checks.positive_int, epochs=checks.positive_int,
                batch_size=checks.positive_int, eval_batch_size=checks.positive_int, key=guard.prng_key,
                members=checks.one_of("vmap", "loop", "auto"),
                **guard.parts("make_model", "make_optimizer", "loss", "metrics", "regularizer"))
def cross_validate(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer, data, *, key: jax.Array,
                   folds: int = 5, seeds: int = 1, hparams=None, epochs: int = 10, batch_size: int = 128,
                   metrics: Metrics | None = None, regularizer: Callable | None = None,
                   eval_batch_size: int = 1000, members: str = "auto") -> CrossValidation:
    """k-fold cross-validation over ``seeds`` seeds (and configs), all members in one vmapped program
    (or one after another, stepwise: ``members``).

    ``data`` is shuffled with ``split(key)[0]`` and cut into ``folds`` equal folds (the
    ``n % folds`` left over are not used). Member ``(c, f, s)`` trains config ``c`` on every fold
    but ``f`` with seed key ``split(split(key)[1], seeds)[s]`` (the same for every fold and config,
    so configs pair up) and is evaluated on fold ``f`` after each epoch; it equals ``fit`` on that
    fold alone (see :meth:`CrossValidation.fold`). Non-finite members stop with a warning.

    Args:
      make_model, make_optimizer, loss, metrics, regularizer: as for :func:`jnn.train.fit_population`
        (default metrics: accuracy for the classification losses).
      data: ``(x, y)``.
      hparams: ``{name: array [configs]}``, one value per config (``None``: one config).
      epochs, batch_size, eval_batch_size: as for :func:`jnn.train.fit`.
      members: ``"vmap"``, ``"loop"`` or ``"auto"``, as for :func:`jnn.train.fit_population`.

    Returns:
      A :class:`CrossValidation`: ``.interval(metric)``, ``.compare(metric, a, b)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> x = jax.random.normal(jax.random.key(1), (30, 2)); y = x @ jnp.ones((2, 1))
      >>> cv = jnn.train.cross_validate(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(0.1),
      ...                               (x, y), key=jax.random.key(0), folds=3, seeds=2, epochs=2, batch_size=5)
      >>> cv.scores["val_loss"].shape, cv.folds.shape, cv.interval("val_loss").n
      ((1, 3, 2), (3, 10), 6)
    """
    x, y = check_pair("cross_validate data", data)
    n = num_examples_of(x)
    size = checks.int_at_least(1)("cross_validate", f"the fold size ({n} examples // {folds} folds)", n // folds)
    split_key, seed_key = jax.random.split(key)
    order = np.asarray(jax.random.permutation(split_key, n))[: size * folds].reshape(folds, size)
    train_idx = np.stack([np.concatenate([order[j] for j in range(folds) if j != f]) for f in range(folds)])
    hparams, configs = check_hparams("cross_validate", hparams)
    configs, count = configs or 1, (configs or 1) * folds * seeds
    member = np.arange(count)
    f_of, s_of, c_of = (member // seeds) % folds, member % seeds, member // (folds * seeds)
    seed_keys = as_keys("cross_validate", seed_key, seeds)
    keys, hp = seed_keys[s_of], {k: v[c_of] for k, v in hparams.items()}
    batch_size = min(batch_size, train_idx.shape[1])
    metrics = guard.default_metrics(loss) if metrics is None else dict(metrics)
    example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x)
    states = init_population(make_model, make_optimizer, hp, keys, example)
    program = Program(make_model, loss, make_optimizer, tuple(metrics.items()), regularizer, train_idx.shape[1],
                      batch_size, eval_batch_size, None)
    train_of, test_of = jnp.asarray(train_idx[f_of]), jnp.asarray(order[f_of])
    if loops_members(members, make_model, hp, jax.eval_shape(lambda: states), example):
        epoch = lambda ts, e, trained: loop_members(program, hp, ts, trained, (x, y), subsets=train_of, held_out=test_of)
    else:
        vmapped = _member_fn(program)
        epoch = lambda ts, e, trained: vmapped(hp, ts, jnp.asarray(trained), train_of, test_of, (x, y))
    run = run_epochs("cross_validate", states, epoch,
                     epochs=epochs, members=count, policy=NonFinite("stop"),
                     callbacks=CallbackList([], members=count, where="cross_validate"))
    history = {k: v.reshape(epochs, configs, folds, seeds) for k, v in run.history.items()}
    return CrossValidation({k: v[-1] for k, v in history.items()}, history, run.train_state,
                           {k: np.asarray(v) for k, v in hparams.items()}, order, seed_keys)
