"""Population training: N models trained at once, vectorized with ``jax.vmap`` in one program, or
(``members="loop"``) one after another, stepwise, where XLA runs vmapped convolutions slowly (CPU).

A member is a :class:`~jnn.train.TrainState` and a dict of scalar hyperparameters, traced into
``make_model(hp)`` and ``make_optimizer(hp)``: whatever accepts a traced scalar can differ per
member (:func:`jnn.train.search` groups the rest). A stopped member's state is frozen by ``jnp.where``.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn import _checks as checks
from jnn.core import Layer
from jnn.train import autoexec as _autoexec
from jnn.train import guard
from jnn.train.callbacks import CallbackList, EarlyStopping
from jnn.train.compiler import jit_outermost
from jnn.train.engine import (CALLBACK_RULES, NonFinite, learning_rate, prepare, run_epochs,
                              with_early_stopping)
from jnn.train.loop import fuses_by_default
from jnn.train.nonfinite import replay_members
from jnn.train.step import (LossFn, Metrics, TrainState, default_metrics, num_examples_of, init_train_state,
                            make_eval_fn, epoch_order, gather, make_train_epoch, make_train_step, shuffle_epoch)

__all__ = ["as_keys", "check_hparams", "jit_epoch_order", "Program", "population_eval", "population_epoch_jit", "MemberResult", "PopulationResult", "member_keys", "shared_order_key", "make_member_epoch",
           "make_population_epoch", "init_population", "loops_members", "loop_members", "fit_population"]

HParams = Mapping[str, jax.Array]
MakeModel = Callable[[HParams], Layer]
MakeOptimizer = Callable[[HParams], optax.GradientTransformation]


class MemberResult(NamedTuple):
    """One member (:meth:`PopulationResult.member`): a :class:`jnn.train.FitResult` plus key and hparams.

    Example:
      >>> import jax, optax, jnn
      >>> result = jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(0.1),
      ...                                   jnn.data.xor(), key=jax.random.split(jax.random.key(0), 2), epochs=2,
      ...                                   batch_size=4, metrics={})
      >>> result.member(1).history["loss"].shape, result.member(1).stopped_early
      ((2,), False)
    """

    train_state: TrainState
    history: dict[str, np.ndarray]
    best_epoch: int | None
    stopped_early: bool
    key: jax.Array
    hparams: dict[str, Any]
    nonfinite_epoch: int | None = None
    nonfinite_report: Any = None


class PopulationResult(NamedTuple):
    """What :func:`fit_population` returns; member ``i`` is ``result.member(i)``.

    Attributes:
      train_states: the members' final (or, with ``restore_best``, best) states, stacked ``[N, ...]``.
      history: ``{name: [epochs, N]}`` (loss, metrics, ``val_*``, ``lr``); NaN once a member stopped.
      best_epoch: ``int [N]``, early stopping's best epoch (0: none), or ``None`` without it.
      stopped_early, epochs_trained, hparams: ``bool [N]``, ``int [N]``, ``{name: [N]}``.
      keys: ``[N]``; ``fit(..., key=keys[i])`` reproduces member ``i``.
      nonfinite_epoch: ``int [N]``, the epoch a member went non-finite (0: none).
      nonfinite_reports: ``{member: NonFiniteReport}`` with ``debug_nonfinite=True``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> result = jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.adam(hp["lr"]),
      ...                                   jnn.data.xor(), hparams={"lr": jnp.array([0.1, 0.03, 0.01])},
      ...                                   key=jax.random.key(0), epochs=2, batch_size=4, metrics={})
      >>> result.train_states.params["w"].shape, result.epochs_trained.tolist(), result.best_epoch
      ((3, 2, 1), [2, 2, 2], None)
    """

    train_states: TrainState
    history: dict[str, np.ndarray]
    best_epoch: np.ndarray | None
    stopped_early: np.ndarray
    epochs_trained: np.ndarray
    keys: jax.Array
    hparams: dict[str, np.ndarray]
    nonfinite_epoch: np.ndarray | None = None
    nonfinite_reports: dict | None = None

    def member(self, i: int) -> MemberResult:
        """Member ``i`` alone, its history trimmed to the epochs it trained."""
        n = int(self.epochs_trained[i])
        best = None if self.best_epoch is None or self.best_epoch[i] == 0 else int(self.best_epoch[i])
        bad = None if self.nonfinite_epoch is None or self.nonfinite_epoch[i] == 0 else int(self.nonfinite_epoch[i])
        return MemberResult(jax.tree_util.tree_map(lambda a: a[i], self.train_states),
                            {k: v[:n, i] for k, v in self.history.items()}, best,
                            bool(self.stopped_early[i]), self.keys[i],
                            {k: v[i].item() for k, v in self.hparams.items()}, bad,
                            (self.nonfinite_reports or {}).get(i))


def as_keys(where: str, key, n: int | None) -> jax.Array:
    """A batch of typed keys: ``split(key, n)`` for one key, or the given batch of keys."""
    return checks.key_batch(where, "key", key, n)


def member_keys(key: jax.Array, n: int) -> jax.Array:
    """The N member keys :func:`fit_population` derives from one key: ``jax.random.split(key, n)``."""
    return as_keys("member_keys", key, n)


def shared_order_key(keys: jax.Array, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``'s shared batch order: ``fold_in(keys[0], epoch)``."""
    return jax.random.fold_in(keys[0], epoch)


