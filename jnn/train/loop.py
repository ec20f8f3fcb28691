"""``fit``: epochs of scan-fused training with validation, callbacks (early stopping) and a history."""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax

from jnn import metrics as _metrics
from jnn.parallel import mesh as _parallel
from jnn.core import Layer
from jnn.train import guard
from jnn.train import stream as _stream
from jnn.train.callbacks import CallbackList, EarlyStopping
from jnn.train.compiler import compiler_options
from jnn.train.history import progress_bar
from jnn.train.step import (LossFn, Metrics, TrainState, as_arrays, gather, num_examples_of, init_train_state,
                            make_eval_fn, make_stepwise_epoch, make_train_epoch, make_train_step)

__all__ = ["check_pair", "with_early_stopping", "FitResult", "fit", "split_validation", "predict", "fuses_by_default"]


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      train_state: the final (or, with ``restore_best``, the best epoch's) train state.
      history: ``{"epoch": [...], "loss": [...], "val_loss": [...], ...}``, one entry per epoch.
      best_epoch: the epoch early stopping judged best (1-based), or ``None`` without it.
      stopped_early: whether early stopping ended training before ``epochs``.
      nonfinite_epoch: with ``on_nonfinite="stop"``, the epoch whose metrics were non-finite
        (training stopped there; ``train_state`` is from the epoch before), else ``None``.
      nonfinite_report: with ``debug_nonfinite=True``, where it happened (see
        :func:`jnn.train.find_nonfinite`).

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (x, y), key=jax.random.key(0),
      ...                        epochs=2, batch_size=4, metrics={}, progress=False, verbose=False)
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


def split_validation(x, y, fraction: float, key):
    """Shuffles ``(x, y)`` with ``key`` and splits off ``fraction`` of it:
    returns ``(train_x, train_y), (val_x, val_y)``. ``x`` and ``y`` may be pytrees (dicts or
    tuples of arrays with examples on the first axis); every leaf is split alike.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> x, y = jnp.arange(20.0).reshape(10, 2), jnp.arange(10)
      >>> (tx, ty), (vx, vy) = jnn.train.split_validation(x, y, 0.2, jax.random.key(0))
      >>> tx.shape, ty.shape, vx.shape, vy.shape
      ((8, 2), (8,), (2, 2), (2,))
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split_validation: fraction must be in (0, 1), got {fraction}")
    x, y = as_arrays((x, y))
    n = num_examples_of(x)
    n_val = int(round(n * fraction))
    order = np.asarray(jax.random.permutation(key, n))
    val, train = order[:n_val], order[n_val:]
    return (gather(x, train), gather(y, train)), (gather(x, val), gather(y, val))


def check_pair(where: str, data) -> tuple[Any, Any]:
    """``(x, y)`` as jax arrays (or dicts/tuples of them), every leaf with the same example count."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{where}: expected a pair (x, y), got {type(data).__name__}")
    x, y = as_arrays(tuple(data))
    leaves = [(name + jax.tree_util.keystr(path), leaf) for name, tree in (("x", x), ("y", y))
              for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    if not any(name.startswith("x") for name, _ in leaves) or not any(name.startswith("y") for name, _ in leaves):
        raise ValueError(f"{where}: x and y must each hold at least one array")
    scalars = [name for name, leaf in leaves if leaf.ndim == 0]
    if scalars:
        raise ValueError(f"{where}: every array needs a leading example axis; {scalars[0]} is a scalar")
    (first, leaf0), counts = leaves[0], {name: leaf.shape[0] for name, leaf in leaves}
    bad = [name for name, count in counts.items() if count != leaf0.shape[0]]
    if bad:
        raise ValueError(f"{where}: x and y must have the same number of examples, got {leaf0.shape[0]} and "
                         f"{counts[bad[0]]} ({first} has {leaf0.shape[0]}, {bad[0]} has {counts[bad[0]]}; every "
                         f"array holds the examples on its first axis)")
    return x, y


def _forward(model: Layer, ts: TrainState, example):
    """The model's evaluation-mode forward pass, traced: ``(jaxpr, output ShapeDtypeStructs)``."""
    return jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x, train=False)[0], return_shape=True)(
        ts.params, ts.state, example)


