"""``fit``: epochs of scan-fused training with validation, callbacks (early stopping) and a history."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
import optax

from jnn import _checks as checks
from jnn.parallel import mesh as _parallel
from jnn.core import Layer
from jnn.doctor import fingerprint
from jnn.train import guard
from jnn.train import stream as _stream
from jnn.train.callbacks import CallbackList, EarlyStopping
from jnn.train.compiler import compiler_options
from jnn.train.engine import (CALLBACK_RULES, Data, NonFinite, Start, check_pair, learning_rate, prepare, run_epochs,
                              split_validation, with_early_stopping)
from jnn.train.nonfinite import find_nonfinite
from jnn.train.step import (LossFn, Metrics, TrainState, as_arrays, default_metrics, epoch_order, gather,
                            num_examples_of, init_train_state, make_eval_fn, make_stepwise_epoch, make_train_epoch,
                            make_train_step)

__all__ = ["FitResult", "fit", "split_validation", "predict", "fuses_by_default"]


class FitResult(NamedTuple):
    """What :func:`fit` returns: the final (with ``restore_best``, the best epoch's) ``train_state``;
    ``history`` (``{"epoch": [...], "loss": [...], "val_loss": [...], ...}``); ``best_epoch`` (1-based,
    early stopping's, else ``None``); ``stopped_early``; ``nonfinite_epoch`` (with ``NonFinite("stop")``,
    the epoch whose metrics were non-finite; the state is from the epoch before) and
    ``nonfinite_report`` (with ``NonFinite(debug=True)``: :func:`jnn.train.find_nonfinite`).

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (x, y), key=jax.random.key(0),
      ...                        epochs=2, batch_size=4, metrics={}, verbose=0)
      >>> result.history["epoch"], result.best_epoch, result.stopped_early
      ([1, 2], None, False)
      >>> int(result.train_state.step)
      2
    """

    train_state: TrainState
    history: dict[str, list[float]]
    best_epoch: int | None
    stopped_early: bool
    nonfinite_epoch: int | None = None
    nonfinite_report: Any = None


def _forward(model: Layer, ts: TrainState, example):
    """The model's evaluation-mode forward pass, traced: ``(jaxpr, output ShapeDtypeStructs)``."""
    return jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x, train=False)[0], return_shape=True)(
        ts.params, ts.state, example)