jit_epoch_order = jax.jit(epoch_order, static_argnums=(1, 2))


def make_member_epoch(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer,
                      num_examples: int, batch_size: int, *, metrics: Metrics | None = None,
                      regularizer: Callable | None = None):
    """One member's epoch ``(hp, train_state, active, (x, y), order=None) -> (train_state, logs)``,
    its old state kept where ``active`` is False."""
    metrics = guard.default_metrics(loss) if metrics is None else dict(metrics)

    def member_epoch(hp, ts: TrainState, active, data, order=None):
        model, optimizer = make_model(hp), make_optimizer(hp)
        step = make_train_step(model, loss, optimizer, metrics=metrics, regularizer=regularizer)
        new_ts, logs = make_train_epoch(step, num_examples, batch_size)(ts, data, order)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new_ts, ts), logs

    return member_epoch


def _static(example):
    """A pytree of ShapeDtypeStructs as a hashable static argument (``tree_unflatten(*it)`` undoes it)."""
    leaves, treedef = jax.tree_util.tree_flatten(example)
    return treedef, tuple(leaves)


@partial(jax.jit, static_argnums=(0, 3))
def _first_output(make_model, hparams, states, example):
    """Member 0's evaluation-mode output (under ``jax.eval_shape``: cached, traced once)."""
    hp, ts = jax.tree_util.tree_map(lambda a: a[0], (hparams, states))
    x = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.tree_util.tree_unflatten(*example))
    return make_model(hp).apply(ts.params, ts.state, x, train=False)[0]


def init_population(make_model: MakeModel, make_optimizer: MakeOptimizer, hparams: HParams,
                    keys: jax.Array, example) -> TrainState:
    """Stacked train states, member ``i`` initialized as ``fit(..., key=keys[i])`` does."""
    return _init_population(make_model, make_optimizer, _static(example), dict(hparams), keys)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _init_population(make_model, make_optimizer, example, hparams, keys):
    example = jax.tree_util.tree_unflatten(*example)

    def init_member(member):
        hp, key = member
        init_key, _ = jax.random.split(key)  # as fit: init_key, split_key = split(key)
        return init_train_state(make_model(hp), make_optimizer(hp), init_key, example)

    # lax.map, not vmap: init runs once, and a sequential map compiles in about half the time
    return jax.lax.map(init_member, (hparams, keys))


