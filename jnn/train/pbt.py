"""Population-based training (Jaderberg et al., 2017) inside the compiled population epoch.

Every ``interval`` epochs the worst ``fraction`` of the members copy the states of members drawn
from the best (exploit) and perturb the hyperparameters they copied (explore):
:func:`exploit_explore`, run by :func:`fit_pbt` inside the jitted epoch; nothing is read back
until training ends. A member never exploited trains exactly as it would without PBT.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import _checks
from jnn.train import guard
from jnn.train.callbacks import MODE
from jnn.train.engine import learning_rate, prepare
from jnn.train.population import (MakeModel, MakeOptimizer, as_keys, check_hparams, jit_epoch_order, Program,
                                  init_population, make_population_epoch,
                                  shared_order_key, population_eval)
from jnn.train.step import LossFn, Metrics, TrainState

__all__ = ["PBT", "PBTResult", "exploit_explore", "explore_key", "fit_pbt"]


@dataclasses.dataclass(frozen=True)
class PBT:
    """Options of population-based training.

    Attributes:
      space: ``{name: (low, high)}`` or ``{name: (low, high, "log")}``: the explored
        hyperparameters and their bounds (values are clipped to them); others are copied.
      interval: epochs between exploit/explore steps (never after the last epoch).
      fraction: the worst ``floor(fraction * N)`` members (at least one) copy from members drawn
        from the best as many; in ``(0, 0.5]``.
      monitor, mode: the logged metric to rank by (NaN last); ``"max"``, ``"min"`` or ``"auto"``.
      factors, resample_probability: explore by multiplying by one of ``factors``, or with this
        probability draw a new value from ``space``.

    Example:
      >>> from jnn.train.pbt import PBT
      >>> pbt = PBT(space={"lr": (1e-4, 1.0, "log")}, interval=2, monitor="val_loss")
      >>> pbt.exploited(8), pbt.maximize
      (2, False)
    """

    space: Any
    interval: int = 4
    fraction: float = 0.25
    monitor: str = "val_accuracy"
    mode: str = "auto"
    factors: tuple = (0.8, 1.2)
    resample_probability: float = 0.0

    def __post_init__(self):
        for what, rule in _RULES.items():
            object.__setattr__(self, what, rule("PBT", what, getattr(self, what)))

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)

    def exploited(self, n: int) -> int:
        """How many members are replaced per step in a population of ``n`` (0 when ``n < 2``)."""
        return 0 if n < 2 else max(1, int(self.fraction * n))


_RULES = dict(  # PBT's fields, checked (and normalized) in this order
    space=_checks.bounds_space, interval=_checks.positive_int,
    fraction=_checks.satisfies(lambda v: _checks.is_real(v) and 0 < v <= 0.5, "a number in (0, 0.5]"),
    monitor=_checks.satisfies(lambda v: isinstance(v, str) and v, "the name of a logged metric (a string)"),
    mode=MODE,
    factors=_checks.all_of(_checks.satisfies(lambda fs: isinstance(fs, (tuple, list)) and fs and all(
        _checks.is_real(f) and math.isfinite(f) and f > 0 for f in fs), "a non-empty tuple of positive finite numbers"),
        lambda label, what, fs: tuple(float(f) for f in fs)),
    resample_probability=_checks.satisfies(lambda v: _checks.is_real(v) and 0 <= v <= 1, "a number in [0, 1]"))


class PBTResult(NamedTuple):
    """What :func:`fit_pbt` returns.

    Attributes:
      train_states, history, keys: as in :class:`jnn.train.PopulationResult`.
      hparam_history: ``{name: [epochs, N]}``, the value each member trained with per epoch.
      hparams: ``{name: [N]}``, the values after the last epoch.
      lineage: ``int [steps, N]``: after step ``s``, member ``i`` continued from ``lineage[s, i]``.
      lineage_epochs: ``int [steps]``, the epoch after which each step ran.

    Example:
      >>> from jnn.train.pbt import PBTResult
      >>> PBTResult._fields[:3]
      ('train_states', 'history', 'hparam_history')
    """

    train_states: TrainState
    history: dict[str, np.ndarray]
    hparam_history: dict[str, np.ndarray]
    hparams: dict[str, np.ndarray]
    lineage: np.ndarray
    lineage_epochs: np.ndarray
    keys: jax.Array


def _refresh_hyperparams(opt_state, fresh):
    """``opt_state`` with its ``inject_hyperparams`` values taken from ``fresh``."""
    injected = lambda s: hasattr(s, "hyperparams") and hasattr(s, "_replace")
    return jax.tree_util.tree_map(lambda old, new: old._replace(hyperparams=new.hyperparams) if injected(old) else old,
                                  opt_state, fresh, is_leaf=injected)


def _explore(pbt: PBT, hparams, key):
    """Each explored hyperparameter perturbed by a random factor (or resampled), within bounds."""
    out = dict(hparams)
    for (name, (low, high, log)), k in zip(pbt.space, jax.random.split(key, len(pbt.space))):
        value = hparams[name]
        k_factor, k_coin, k_draw = jax.random.split(k, 3)
        factors = jnp.asarray(pbt.factors, value.dtype)
        perturbed = value * factors[jax.random.randint(k_factor, value.shape, 0, len(pbt.factors))]
        u = jax.random.uniform(k_draw, value.shape, value.dtype)
        drawn = jnp.exp(jnp.log(low) + u * (jnp.log(high) - jnp.log(low))) if log else low + u * (high - low)
        resample = jax.random.uniform(k_coin, value.shape) < pbt.resample_probability
        out[name] = jnp.clip(jnp.where(resample, drawn, perturbed), low, high).astype(value.dtype)
    return out


@_checks.declare(states=_checks.instance_of(TrainState, described="the members' stacked jnn.train.TrainState"))
def exploit_explore(pbt: PBT, hparams, states: TrainState, scores: jax.Array, key: jax.Array, *,
                    make_optimizer: MakeOptimizer | None = None):
    """One PBT step, pure and jittable (``pbt`` static): ``(hparams, states, source [N])``. Ranked by
    ``scores [N]`` (NaN last), each of the worst ``pbt.exploited(N)`` copies state (not its key) and
    hyperparameters from one of the best, then explores; ``source``: whom each continues from. With
    ``make_optimizer``, copied optimizer states get ``make_optimizer(new_hp)``'s injected values.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> from jnn.train.pbt import PBT, exploit_explore
      >>> states = jax.vmap(lambda k: jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), k, jnp.zeros((1, 2))))(
      ...     jax.random.split(jax.random.key(0), 4))
      >>> hparams = {"lr": jnp.array([0.1, 0.2, 0.3, 0.4])}
      >>> pbt = PBT(space={"lr": (1e-3, 1.0)}, monitor="loss")
      >>> new_hp, new_states, source = exploit_explore(pbt, hparams, states, jnp.array([4.0, 1.0, 2.0, 3.0]),
      ...                                              jax.random.key(1))
      >>> source.tolist()                                    # the worst (loss 4.0) continues from the best
      [1, 1, 2, 3]
    """
    _checks.among("exploit_explore", "PBT space names", [name for name, _ in pbt.space], hparams, "hparams")
    n = jax.tree_util.tree_leaves(hparams)[0].shape[0] if hparams else jnp.shape(scores)[0]
    _checks.require(jnp.shape(scores) == (n,), "exploit_explore", f"scores must hold one value per member, "
                    f"shape ({n},), got shape {tuple(jnp.shape(scores))}")
    m = pbt.exploited(n)
    index = jnp.arange(n, dtype=jnp.int32)
    if m == 0:
        return dict(hparams), states, index
    goodness = scores if pbt.maximize else -scores
    rank = jnp.argsort(-jnp.where(jnp.isnan(goodness), -jnp.inf, goodness), stable=True)  # best first
    k_pick, k_explore = jax.random.split(key)
    donors = rank[:m][jax.random.randint(k_pick, (m,), 0, m)]
    source = index.at[rank[n - m:]].set(donors.astype(jnp.int32))
    copied = source != index
    take = lambda a: a[source]
    new = TrainState(*(jax.tree_util.tree_map(take, part) for part in states[:4]), states.key)
    inherited = {k: take(v) for k, v in hparams.items()}
    explored = _explore(pbt, inherited, k_explore)
    new_hparams = {k: jnp.where(copied, explored[k], inherited[k]) for k in hparams}
    if make_optimizer is not None:
        fresh = jax.vmap(lambda hp, p: make_optimizer(hp).init(p))(new_hparams, new.params)
        refreshed = _refresh_hyperparams(new.opt_state, fresh)
        pick = lambda a, b: jnp.where(copied.reshape(-1, *[1] * (a.ndim - 1)), a, b)
        new = new._replace(opt_state=jax.tree_util.tree_map(pick, refreshed, new.opt_state))
    return new_hparams, new, source


def explore_key(keys: jax.Array, epoch: int) -> jax.Array:
    """The key of the exploit/explore step after epoch ``epoch``, apart from the members' other keys.

    Example:
      >>> import jax
      >>> from jnn.train.pbt import explore_key
      >>> keys = jax.random.split(jax.random.key(0), 4)
      >>> bool((jax.random.key_data(explore_key(keys, 1)) != jax.random.key_data(explore_key(keys, 2))).any())
      True
    """
    return jax.random.fold_in(jax.random.fold_in(keys[0], 0x9B7), epoch)


@partial(jax.jit, static_argnums=(0, 1))
def _pbt_epoch(program: Program, pbt: PBT, hparams, states, data, order, val_data, key, exploit_now):
    epoch = make_population_epoch(program.make_model, program.loss, program.make_optimizer,
                                  program.num_examples, program.batch_size, metrics=dict(program.metrics),
                                  regularizer=program.regularizer, chunk_size=program.chunk_size)
    n = jax.tree_util.tree_leaves(hparams)[0].shape[0]
    states, logs = epoch(hparams, states, jnp.ones(n, bool), data, order)
    if val_data is not None:
        logs.update({f"val_{k}": v for k, v in population_eval(program, hparams, states, val_data).items()})
    lr = learning_rate(states.opt_state)
    if lr is not None:
        logs["lr"] = lr
    step = partial(exploit_explore, pbt, scores=logs[pbt.monitor], key=key, make_optimizer=program.make_optimizer)
    skip = lambda hp, ts: (dict(hp), ts, jnp.arange(n, dtype=jnp.int32))
    new_hparams, states, source = jax.lax.cond(exploit_now, lambda a: step(*a), lambda a: skip(*a), (hparams, states))
    return new_hparams, states, logs, source


@_checks.declare(pbt=_checks.instance_of(PBT, described="a jnn.train.pbt.PBT"), epochs=_checks.positive_int,
                 chunk_size=_checks.positive_int_or(None), shared_order=_checks.flag,
                 **guard.parts("make_model", "make_optimizer", "loss", "metrics", "regularizer"))
def fit_pbt(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer, train_data, *,
            hparams: Mapping[str, jax.Array], key: jax.Array, pbt: PBT, epochs: int = 10,
            batch_size: int = 128, val_data=None, val_split: float = 0.0, metrics: Metrics | None = None,
            regularizer: Callable | None = None, eval_batch_size: int = 1000, chunk_size: int | None = None,
            shared_order: bool = False) -> PBTResult:
    """Trains a population with PBT, one jitted program call per epoch; arguments as for
    :func:`jnn.train.fit_population` (no early stopping) plus ``pbt``; ``hparams`` needs a float
    array ``[N]`` per name in ``pbt.space``. A member whose score goes NaN ranks last.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> from jnn.train.pbt import PBT, fit_pbt
      >>> make_model = lambda hp: jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
      >>> make_opt = lambda hp: optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])
      >>> pbt = PBT(space={"lr": (1e-3, 1.0, "log")}, interval=5, monitor="loss")
      >>> result = fit_pbt(make_model, jnn.losses.binary_cross_entropy_with_logits, make_opt, jnn.data.xor(),
      ...                  hparams={"lr": jnp.array([1e-3, 1e-3, 0.3, 0.3])}, key=jax.random.key(0),
      ...                  pbt=pbt, epochs=20, batch_size=4, metrics={})
      >>> result.lineage.shape, bool(result.hparam_history["lr"].min() >= 1e-3)
      ((3, 4), True)
    """
    hparams, n = check_hparams("fit_pbt", hparams)
    keys = as_keys("fit_pbt", key, n)
    _checks.within_space("fit_pbt", "hparams", hparams, pbt.space)
    metrics = guard.default_metrics(loss) if metrics is None else dict(metrics)
    (x, y), val_data = prepare("fit_pbt", train_data, val_data, val_split, jax.random.split(keys[0])[1],
                               batch_size=batch_size, eval_batch_size=eval_batch_size)
    names = ["loss", *metrics] + ([f"val_{k}" for k in ["loss", *metrics]] if val_data is not None else [])
    _checks.logged_metric("fit_pbt", "PBT monitors", pbt.monitor, names)
    if pbt.interval >= epochs or pbt.exploited(len(keys)) == 0:
        why = (f"PBT(interval={pbt.interval}) never exploits with epochs={epochs}: a step runs after epochs "
               f"{pbt.interval}, {2 * pbt.interval}, ... but never after the last; use an interval below epochs"
               if len(keys) > 1 else "PBT never exploits a population of 1 member; it needs at least 2")
        warnings.warn(f"fit_pbt: {why}", stacklevel=3)   # at the caller's line (through checks.declare)
    batch_size = min(batch_size, len(x))
    example = jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype)
    states = init_population(make_model, make_optimizer, hparams, keys, example)
    program = Program(make_model, loss, make_optimizer, tuple(metrics.items()), regularizer, len(x),
                       batch_size, eval_batch_size, chunk_size)
    if val_data is not None:  # traced, not run: a misfit fails before the first step
        guard.check_val_data("fit_pbt", (x, y), val_data, lambda v: jax.eval_shape(
            population_eval, program, hparams, states, v))
    logs_per_epoch, hparams_per_epoch, lineage, lineage_epochs = [], [], [], []
    for epoch in range(1, epochs + 1):  # nothing here reads a device value back
        order = jit_epoch_order(shared_order_key(keys, epoch), len(x), batch_size) if shared_order else None
        exploit_now = epoch % pbt.interval == 0 and epoch < epochs
        hparams_per_epoch.append(hparams)
        hparams, states, logs, source = _pbt_epoch(program, pbt, hparams, states, (x, y), order, val_data,
                                                   explore_key(keys, epoch), exploit_now)
        logs_per_epoch.append(logs)
        if exploit_now:
            lineage.append(source)
            lineage_epochs.append(epoch)
    stack = lambda trees: {k: np.asarray(jnp.stack([t[k] for t in trees]), np.float64) for k in trees[0]}
    lineage = np.asarray(jnp.stack(lineage)) if lineage else np.zeros((0, n), np.int32)
    return PBTResult(states, stack(logs_per_epoch), stack(hparams_per_epoch),
                     {k: np.asarray(v) for k, v in hparams.items()}, lineage, np.asarray(lineage_epochs, int), keys)