def _primitives(jaxpr):
    """The names of the primitives in ``jaxpr`` and in the jaxprs nested in its equations."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(inner, "jaxpr", inner)   # a ClosedJaxpr's Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner)


def fuses_by_default(jaxpr) -> bool:
    """``fit(fused="auto")``'s choice for a forward pass ``jaxpr``: a scan-fused epoch, except on CPU
    with a convolution in the forward pass or its derivatives (stepwise: jax-ml/jax#12868).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cnn, mlp = jnn.conv(4, (3, 3)), jnn.dense(4)
      >>> trace = lambda m, x: jax.make_jaxpr(lambda x: m.apply(*m.init(jax.random.key(0), x), x)[0])(x)
      >>> fuses_by_default(trace(mlp, jnp.zeros((2, 3)))), fuses_by_default(trace(cnn, jnp.zeros((2, 8, 8, 1))))
      (True, False)
    """
    if jax.default_backend() != "cpu":
        return True
    forward = set(_primitives(jaxpr.jaxpr))
    if "conv_general_dilated" in forward:
        return False
    return "custom_jvp_call" not in forward or "conv_general_dilated" not in _tangent_primitives(jaxpr)


def _tangent_primitives(jaxpr) -> set[str]:
    """The primitives of the JVP of ``jaxpr`` along its float inputs (what a custom JVP rule adds);
    empty where the JVP cannot be traced."""
    inexact = [jnp.issubdtype(a.dtype, jnp.inexact) for a in jaxpr.in_avals]

    def tangents(*args):
        def along(*values):
            values = iter(values)
            return jax.extend.core.jaxpr_as_fun(jaxpr)(*[next(values) if f else a for a, f in zip(args, inexact)])

        primals = [a for a, f in zip(args, inexact) if f]
        return jax.jvp(along, primals, primals)[1]

    try:
        traced = jax.make_jaxpr(tangents)(*[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jaxpr.in_avals])
    except (TypeError, ValueError, NotImplementedError):   # no JVP (custom_vjp, pure_callback, ...):
        return set()                                         # decide from the forward pass alone
    return set(_primitives(traced.jaxpr))


def _start_from(model: Layer, optimizer, key, example, params, state) -> TrainState:
    """A fresh train state (step 0, new optimizer state) at the given ``params``/``state``, which
    must have the structure and shapes of the model's own."""
    ts = init_train_state(model, optimizer, key, example)
    for name, tree in {"params": params, "state": state}.items():
        if tree is None:
            continue
        checks.like_tree("fit", name, tree, getattr(ts, name))
    params = ts.params if params is None else params
    return ts._replace(params=params, state=ts.state if state is None else state, opt_state=optimizer.init(params))


def _nonfinite_policy(where: str, callbacks: list, default: NonFinite) -> tuple[NonFinite, list]:
    """The run's one :class:`NonFinite` policy (``default`` when ``callbacks`` hold none), and the
    other callbacks."""
    policies = [cb for cb in callbacks if isinstance(cb, NonFinite)]
    checks.at_most_one(where, "NonFinite policy", policies)
    return (policies[0] if policies else default), [cb for cb in callbacks if not isinstance(cb, NonFinite)]


def _initial_state(model, optimizer, init_key, example, start: Start, mesh, rules) -> TrainState:
    def init():
        if start.params is not None or start.state is not None:
            return _start_from(model, optimizer, init_key, example, start.params, start.state)
        return init_train_state(model, optimizer, init_key, example)

    if mesh is None:
        return start.train_state if start.train_state is not None else init()
    return (_parallel.place(start.train_state, mesh, rules) if start.train_state is not None
            else _parallel.sharded_init(init, mesh, rules))


_START = checks.instance_of(TrainState, Start, type(None), described="a jnn.train.TrainState (from "
                            "init_train_state or a previous fit) or a jnn.train.Start")


def _as_start(train_state) -> Start:
    if not isinstance(_START("fit", "train_state", train_state), Start):
        return Start(train_state=train_state)
    if train_state.train_state is not None and (train_state.params is not None or train_state.state is not None):
        raise ValueError("fit: pass train_state (resume a run) or params/state (start from given weights), "
                         "not both")
    checks.instance_of(TrainState, type(None), described="a jnn.train.TrainState")(
        "fit", "Start.train_state", train_state.train_state)   # a NamedTuple: only its type tells it apart
    return train_state


@checks.declare(epochs=checks.positive_int, fused=checks.one_of(True, False, "auto"), key=guard.prng_key,
                verbose=checks.one_of(0, 1, 2, False, True), accumulate=checks.positive_int,
                **guard.parts("model", "optimizer", "loss", "metrics", "regularizer"), **CALLBACK_RULES)
def fit(model: Layer, loss: LossFn, optimizer: optax.GradientTransformation, train_data, *,
        key: jax.Array, epochs: int = 10, batch_size: int = 128, val_data=None, val_split: float = 0.0,
        metrics: Metrics | None = None, regularizer: Callable | None = None,
        early_stopping: EarlyStopping | None = None, train_state: TrainState | Start | None = None,
        eval_batch_size: int = 1000, fused: bool | str = "auto", verbose: int = 1, accumulate: int = 1,
        callbacks=(), mesh=None, checkpoint=None) -> FitResult:
    """Trains ``model`` on ``train_data = (x, y)``: each epoch shuffles, runs every full batch in one
    compiled scan (:func:`jnn.train.make_train_epoch`) and evaluates the validation set exactly;
    Python runs once per epoch (:func:`jnn.train.engine.run_epochs`); nothing recompiles.

    Args:
      model, loss, optimizer: the network, ``loss(outputs, y)`` (see :func:`jnn.train.make_train_step`)
        and an optax optimizer (with ``optax.inject_hyperparams``, its learning rate is logged as ``"lr"``).
      train_data: ``(x, y)`` with examples on the first axis (pytrees allowed), or an iterable (not a
        tuple) of ``(x, y)`` batches (a list of them too), e.g. :func:`jnn.data.grain.pipeline`, streamed
        (:mod:`jnn.train.stream`). :class:`jnn.train.Data` sets ``steps_per_epoch`` or skips the checks.
      key: PRNG key for init, shuffling and dropout; the same key gives bit-identical results.
      epochs, batch_size: epochs to train; examples per update (clamped to the dataset size).
      val_data: ``(x, y)``, or an iterable of batches read afresh every epoch (evaluated exactly).
      val_split: instead of ``val_data``, hold out this fraction of ``train_data`` (shuffled).
      metrics: ``{name: fn(outputs, y)}``; default: :func:`jnn.train.default_metrics`.
      regularizer: ``params -> scalar`` added to the loss (see :func:`jnn.train.penalty`).
      early_stopping: an :class:`jnn.train.EarlyStopping`: the same as adding it to ``callbacks``.
      train_state: resume from this state, or a :class:`jnn.train.Start` (pretrained
        ``params``/``state``, or a state with the epoch it was saved after).
      eval_batch_size: batch size of the validation pass.
      fused: ``True``: one ``lax.scan`` per epoch; ``False``: :func:`jnn.train.make_stepwise_epoch`;
        ``"auto"``: :func:`jnn.train.loop.fuses_by_default`.
      verbose: ``0`` silent; ``1`` a progress bar (needs ``rich``) and one line per epoch; ``2`` the lines.
      accumulate: split each batch (``batch_size``, a multiple of it) into this many micro-batches
        whose gradients make one update (:func:`jnn.train.make_train_step`).
      callbacks: per-epoch callbacks (:mod:`jnn.train.callbacks`; True stops), e.g. ``HistoryFile(path)``,
        ``checkpointer.save_every(k)``, :class:`jnn.train.NonFinite` (default: NaN/Inf raises).
      mesh: a ``jax.sharding.Mesh`` to split each batch over (its ``data`` axis), or ``(mesh,
        rules)`` with sharding rules for params and optimizer state (:func:`jnn.parallel.fsdp`).
      checkpoint: for a stream, ``checkpointer.every_steps(k, resume=...)``: saves every ``k``
        updates, mid-epoch included, and resumes bit for bit from the latest save.

    Returns a :class:`FitResult`.

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
      >>> result = jnn.train.fit(model, jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.1),
      ...                        (x, y), key=jax.random.key(0), epochs=200, batch_size=4, metrics={}, verbose=0)
      >>> result.history["loss"][-1] < 0.1
      True
    """
    data = train_data if isinstance(train_data, Data) else Data(train_data)
    start = _as_start(train_state)
    checks.index_below("fit", "Start.epoch", start.epoch, epochs, "epochs")
    checks.flag("fit", "Data.check", data.check)
    callbacks, early_stopping = with_early_stopping("fit", callbacks, early_stopping)
    policy, callbacks = _nonfinite_policy("fit", callbacks, NonFinite("raise"))
    mesh, rules = mesh if isinstance(mesh, tuple) else (mesh, None)
    feed = None
    try:
        if _stream.is_stream(data.data):
            if val_split or policy.debug:
                raise ValueError("fit: a streamed train_data takes val_data=, not val_split; and no NonFinite(debug=True)")
            feed = _stream.Feed(data.data, data.steps_per_epoch if data.steps_per_epoch is not None else
                                getattr(data.data, "steps_per_epoch", None), mesh=mesh, where="fit")
            batch_size = num_examples_of(feed.global_shapes()[0])   # with a mesh, every process's batch together
        elif checkpoint is not None or data.steps_per_epoch is not None:
            raise ValueError("fit: Data.steps_per_epoch and checkpoint are for streamed train_data; for arrays "
                             "use callbacks=[checkpointer.save_every(k)] and train_state= to resume")
        init_key, split_key = jax.random.split(key)
        (x, y), val_data = prepare("fit", data.data, val_data, val_split, split_key, batch_size=batch_size,
                                   eval_batch_size=eval_batch_size, first_batch=feed and feed.first[0], mesh=mesh)
        return _fit(model, loss, optimizer, (x, y), val_data, feed, key=init_key, epochs=epochs, start=start,
                    batch_size=batch_size if feed else min(batch_size, num_examples_of(x)), metrics=metrics,
                    regularizer=regularizer, early_stopping=early_stopping, eval_batch_size=eval_batch_size,
                    fused=fused, verbose=verbose, accumulate=accumulate, callbacks=callbacks, policy=policy,
                    mesh=mesh, rules=rules, checkpoint=checkpoint, check_data=data.check)
    finally:   # Grain's worker processes and shared memory go now, not at interpreter exit
        if feed is not None:
            feed.close()


def _fit(model, loss, optimizer, train, val_data, feed, *, key, epochs, start, batch_size, metrics, regularizer,
         early_stopping, eval_batch_size, fused, verbose, accumulate, callbacks, policy, mesh, rules, checkpoint,
         check_data) -> FitResult:
    """``fit`` after its arguments are checked and its data prepared: builds the compiled epoch and
    evaluation, checks them by ``eval_shape`` and hands them to :func:`run_epochs`."""
    (x, y), val_streamed = train, _stream.is_stream(val_data)
    if rules is not None and mesh is None:
        raise ValueError("fit: rules shard params over a mesh; pass mesh=(mesh, rules)")
    if mesh is not None:
        _parallel.check_mesh(mesh, "fit")
        _parallel.check_batch_size(batch_size, mesh, "fit")
    example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x)
    ts = _initial_state(model, optimizer, key, example, start, mesh, rules)
    if mesh is not None:
        x, y = (x, y) if feed is not None else _parallel.replicate((x, y), mesh)
        val_data = None if val_data is None else _parallel.replicate(val_data, mesh)
    fused = True if fused == "auto" and jax.default_backend() != "cpu" else fused
    forward, out = (_forward(model, ts, example) if metrics is None or fused == "auto" or check_data
                    else (None, None))   # one trace of the forward pass serves the choices and checks below
    fused = fuses_by_default(forward) if fused == "auto" else fused
    metrics = default_metrics(loss, out, y) if metrics is None else dict(metrics)
    checks.micro_batches("fit", batch_size, accumulate)
    step = make_train_step(model, loss, optimizer, metrics=metrics, regularizer=regularizer, accumulate=accumulate,
                           mesh=mesh, rules=rules)
    initial_epoch = start.epoch
    if feed is not None:
        train_epoch = _stream.StreamEpochs(step, feed, ts, checkpoint=checkpoint, epochs=epochs,
                                           initial_epoch=initial_epoch, chunk=_stream.CHUNK if fused else 1)
        ts, initial_epoch = train_epoch.resume(ts, verbose=bool(verbose) and jax.process_index() == 0)
    elif fused:
        train_epoch = jax.jit(make_train_epoch(step, num_examples_of(x), batch_size, mesh=mesh),
                              compiler_options=compiler_options())
    else:
        train_epoch = make_stepwise_epoch(step, num_examples_of(x), batch_size)
    saving = [cb for cb in callbacks if hasattr(cb, "fingerprint")]   # checkpointer.save_every(k)'s
    if saving:   # the fingerprint their saves record, computed once; data order: a fixed key's and the first batch
        first = jax.tree_util.tree_map(lambda a: a[:batch_size], (x, y))
        found = train_epoch.fingerprint if feed is not None else fingerprint(step, ts, first, data_order=(
            epoch_order(jax.random.key(0), num_examples_of(x), batch_size), first))
        for cb in saving:
            cb.fingerprint = found
    evaluate = make_eval_fn(model, loss, metrics=metrics, batch_size=eval_batch_size, fused=fused, mesh=mesh)
    evaluate = (_stream.StreamEvaluation(evaluate) if val_streamed
                else jax.jit(evaluate, compiler_options=compiler_options()) if fused else evaluate)
    guard.check_fit_plan("fit", step, make_eval_fn(model, loss, metrics=metrics, batch_size=eval_batch_size), ts,
                         (x, y), batch_size, check_pair("fit val_data (first batch)", next(iter(val_data), None))
                         if val_streamed else val_data, early_stopping, learning_rate(ts.opt_state) is not None,
                         data_check=(out, loss, metrics) if check_data else None)

    def epoch_fn(ts, epoch, trained):
        ts, train_logs = train_epoch(ts, (x, y))
        logs = {k: float(v) for k, v in train_logs.items()}
        if val_data is not None:
            logs.update({f"val_{k}": float(v) for k, v in evaluate(ts.params, ts.state, val_data, ts.step).items()})
        lr = learning_rate(ts.opt_state)
        return ts, logs if lr is None else {**logs, "lr": float(lr)}

    replay = lambda last_good, _: find_nonfinite(model, loss, optimizer, last_good, (x, y), batch_size=batch_size,
                                                 metrics=metrics, regularizer=regularizer)
    main = jax.process_index() == 0  # multi-process: only process 0 prints
    run = run_epochs("fit", ts, epoch_fn, epochs=epochs, initial_epoch=initial_epoch,
                     callbacks=CallbackList(callbacks), policy=policy,
                     history=train_epoch.history if feed is not None else None,
                     verbose=bool(verbose) and main, progress=verbose == 1 and main, replay=replay)
    best_epoch = None if early_stopping is None else int(early_stopping.best_epoch) or None
    return FitResult(run.train_state, run.history, best_epoch, bool(run.stopped_early),
                     int(run.nonfinite_epoch) or None, run.reports or None)


@checks.declare(batch_size=checks.positive_int)
def predict(model: Layer, params, state, x, *, batch_size: int = 1000):
    """The model's evaluation-mode outputs for all of ``x``, computed in batches (none: empty outputs).

    ``x`` may be a pytree (dicts or tuples of arrays, examples on the first axis); the result
    has the structure of the model's output (an array, or e.g. a dict of arrays).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.fan_out(jnn.dense(2), jnn.dense(3), merge=tuple)   # two outputs
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> [a.shape for a in jnn.train.predict(model, params, state, jnp.ones((5, 4)), batch_size=2)]
      [(5, 2), (5, 3)]
    """
    x = as_arrays(x)
    n = num_examples_of(x)
    apply = jax.jit(lambda p, s, xb: model.apply(p, s, xb, train=False)[0], compiler_options=compiler_options())
    outs = [apply(params, state, gather(x, slice(i, i + batch_size))) for i in range(0, max(n, 1), batch_size)]
    return jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *outs)