class Program(NamedTuple):  # the static part of a run: equal programs share compiled code
    make_model: MakeModel
    loss: LossFn
    make_optimizer: MakeOptimizer
    metrics: tuple
    regularizer: Callable | None
    num_examples: int
    batch_size: int
    eval_batch_size: int
    chunk_size: int | None


def _map_members(fn, members, chunk_size: int | None):
    """``fn`` over the leading (member) axis: one vmap, or chunks of vmaps in a sequential loop."""
    if chunk_size is None or chunk_size >= jax.tree_util.tree_leaves(members)[0].shape[0]:
        return jax.vmap(fn)(members)
    return jax.lax.map(fn, members, batch_size=None if chunk_size == 1 else chunk_size)


def make_population_epoch(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer,
                          num_examples: int, batch_size: int, *, metrics: Metrics | None = None,
                          regularizer: Callable | None = None, chunk_size: int | None = None):
    """:func:`make_member_epoch` vmapped over ``(hparams, states, active)`` ``[N]`` (in sequential
    chunks of ``chunk_size``, when given)."""
    member_epoch = make_member_epoch(make_model, loss, make_optimizer, num_examples, batch_size,
                                     metrics=metrics, regularizer=regularizer)

    def population_epoch(hparams, states, active, data, order=None):
        return _map_members(lambda m: member_epoch(*m, data, order), (hparams, states, active), chunk_size)

    return population_epoch


@partial(jax.jit, static_argnums=0)
def population_epoch_jit(program: Program, hparams, states, active, data, order):
    epoch = make_population_epoch(program.make_model, program.loss, program.make_optimizer,
                                  program.num_examples, program.batch_size, metrics=dict(program.metrics),
                                  regularizer=program.regularizer, chunk_size=program.chunk_size)
    return epoch(hparams, states, active, data, order)


@partial(jax.jit, static_argnums=0)
def population_eval(program: Program, hparams, states, data):
    def member_eval(hp, ts):
        fn = make_eval_fn(program.make_model(hp), program.loss, metrics=dict(program.metrics),
                          batch_size=program.eval_batch_size)
        return fn(ts.params, ts.state, data, ts.step)

    return _map_members(lambda m: member_eval(*m), (hparams, states), program.chunk_size)


def loops_members(members: str, make_model: MakeModel, hparams, states, example) -> bool:
    """Whether members train one after another (:func:`loop_members`) rather than vmapped:
    ``members="loop"``, or ``"auto"`` where ``fit`` trains stepwise (CPU, a convolution in the model:
    :func:`jnn.train.fuses_by_default`). ``states`` may be ShapeDtypeStructs.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> from jnn.train.population import init_population, loops_members
      >>> example, keys = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32), jax.random.split(jax.random.key(0), 3)
      >>> def loops(make_model):
      ...     states = jax.eval_shape(lambda: init_population(make_model, lambda hp: optax.sgd(0.1), {}, keys, example))
      ...     return loops_members("auto", make_model, {}, states, example)
      >>> loops(lambda hp: jnn.dense(2)), loops(lambda hp: jnn.conv(2, (3, 3))) == (jax.default_backend() == "cpu")
      (False, True)
    """
    if members != "auto" or jax.default_backend() != "cpu":
        return members == "loop"
    forward = jax.make_jaxpr(lambda hp, ts: _first_output(make_model, hp, ts, _static(example)))(hparams, states)
    return not fuses_by_default(forward)


@lru_cache(maxsize=64)
def _member_fns(program: Program):
    """One member's jitted train step, evaluation batch totals and shuffle, hyperparameters traced
    (compiled once for all members)."""
    metrics, make_model = dict(program.metrics), program.make_model
    step = lambda hp, ts, data, idx: make_train_step(make_model(hp), program.loss, program.make_optimizer(hp),
                                                     metrics=metrics, regularizer=program.regularizer)(ts, gather(data, idx))
    totals = lambda hp, ts, *batch: make_eval_fn(make_model(hp), program.loss, metrics=metrics).batch_totals(
        ts.params, ts.state, *batch, ts.step)
    shuffle = lambda ts: shuffle_epoch(ts, program.num_examples, program.batch_size)
    return tuple(map(jit_outermost, (step, totals, shuffle)))