def _default_metrics(out, y) -> dict:
    """``{"accuracy": ...}`` when both the model's output and ``y`` are single arrays; else ``{}``."""
    return {"accuracy": _metrics.accuracy} if isinstance(y, jax.Array) and isinstance(out, jax.ShapeDtypeStruct) else {}


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
    """``fit(fused="auto")``'s choice for a model whose forward pass is ``jaxpr``: a scan-fused
    epoch, except on CPU for a model with a convolution in its forward pass or in its
    derivatives (as conv's one-channel CPU path has), which trains stepwise: XLA CPU runs
    convolutions inside a loop several times slower than outside one (jax-ml/jax#12868;
    measured here: a 2-conv MNIST CNN step, 44.5 ms stepwise against 259 ms in a scan of 8).

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
    """The primitives of the JVP of ``jaxpr`` along its floating-point inputs: what a custom JVP
    rule adds (conv's one-channel CPU path computes its forward pass without a convolution and
    its derivatives with one). Empty where the JVP cannot be traced."""
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


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _start_from(model: Layer, optimizer, key, example, params, state) -> TrainState:
    """A fresh train state (step 0, new optimizer state) at the given ``params``/``state``, which
    must have the structure and shapes of the model's own."""
    ts = init_train_state(model, optimizer, key, example)
    for name, tree in {"params": params, "state": state}.items():
        if tree is None:
            continue
        expected = getattr(ts, name)
        if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(expected):
            missing = sorted(set(_paths(expected)) - set(_paths(tree)))
            extra = sorted(set(_paths(tree)) - set(_paths(expected)))
            raise ValueError(f"fit: the given {name} do not have the model's structure: missing "
                             f"{', '.join(missing) or 'nothing'}; unexpected {', '.join(extra) or 'nothing'}")
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(expected)):
            if np.shape(a) != b.shape:
                raise ValueError(f"fit: given {name}{jax.tree_util.keystr(path)} has shape {np.shape(a)}, "
                                 f"the model expects {b.shape}")
    params = ts.params if params is None else params
    return ts._replace(params=params, state=ts.state if state is None else state, opt_state=optimizer.init(params))


def with_early_stopping(where: str, callbacks, early_stopping):
    """``callbacks`` with ``early_stopping`` added, and the run's one :class:`EarlyStopping` (or None)."""
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"{where}: early_stopping must be a jnn.train.EarlyStopping, got "
                        f"{type(early_stopping).__name__}")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{where}: callbacks must be a list of callbacks, got {type(callbacks).__name__}")
    callbacks = list(callbacks or ()) + ([early_stopping] if early_stopping is not None else [])
    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    if len(stoppers) > 1:
        raise ValueError(f"{where}: at most one EarlyStopping per run, got {len(stoppers)} (in callbacks and "
                         f"early_stopping together)")
    return callbacks, (stoppers[0] if stoppers else None)


def _learning_rate(opt_state) -> float | None:
    """The current learning rate, when the optimizer was built with optax.inject_hyperparams."""
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams")):
        if hasattr(leaf, "hyperparams") and "learning_rate" in leaf.hyperparams:
            return float(leaf.hyperparams["learning_rate"])
    return None