def loop_members(program: Program, hparams, states, active, data, order=None, *, subsets=None, held_out=None):
    """:func:`population_epoch_jit` with the ``active`` members one after another, each epoch stepwise
    (one jitted step per batch, as ``fit`` trains conv nets on CPU), then each evaluated on
    ``held_out`` (data, or per-member example indices ``[N, k]`` into ``data``; logs ``val_*``).
    ``subsets``: per-member example indices ``[N, m]`` that the member's batches index. Inactive
    members keep their state; their logs are zeros.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> from jnn.train.population import Program, init_population, loop_members, population_epoch_jit
      >>> x, y = jnn.data.xor()
      >>> make_opt, hp = lambda hp: optax.sgd(hp["lr"]), {"lr": jnp.array([0.1, 0.5])}
      >>> program = Program(lambda hp: jnn.dense(1), jnn.losses.mse, make_opt, (), None, 4, 2, 4, None)
      >>> states = init_population(program.make_model, make_opt, hp, jax.random.split(jax.random.key(0), 2),
      ...                          jax.ShapeDtypeStruct((2, 2), x.dtype))
      >>> a, logs = loop_members(program, hp, states, jnp.ones(2, bool), (x, y), held_out=(x, y))
      >>> b, _ = population_epoch_jit(program, hp, states, jnp.ones(2, bool), (x, y), None)
      >>> bool(jnp.allclose(a.params["w"], b.params["w"])), sorted(logs)
      (True, ['loss', 'val_loss'])
    """
    step, totals, shuffle = _member_fns(program)
    summed = None if held_out is None else make_eval_fn(
        program.make_model(jax.tree_util.tree_map(lambda a: a[0], hparams)), program.loss,
        metrics=dict(program.metrics), batch_size=program.eval_batch_size).sum_batches
    finished, logs, active = [], [], np.asarray(active)
    for i, (hp, ts) in enumerate(_unstack((hparams, states))):
        entry = None
        if active[i]:
            ts, own = shuffle(ts)
            batches = own if order is None else order
            per_step = [None] * len(batches)
            for b, idx in enumerate(batches if subsets is None else subsets[i][batches]):
                ts, per_step[b] = step(hp, ts, data, idx)
            entry = _mean(per_step)
            if held_out is not None:
                evaluated = gather(data, held_out[i]) if hasattr(held_out, "ndim") else held_out
                entry.update({f"val_{k}": v for k, v in summed(lambda *b: totals(hp, ts, *b), evaluated).items()})
        finished.append(ts)
        logs.append(entry)
    template = next(entry for entry in logs if entry is not None)
    return _stack(finished), _stack([jax.tree_util.tree_map(jnp.zeros_like, template) if entry is None else entry
                                     for entry in logs])


def _unstack(tree) -> list:
    """The members of a stacked pytree, sliced on the host (typed keys on the device): no compiles."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray(a) for a in leaves]
    return [treedef.unflatten([a[i] for a in leaves]) for i in range(len(leaves[0]))]


def _stack(trees):
    """:func:`_unstack` undone: one array per leaf (stacked on the host; typed keys on the device)."""
    stack = lambda *a: jnp.stack(a) if jax.dtypes.issubdtype(a[0].dtype, jax.dtypes.prng_key) else np.stack(a)
    return jax.device_put(jax.tree_util.tree_map(stack, *trees))


_mean = jax.jit(lambda trees: jax.tree_util.tree_map(lambda *a: sum(a) / len(a), *trees))


def check_hparams(where: str, hparams) -> tuple[dict[str, jax.Array], int | None]:
    """``hparams`` as a dict of arrays ``[N]`` (see :func:`jnn._checks.member_arrays`) and ``N`` (None when empty)."""
    hparams = checks.member_arrays(where, "hparams", hparams)
    return hparams, next((len(v) for v in hparams.values()), None)


@checks.declare(epochs=checks.positive_int, chunk_size=checks.positive_int_or(None, "auto"),
                members=checks.one_of("vmap", "loop", "auto"),
                shared_order=checks.one_of(True, False, "auto"), on_nonfinite=checks.one_of("raise", "stop"),
                prune=checks.optional(checks.instance_of(Callable, described="a function (epoch, history) -> bool [N]")),
                verbose=guard.switch, debug_nonfinite=checks.flag, check_data=checks.flag,
                **guard.parts("make_model", "make_optimizer", "loss", "metrics", "regularizer"), **CALLBACK_RULES)
def fit_population(make_model: MakeModel, loss: LossFn, make_optimizer: MakeOptimizer, train_data, *,
                   hparams: HParams | None = None, key: jax.Array, epochs: int = 10, batch_size: int = 128,
                   val_data=None, val_split: float = 0.0, metrics: Metrics | None = None,
                   regularizer: Callable | None = None, early_stopping: EarlyStopping | None = None,
                   eval_batch_size: int = 1000, chunk_size: int | str | None = "auto",
                   members: str = "auto", shared_order: bool | str = False, verbose: bool = False, callbacks=(),
                   prune: Callable[[int, dict], Any] | None = None, on_nonfinite: str = "stop",
                   debug_nonfinite: bool = False, check_data: bool = True) -> PopulationResult:
    """Trains N members on the same ``(x, y)`` at once, one vmapped epoch at a time; member ``i``
    equals ``fit(..., key=keys[i])`` up to float reordering. Arguments not listed are as for ``fit``.

    Args:
      make_model, make_optimizer: ``hp -> Layer`` and ``hp -> optimizer``, ``hp = {name: traced scalar}``.
      hparams, key: ``{name: array [N]}``; one PRNG key, or a batch of N keys (then ``hparams`` may be empty).
      chunk_size: members vectorized together (``None``: all), chunks run in sequence; ``"auto"``:
        the first epochs time the candidates (:mod:`jnn.train.autoexec`) and keep the fastest.
      members: ``"vmap"``; ``"loop"``: one after another, each stepwise (:func:`loop_members`);
        ``"auto"``: loop where ``fit`` trains stepwise (CPU and a convolution), else vmap.
      shared_order: one batch order for all members (no longer equal to ``fit`` alone); ``"auto"``.
      callbacks: objects with ``on_population_epoch_end(epoch, states, logs, trained)``; a bool
        ``[N]`` returned stops those members. ``early_stopping`` judges each member on its own.
      prune: ``prune(epoch, history) -> bool [N]``, members to stop now (e.g. Optuna pruners).
      on_nonfinite, debug_nonfinite: the :class:`jnn.train.NonFinite` policy for failing members
        (``debug_nonfinite`` needs ``shared_order=False``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> result = jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(hp["lr"]),
      ...                                   jnn.data.xor(), hparams={"lr": jnp.array([0.1, 0.01])},
      ...                                   key=jax.random.key(1), epochs=3, batch_size=4, metrics={})
      >>> result.history["loss"].shape                        # [epochs, members]
      (3, 2)
    """
    if debug_nonfinite and shared_order is not False:
        raise ValueError(f"fit_population: debug_nonfinite replays a member with its own shuffle; it needs "
                         f"shared_order=False, got shared_order={shared_order!r}")
    callbacks, es = with_early_stopping("fit_population", callbacks, early_stopping)
    hparams, n = check_hparams("fit_population", hparams)
    keys = as_keys("fit_population", key, n)
    n = keys.shape[0]
    (x, y), val_data = prepare("fit_population", train_data, val_data, val_split, jax.random.split(keys[0])[1],
                               batch_size=batch_size, eval_batch_size=eval_batch_size)
    batch_size = min(batch_size, num_examples_of(x))
    example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x)
    init = lambda: init_population(make_model, make_optimizer, hparams, keys, example)
    spec = jax.eval_shape(init)
    out = jax.eval_shape(_first_output, make_model, hparams, spec, _static(example))
    metrics = default_metrics(loss, out, y) if metrics is None else dict(metrics)   # as fit
    names = ["loss", *metrics] + ([f"val_{k}" for k in ["loss", *metrics]] if val_data is not None else [])
    names += ["lr"] if learning_rate(spec.opt_state) is not None else []
    if es is not None:
        checks.logged_metric("fit_population", "early_stopping monitors", es.monitor, names)
    program = Program(make_model, loss, make_optimizer, tuple(metrics.items()), regularizer, num_examples_of(x),
                      batch_size, eval_batch_size, None if chunk_size == "auto" else chunk_size)
    if val_data is not None:  # traced (cached with the program), not run: fails before the first step
        guard.check_val_data("fit_population", (x, y), val_data,
                             lambda v: jax.eval_shape(population_eval, program, hparams, spec, v))
    if check_data:
        guard.check_values("fit_population", out, loss, metrics, (x, y), val_data)
    auto, looped = None, loops_members(members, make_model, hparams, spec, example)
    if looped:
        shared_order = shared_order is True   # "auto": each member's own order, as fit
    elif chunk_size == "auto" or shared_order == "auto":
        auto = _autoexec.AutoEpoch(population_epoch_jit, program, _autoexec.candidates(n, chunk_size, shared_order))

    def epoch_fn(states, epoch, trained):
        order_fn = lambda: jit_epoch_order(shared_order_key(keys, epoch), num_examples_of(x), batch_size)
        if looped:
            states, logs = loop_members(program, hparams, states, trained, (x, y), order_fn() if shared_order else None,
                                        held_out=val_data)
        elif auto is not None:
            states, logs, _ = auto(hparams, states, jnp.asarray(trained), (x, y), order_fn)
        else:
            states, logs = population_epoch_jit(program, hparams, states, jnp.asarray(trained), (x, y),
                                                order_fn() if shared_order else None)
        if val_data is not None and not looped:
            logs.update({f"val_{k}": v for k, v in population_eval(program, hparams, states, val_data).items()})
        return states, logs if "lr" not in names else {**logs, "lr": learning_rate(states.opt_state)}

    history = {}
    pruning = [] if prune is None else [_Prune(prune, history)]
    run = run_epochs("fit_population", init(), epoch_fn, epochs=epochs, members=n, history=history, names=names,
                     callbacks=CallbackList(callbacks + pruning, members=n, where="fit_population"),
                     policy=NonFinite(on_nonfinite, debug=debug_nonfinite), verbose=verbose, describe=partial(_describe, es),
                     replay=lambda states, which: replay_members(program, hparams, states, (x, y), which))
    best_epoch = None if es is None else np.broadcast_to(np.asarray(es.best_epoch, int), (n,)).copy()
    return PopulationResult(run.train_state, run.history, best_epoch, run.stopped_early, run.epochs_trained, keys,
                            {k: np.asarray(v) for k, v in hparams.items()}, run.nonfinite_epoch, run.reports)


def _describe(es, epoch, history, trained) -> str:
    """``fit_population``'s verbose line: active members and the best monitored (or loss) value."""
    shown = es.monitor if es is not None else "loss"
    column = history[shown][epoch - 1][np.isfinite(history[shown][epoch - 1])]
    best_now = (column.max() if es is not None and es.maximize else column.min()) if column.size else np.nan
    return f"epoch {epoch:3d}  active {int(trained.sum())}/{trained.size}  best {shown} {best_now:.4f}"


class _Prune:
    """``fit_population``'s ``prune(epoch, history)`` as the last callback: the members it stops."""

    def __init__(self, prune, history):
        self.prune, self.history = prune, history

    def on_population_epoch_end(self, epoch, states, logs, trained):
        return np.asarray(self.prune(epoch, self.history), bool)