def fit(model: Layer, loss: LossFn, optimizer: optax.GradientTransformation, train_data, *,
        key: jax.Array, epochs: int = 10, batch_size: int = 128, val_data=None,
        val_split: float = 0.0, metrics: Metrics | None = None,
        regularizer: Callable | None = None, early_stopping: EarlyStopping | None = None,
        train_state: TrainState | None = None, params=None, state=None, initial_epoch: int = 0,
        eval_batch_size: int = 1000,
        fused: bool | str = "auto",
        progress: bool = True, verbose: bool = True, history_file=None,
        on_epoch_end: Callable[[int, TrainState, dict], None] | None = None, callbacks=(), mesh=None,
        rules=None, on_nonfinite: str = "raise", debug_nonfinite: bool = False,
        check_data: bool = True, steps_per_epoch: int | None = None, checkpoint=None,
        checkpoint_every: int | None = None, resume: bool = False) -> FitResult:
    """Trains ``model`` on ``train_data = (x, y)``, one ``jax.lax.scan`` per epoch.

    Each epoch shuffles with the train state's key, runs every full batch in one compiled
    scan (the ``len(x) % batch_size`` left over are skipped that epoch: see
    :func:`jnn.train.make_train_epoch`), then evaluates the validation set exactly. Python
    runs once per epoch, and nothing recompiles after the first epoch.

    Args:
      model: the network.
      loss: ``loss(outputs, y) -> scalar`` (e.g. :func:`jnn.losses.softmax_cross_entropy`), or
        ``loss(outputs, y, step)`` (a parameter named ``step``: the optimizer steps taken so far,
        e.g. for KL annealing); either may return ``(scalar, {name: scalar})``, and those logs
        join the history (``name`` and ``val_name``). See :func:`jnn.train.make_train_step`.
      optimizer: an optax optimizer (schedules, clipping and masks compose as usual; build it
        with ``optax.inject_hyperparams`` to have the learning rate of each epoch's last
        step logged as ``"lr"``).
      train_data: ``(x, y)`` with examples on the first axis. ``x`` and ``y`` may be pytrees
        (dicts or tuples of arrays: several inputs or targets; the model's output may be a pytree
        too); every leaf must have the same number of examples. Or, for data that does not fit
        in memory, any iterable (not a tuple or list) of ``(x, y)`` batches of NumPy or JAX
        arrays, e.g. a :func:`jnn.data.grain.pipeline`: streamed in jitted scans over chunks of
        8 batches (one jitted step per batch when not ``fused``), two chunks prefetched to the
        device (:mod:`jnn.train.stream`; ``batch_size`` and ``val_split`` do not apply; every
        batch must have the first's shapes).
      key: PRNG key for init, shuffling and dropout; the same key gives bit-identical results.
      epochs: number of epochs.
      batch_size: examples per step (clamped to the dataset size).
      val_data: ``(x, y)`` for validation, or ``None``; or an iterable (not a tuple or list) of
        ``(x, y)`` batches read afresh every epoch (e.g. a Grain pipeline with ``num_epochs=1,
        shuffle=False, drop_remainder=False``), evaluated
        exactly: the last batch may be smaller (padded and masked; see
        :class:`jnn.train.stream.StreamEvaluation`).
      val_split: instead of ``val_data``, hold out this fraction of ``train_data`` (shuffled).
      metrics: ``{name: fn(outputs, y)}``; defaults to ``{"accuracy": jnn.metrics.accuracy}``
        for the classification losses of :mod:`jnn.losses` when the output and ``y`` are single
        arrays, and to none otherwise.
      regularizer: ``params -> scalar`` added to the loss (see :func:`jnn.train.penalty`).
      early_stopping: an :class:`jnn.train.EarlyStopping`, or ``None``: the same as adding it
        to ``callbacks`` (at most one early stopping per run).
      train_state: resume from this state instead of initializing (``key`` then only splits
        the validation set, so pass the same key to get the same split).
      params, state: start a new run from these weights (e.g. pretrained ones, or a new head on a
        pretrained body) instead of the model's initialization: the optimizer state is initialized
        fresh for them, the step starts at 0 and ``key`` drives shuffling and dropout as usual.
        Either may be left ``None`` (the model's own init is used for it). They must have the
        structure and shapes ``model.init`` gives. Not with ``train_state``, which resumes a run
        (params, state, optimizer state, step and key together).
      initial_epoch: the number of epochs ``train_state`` has already done; training runs
        epochs ``initial_epoch + 1 .. epochs`` (as in Keras). Resuming from the state saved
        after epoch k with ``initial_epoch=k`` reproduces an uninterrupted run bit for bit.
      eval_batch_size: batch size of the validation pass.
      fused: ``True`` runs each epoch as one ``lax.scan`` (a streamed epoch: one scan per chunk
        of 8 batches). ``False`` runs the same steps from a Python loop over one jitted step
        (:func:`jnn.train.make_stepwise_epoch`), with the same results up to float rounding
        (which training can amplify). ``"auto"`` (default): ``True``, except on CPU for a model
        with a convolution, where XLA runs convolutions inside loops several times slower
        (jax-ml/jax#12868; see :func:`jnn.train.loop.fuses_by_default`).
      progress: show a progress bar over epochs (needs ``rich``).
      verbose: print one line of metrics per epoch.
      history_file: write the history to this ``.csv`` or ``.jsonl`` path after every epoch
        (atomically; an existing file is never overwritten: a FileExistsError is raised).
      on_epoch_end: called as ``on_epoch_end(epoch, train_state, logs)`` after each epoch.
      callbacks: more per-epoch callbacks, run after the history file and before
        ``on_epoch_end``: functions ``(epoch, train_state, logs)`` or objects with
        ``on_epoch_end`` (see :mod:`jnn.train.callbacks`); one returning True stops training.
      mesh: a ``jax.sharding.Mesh`` (:func:`jnn.parallel.make_mesh`) to train data-parallel on:
        each batch is split along its ``data`` axis (``batch_size`` must divide by its size),
        the data is replicated on every device, and the train state is laid out by ``rules``.
        Same results as one device, up to float rounding. In a multi-process run only process
        0 prints and writes ``history_file``.
      rules: sharding rules for params and optimizer state (default: replicated), e.g.
        :func:`jnn.parallel.fsdp` or :func:`jnn.parallel.tensor_parallel`; needs ``mesh``.
      on_nonfinite: when an epoch's metrics are NaN or infinite, training stops and keeps the
        state of the last finite epoch; ``"raise"`` (default) raises a
        :class:`jnn.train.NonFiniteError` naming the epoch (it carries that state and the
        history), ``"stop"`` returns it with ``nonfinite_epoch`` set.
      debug_nonfinite: on a non-finite epoch, replay it from the last good state with
        :func:`jnn.train.find_nonfinite` and report the step, layer and examples.
      check_data: before training, check the data's values eagerly: NaN/Inf features, and
        labels the loss or metrics reject (class ids out of range, binary labels outside
        [0, 1]). ``False`` skips this pass over the data (for a stream: its first batch).
      steps_per_epoch: batches per epoch of a streamed ``train_data``, taken one after another
        from one iterator; default: a Pipeline's own, else ``len(train_data)`` with the data
        re-iterated every epoch. A stream that runs out early raises a ValueError.
      checkpoint: a :class:`jnn.train.Checkpointer` that a stream saves to every
        ``checkpoint_every`` optimizer steps, mid-epoch included: the train state, the data
        iterator's state (Grain's ``get_state``), the epoch's partial metric sums and the history.
      resume: continue from ``checkpoint``'s latest step (if it has one) with the same
        arguments as the first run: the same batches follow, and params and history equal an
        uninterrupted run's bit for bit (early stopping's best state is not restored).

    Everything that can be checked before the first step is: argument values, the validation
    data's shapes (by ``jax.eval_shape``) and the early-stopping metric's name.

    Returns:
      A :class:`FitResult` ``(train_state, history, best_epoch, stopped_early)``.

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
      >>> result = jnn.train.fit(model, jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.1),
      ...                        (x, y), key=jax.random.key(0), epochs=200, batch_size=4, metrics={},
      ...                        progress=False, verbose=False)
      >>> result.history["loss"][-1] < 0.1
      True
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or not 0 <= initial_epoch < epochs:
        raise ValueError(f"fit: initial_epoch must be an integer in [0, epochs={epochs}), got {initial_epoch!r}")
    if val_data is not None and val_split:
        raise ValueError("fit: pass either val_data or val_split, not both")
    if train_state is not None and (params is not None or state is not None):
        raise ValueError("fit: pass train_state (resume a run) or params/state (start from given weights), "
                         "not both")
    if fused not in (True, False, "auto"):
        raise ValueError(f"fit: fused must be True, False or 'auto', got {fused!r}")
    guard.check_parts("fit", model=model, optimizer=optimizer, loss=loss, metrics=metrics, regularizer=regularizer,
                      progress=progress, verbose=verbose, check_data=check_data, debug_nonfinite=debug_nonfinite,
                      resume=resume)
    guard.check_key("fit", key)
    if train_state is not None and not isinstance(train_state, TrainState):
        raise TypeError(f"fit: train_state must be a jnn.train.TrainState (from init_train_state or a previous "
                        f"fit), got {type(train_state).__name__}")
    callbacks, early_stopping = with_early_stopping("fit", callbacks, early_stopping)
    streamed, feed = _stream.is_stream(train_data), None
    try:
        if streamed:
            if val_split or debug_nonfinite:
                raise ValueError("fit: a streamed train_data takes val_data=, not val_split; and no debug_nonfinite")
            feed = _stream.Feed(train_data, steps_per_epoch if steps_per_epoch is not None else
                                getattr(train_data, "steps_per_epoch", None), mesh=mesh, where="fit")
            x, y = check_pair("fit train_data (first batch)", feed.first[0])
            batch_size = num_examples_of(feed.global_shapes()[0])   # with a mesh, every process's batch together
        elif checkpoint is not None or resume or steps_per_epoch is not None:
            raise ValueError("fit: steps_per_epoch, checkpoint and resume are for streamed train_data; for arrays "
                             "use callbacks=[checkpointer.save_every(k)] and train_state= to resume")
        else:
            x, y = check_pair("fit train_data", train_data)
        if (checkpoint_every is not None or resume) and checkpoint is None:
            raise ValueError("fit: checkpoint_every and resume need checkpoint=jnn.train.Checkpointer(directory)")
        guard.check_fit_args("fit", x, batch_size=batch_size, eval_batch_size=eval_batch_size, val_split=val_split,
                             history_file=history_file, on_nonfinite=on_nonfinite)
        init_key, split_key = jax.random.split(key)
        if val_split:
            (x, y), val_data = split_validation(x, y, val_split, split_key)
        val_streamed = _stream.is_stream(val_data)
        if val_streamed and mesh is not None:
            raise ValueError("fit: val_data as a stream is not supported with a mesh; pass (x, y) arrays")
        if val_data is not None and not val_streamed:
            val_data = check_pair("fit val_data", val_data)
        num_examples = num_examples_of(x)
        if not streamed:   # (a stream's batch_size is its global batch: every process's first batch together)
            batch_size = min(batch_size, num_examples)
        if rules is not None and mesh is None:
            raise ValueError("fit: rules shard params over a mesh; pass mesh= as well")
        if mesh is not None:
            _parallel.check_mesh(mesh, "fit")
            _parallel.check_batch_size(batch_size, mesh, "fit")

        example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x)

        def init():
            if params is not None or state is not None:
                return _start_from(model, optimizer, init_key, example, params, state)
            return init_train_state(model, optimizer, init_key, example)

        if mesh is None:
            ts = train_state if train_state is not None else init()
        else:
            ts = _parallel.place(train_state, mesh, rules) if train_state is not None else \
                _parallel.sharded_init(init, mesh, rules)
            x, y = (x, y) if streamed else _parallel.replicate((x, y), mesh)
            val_data = None if val_data is None else _parallel.replicate(val_data, mesh)
        if fused == "auto" and jax.default_backend() != "cpu":
            fused = True
        if metrics is None or fused == "auto":   # one trace of the forward pass serves both
            forward, out = _forward(model, ts, example)
            fused = fuses_by_default(forward) if fused == "auto" else fused
        if metrics is None:
            metrics = _default_metrics(out, y)
            metrics = {k: v for k, v in metrics.items() if k in guard.default_metrics(loss)}
        else:
            metrics = dict(metrics)
        step = make_train_step(model, loss, optimizer, metrics=metrics, regularizer=regularizer, mesh=mesh,
                               rules=rules)
        if streamed:
            train_epoch = _stream.StreamEpochs(step, feed, ts, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                               initial_epoch=initial_epoch, chunk=_stream.CHUNK if fused else 1)
            restored = train_epoch.resume(checkpoint, ts) if resume else None
            ts, initial_epoch = (ts, initial_epoch) if restored is None else (restored, train_epoch.epoch)
        elif fused:
            train_epoch = jax.jit(make_train_epoch(step, num_examples, batch_size, mesh=mesh),
                                  compiler_options=compiler_options())
        else:
            train_epoch = make_stepwise_epoch(step, num_examples, batch_size)
        evaluate = make_eval_fn(model, loss, metrics=metrics, batch_size=eval_batch_size, fused=fused, mesh=mesh)
        evaluate = (_stream.StreamEvaluation(evaluate) if val_streamed
                    else jax.jit(evaluate, compiler_options=compiler_options()) if fused else evaluate)
        guard.check_fit_plan("fit", step, make_eval_fn(model, loss, metrics=metrics, batch_size=eval_batch_size), ts,
                             (x, y), batch_size, None if val_streamed else val_data,
                             None if val_streamed else early_stopping, _learning_rate(ts.opt_state) is not None,
                             data_check=(model, loss, metrics) if check_data else None)

        history: dict[str, list[float]] = train_epoch.history if streamed else {}
        main = jax.process_index() == 0  # multi-process: only process 0 prints and writes files
        verbose, progress = verbose and main, progress and main
        hooks = CallbackList(callbacks, history_file=history_file if main else None, on_epoch_end=on_epoch_end)
        hooks.on_train_begin(ts)
        stopped, nonfinite_epoch, report = False, None, None
        with progress_bar(epochs - initial_epoch, enabled=progress) as bar:
            for epoch in range(initial_epoch + 1, epochs + 1):
                start = time.perf_counter()
                last_good = ts
                ts, train_logs = train_epoch(ts, (x, y))
                logs = {k: float(v) for k, v in train_logs.items()}
                if val_data is not None:
                    logs.update({f"val_{k}": float(v) for k, v in evaluate(ts.params, ts.state, val_data, ts.step).items()})
                lr = _learning_rate(ts.opt_state)
                if lr is not None:
                    logs["lr"] = lr
                logs["time"] = time.perf_counter() - start
                for k, v in {"epoch": epoch, **logs}.items():
                    history.setdefault(k, []).append(v)
                if verbose:
                    print(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
                bar.advance(logs)
                bad = guard.nonfinite_metrics(logs)
                if bad:
                    ts, nonfinite_epoch = last_good, epoch
                    if debug_nonfinite:
                        from jnn.train.nonfinite import find_nonfinite
                        report = find_nonfinite(model, loss, optimizer, ts, (x, y), batch_size=batch_size,
                                                metrics=metrics, regularizer=regularizer)
                    message = guard.nonfinite_message("fit", epoch, logs, bad, report)
                    if on_nonfinite == "raise":
                        raise guard.NonFiniteError(message, epoch=epoch, train_state=ts, history=history, report=report)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                    break
                if hooks.on_epoch_end(epoch, ts, logs):   # a callback (e.g. EarlyStopping) asked to stop
                    stopped = epoch < epochs
                    break
        restored = hooks.on_train_end(ts, history)   # EarlyStopping(restore_best=True) returns its best state
        ts = ts if restored is None else restored
        best_epoch = None if early_stopping is None else int(early_stopping.best_epoch) or None
        return FitResult(ts, history, best_epoch, stopped, nonfinite_epoch, report)
    finally:   # Grain's worker processes and shared memory go now, not at interpreter exit
        if feed is not None:
            feed.close()


def predict(model: Layer, params, state, x, *, batch_size: int = 1000):
    """The model's evaluation-mode outputs for all of ``x``, computed in batches.

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
    outs = [apply(params, state, gather(x, slice(i, i + batch_size))) for i in range(0, n, batch_size)]
    return jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *outs)
