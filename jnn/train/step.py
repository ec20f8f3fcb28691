"""Pure training and evaluation steps over a :class:`TrainState` pytree (they compose with
``jax.jit``, ``jax.lax.scan`` and ``jax.vmap``: a population is a vmap over train states)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn import _checks as checks
from jnn import losses as _losses
from jnn.parallel import mesh as _parallel
from jnn import tree as _tree
from jnn.core import Layer
from jnn.train import guard
from jnn.train.compiler import jit_outermost
from jnn.train.permutation import permutation

__all__ = ["TrainState", "init_train_state", "loss_and_grad", "default_metrics", "make_train_step", "step_key",
           "make_train_epoch", "as_arrays", "gather", "num_examples_of", "shuffle_epoch", "make_stepwise_epoch",
           "epoch_order", "make_eval_fn", "penalty", "Metrics"]

Metrics = Mapping[str, Callable[[Any, Any], jax.Array]]
#: ``loss(outputs, y) -> scalar``, or ``loss(outputs, y, step) -> scalar`` (a parameter named
#: ``step``), either of which may instead return ``(scalar, {name: scalar})``: see :func:`make_train_step`.
LossFn = Callable[..., Any]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree: ``params``, ``state`` (e.g. batch-norm
    statistics), ``opt_state`` (optax), ``step`` (optimizer updates taken, int32) and ``key`` (a step
    gives the model ``fold_in(key, step)``, :func:`step_key`; each epoch's shuffle splits it).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
      >>> ts._fields
      ('params', 'state', 'opt_state', 'step', 'key')
    """

    params: Any
    state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def init_train_state(model: Layer, optimizer: optax.GradientTransformation, key: jax.Array,
                     example) -> TrainState:
    """Initializes params, state and optimizer state for ``example`` (array or ShapeDtypeStruct).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))
      >>> int(ts.step), ts.params["w"].shape
      (0, (3, 2))
    """
    init_key, train_key = jax.random.split(key)
    params, state = model.init(init_key, example)
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), train_key)


def penalty(*, l1: float = 0.0, l2: float = 0.0, include=_tree.WEIGHTS, exclude=()) -> Callable:
    """A regularizer ``params -> l1 * sum|w| + l2 * sum w**2`` over the leaves selected by path
    pattern (default: the weights ``w``; other float leaves of rank >= 2 raise, see :mod:`jnn.tree`).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> reg = jnn.train.penalty(l2=0.5)
      >>> float(reg({"dense_0": {"w": jnp.array([2.0]), "b": jnp.array([9.0])}}))
      2.0
    """
    if l1 < 0 or l2 < 0:
        raise ValueError(f"penalty: l1 and l2 must be >= 0, got l1={l1}, l2={l2}")

    terms = [(c, fn) for c, fn in ((l1, _losses.l1_penalty), (l2, _losses.l2_penalty)) if c]

    def regularizer(params):
        return sum((c * fn(params, include=include, exclude=exclude) for c, fn in terms), jnp.zeros((), jnp.float32))

    return regularizer


def _as_float32(tree):
    """Every floating leaf of the model's outputs (an array or a pytree of arrays) in float32."""
    return jax.tree_util.tree_map(
        lambda y: y.astype(jnp.float32) if jnp.issubdtype(y.dtype, jnp.floating) else y, tree)


def _takes_step(loss) -> bool:
    """Whether ``loss`` has a parameter named ``step`` (read once, when a step is built)."""
    try:
        return "step" in inspect.signature(loss).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False


def _loss_and_logs(loss, takes_step: bool, outputs, y, step, reserved=()):
    """Calls ``loss`` (with ``step=`` when it takes one); returns ``(scalar, logs dict)``."""
    result = loss(outputs, y, step=step) if takes_step else loss(outputs, y)
    return checks.loss_result(result, reserved)


def step_key(ts: TrainState) -> jax.Array:
    """The key a train step gives the model: ``jax.random.fold_in(ts.key, ts.step)`` (the state's
    key never changes within an epoch, so a model that draws nothing costs nothing).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
      >>> a, b = step_key(ts), step_key(ts._replace(step=ts.step + 1))
      >>> bool(jnp.all(jax.random.key_data(a) == jax.random.key_data(b)))
      False
    """
    return jax.random.fold_in(ts.key, ts.step)


def gather(tree, idx):
    """``tree[idx]`` leaf by leaf (examples on the first axis of every leaf)."""
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def as_arrays(tree):
    """``tree`` with every leaf a jax array; only dicts and tuples are containers (a list of
    numbers is one array, as ``jnp.asarray`` reads it)."""
    return jax.tree_util.tree_map(jnp.asarray, tree, is_leaf=lambda t: not isinstance(t, (dict, tuple)))


def num_examples_of(tree) -> int:
    """The leading (example) axis shared by the leaves of ``x`` or ``y``."""
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def default_metrics(loss: LossFn, outputs, y) -> dict:
    """The metrics of ``metrics=None`` (in ``fit``, :func:`make_train_step`, :func:`make_eval_fn`):
    accuracy for a classification loss of :mod:`jnn.losses` when ``outputs`` and ``y`` are single
    arrays (or ShapeDtypeStructs), else none.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> out, y = jnp.zeros((2, 3)), jnp.zeros(2, int)
      >>> list(default_metrics(jnn.losses.softmax_cross_entropy, out, y)), default_metrics(jnn.losses.mse, out, y)
      (['accuracy'], {})
    """
    single = all(isinstance(a, (jax.Array, jax.ShapeDtypeStruct, np.ndarray)) for a in (outputs, y))
    return guard.default_metrics(loss) if single else {}


@checks.declare(metrics=checks.log_names)
def loss_and_grad(model: Layer, loss: LossFn, *, metrics: Metrics | None = None, regularizer: Callable | None = None):
    """``f(params, state, (x, y), *, key=None, step=0, train=True) -> (loss, grads, new_state, logs)``.

    ``loss`` is the float32 data loss of the batch (the model's outputs cast to float32),
    ``grads`` the gradient of ``loss + regularizer(params)`` w.r.t. ``params``, ``logs``
    ``{"loss", the loss's own logs, each metric}`` (``metrics=None``: :func:`default_metrics`).
    ``key`` goes to the model as is (:func:`make_train_step` passes :func:`step_key`), ``step`` to
    a loss that takes one. :func:`make_train_step` is this plus an optax update.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(1)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> f = jax.jit(jnn.train.loss_and_grad(model, jnn.losses.mse))
      >>> loss, grads, state, logs = f(params, state, (jnp.ones((4, 2)), jnp.zeros((4, 1))))
      >>> grads["w"].shape, sorted(logs)
      ((2, 1), ['loss'])
    """
    takes_step = _takes_step(loss)
    chosen = lambda out, y: default_metrics(loss, out, y) if metrics is None else dict(metrics)

    def loss_grad(params, state, batch, *, key=None, step=0, train=True):
        x, y = batch

        def objective(params):
            out, new_state = model.apply(params, state, x, key=key, train=train)
            out = _as_float32(out)
            data_loss, loss_logs = _loss_and_logs(loss, takes_step, out, y, step, chosen(out, y))
            total = data_loss + regularizer(params) if regularizer is not None else data_loss
            return total, (data_loss, loss_logs, out, new_state)

        grads, (data_loss, loss_logs, out, new_state) = jax.grad(objective, has_aux=True)(params)
        logs = {"loss": data_loss, **loss_logs, **checks.metric_values(chosen(out, y), out, y)}
        return data_loss, grads, new_state, logs

    return loss_grad


@checks.declare(accumulate=checks.positive_int, metrics=checks.log_names)
def make_train_step(model: Layer, loss: LossFn, optimizer: optax.GradientTransformation, *,
                    metrics: Metrics | None = None, regularizer: Callable | None = None, accumulate: int = 1,
                    mesh=None, rules=None):
    """A pure step ``(train_state, (x, y)) -> (train_state, logs)``: :func:`loss_and_grad` on the
    batch with :func:`step_key`, then one optimizer update; jit it once.

    ``x``, ``y`` and the outputs may be pytrees of arrays. ``loss(outputs, y)`` (or ``loss(outputs,
    y, step)``, called with ``step=`` the updates taken so far) returns a scalar or ``(scalar,
    {name: scalar})``, whose names join the logs; ``metrics``: ``{name: fn(outputs, y) -> scalar}``
    on the training-mode outputs (``None``: :func:`default_metrics`). No name may be the history's
    own (loss, epoch, time, lr, val_*). ``regularizer(params)`` is added to the loss for the
    gradient, not to the logged ``"loss"``.

    ``accumulate=k``: the batch is split into ``k`` micro-batches run in a ``lax.scan`` (peak memory:
    one micro-batch's); their float32 mean gradient makes one update (``train_state.step`` counts
    updates). Micro-batch ``i`` gets the key ``fold_in(step_key(ts), i)``; model state (batch-norm
    statistics) is threaded through them; logs are their means.

    With a ``mesh`` (:func:`jnn.parallel.make_mesh`) each (micro-)batch is split along its ``data``
    axis and the new train state laid out by ``rules`` (default: replicated).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model, opt = jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((4, 2)))
      >>> step = jax.jit(jnn.train.make_train_step(model, jnn.losses.mse, opt, accumulate=2))
      >>> ts, logs = step(ts, (jnp.ones((4, 2)), jnp.zeros((4, 1))))
      >>> int(ts.step), sorted(logs)
      (1, ['loss'])
    """
    loss_grad = loss_and_grad(model, loss, metrics=metrics, regularizer=regularizer)
    constrain = (lambda b: b) if mesh is None else lambda b: _parallel.constrain_batch(b, mesh, "make_train_step")
    if mesh is not None:
        _parallel.check_mesh(mesh, "make_train_step")

    def accumulated(ts: TrainState, batch):
        m = checks.micro_batches("make_train_step", num_examples_of(batch), accumulate)
        micro = jax.tree_util.tree_map(lambda a: a.reshape(accumulate, m, *a.shape[1:]), batch)

        def one(carry, i_batch):
            total, state = carry
            _, grads, state, logs = loss_grad(ts.params, state, constrain(i_batch[1]),
                                              key=jax.random.fold_in(step_key(ts), i_batch[0]), step=ts.step)
            return (jax.tree_util.tree_map(lambda t, g: t + g.astype(jnp.float32), total, grads), state), logs

        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), ts.params)
        (total, state), logs = jax.lax.scan(one, (zeros, ts.state), (jnp.arange(accumulate), micro))
        grads = jax.tree_util.tree_map(lambda t, p: (t / accumulate).astype(p.dtype), total, ts.params)
        return grads, state, jax.tree_util.tree_map(jnp.mean, logs)

    def train_step(ts: TrainState, batch):
        if accumulate > 1:
            grads, new_state, logs = accumulated(ts, batch)
        else:
            _, grads, new_state, logs = loss_grad(ts.params, ts.state, constrain(batch), key=step_key(ts), step=ts.step)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        new_ts = TrainState(optax.apply_updates(ts.params, updates), new_state, opt_state, ts.step + 1, ts.key)
        return (new_ts if mesh is None else _parallel.constrain_state(new_ts, mesh, rules)), logs

    return train_step


def epoch_order(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """One epoch's batches: ``int32 [num_examples // batch_size, batch_size]`` example indices,
    a random permutation drawn from ``key`` (:func:`jnn.train.permutation.permutation`) with the
    ragged remainder left out.

    Example:
      >>> import jax
      >>> epoch_order(jax.random.key(0), 10, 4).shape
      (2, 4)
    """
    num_batches = checks.num_batches("epoch_order", num_examples, batch_size)
    order = permutation(key, num_examples)[: num_batches * batch_size]  # no sort: fast vmapped
    return order.reshape(num_batches, batch_size)


def shuffle_epoch(ts: TrainState, num_examples: int, batch_size: int, order=None):
    """Splits the state's key; returns the new state and this epoch's order: ``order`` when
    given, else drawn from the other half of the key."""
    key, perm_key = jax.random.split(ts.key)
    if order is None:
        order = epoch_order(perm_key, num_examples, batch_size)
    return ts._replace(key=key), order


def make_train_epoch(train_step, num_examples: int, batch_size: int, *, mesh=None):
    """A pure epoch ``(train_state, (x, y), order=None) -> (train_state, mean logs)``: shuffles with
    the state's key and runs every full batch in one ``jax.lax.scan``; the ``num_examples %
    batch_size`` left over are skipped this epoch (one static shape, no recompiles).

    ``order`` (``[num_batches, batch_size]`` indices, e.g. :func:`epoch_order`) replaces the
    shuffle; the key is split as without it (populations share one order this way). ``mesh``:
    check that ``batch_size`` splits over its ``data`` axis (``train_step`` does the splitting).

    Example:
      >>> import jax, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model, opt = jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
      >>> step = jnn.train.make_train_step(model, jnn.losses.mse, opt)
      >>> epoch = jax.jit(jnn.train.make_train_epoch(step, len(x), batch_size=2))
      >>> ts, logs = epoch(ts, (x, y))
      >>> int(ts.step), sorted(logs)
      (2, ['loss'])
    """
    checks.num_batches("make_train_epoch", num_examples, batch_size)
    if mesh is not None:
        _parallel.check_mesh(mesh, "make_train_epoch")
        _parallel.check_batch_size(batch_size, mesh, "make_train_epoch")

    def train_epoch(ts: TrainState, data, order=None):
        ts, order = shuffle_epoch(ts, num_examples, batch_size, order)
        ts, logs = jax.lax.scan(lambda ts, idx: train_step(ts, gather(data, idx)), ts, order)
        return ts, jax.tree_util.tree_map(jnp.mean, logs)

    return train_epoch


def make_stepwise_epoch(train_step, num_examples: int, batch_size: int):
    """The epoch of :func:`make_train_epoch` (same shuffle, steps and result) as a Python loop over
    one jitted step: for conv nets on CPU, where XLA runs convolutions in a loop slowly (jax-ml/jax#12868).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> x, y = jnn.data.xor()
      >>> model, opt = jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
      >>> step = jnn.train.make_train_step(model, jnn.losses.mse, opt)
      >>> a, _ = jnn.train.make_stepwise_epoch(step, len(x), batch_size=2)(ts, (x, y))
      >>> b, _ = jax.jit(jnn.train.make_train_epoch(step, len(x), batch_size=2))(ts, (x, y))
      >>> int(a.step), bool(jnp.allclose(a.params["w"], b.params["w"]))
      (2, True)
    """
    num_batches = checks.num_batches("make_stepwise_epoch", num_examples, batch_size)
    shuffle = jax.jit(lambda ts: shuffle_epoch(ts, num_examples, batch_size))
    step = jit_outermost(lambda ts, data, idx: train_step(ts, gather(data, idx)))

    def train_epoch(ts: TrainState, data):
        ts, order = shuffle(ts)
        totals = None
        for i in range(num_batches):
            ts, logs = step(ts, tuple(data), order[i])
            totals = logs if totals is None else jax.tree_util.tree_map(jnp.add, totals, logs)
        return ts, jax.tree_util.tree_map(lambda v: v / num_batches, totals)

    train_epoch.step = step  # exposed for compile-count checks
    return train_epoch


@checks.declare(metrics=checks.log_names)
def make_eval_fn(model: Layer, loss: LossFn, *, metrics: Metrics | None = None, batch_size: int = 1000,
                 fused: bool = True, mesh=None):
    """A pure ``(params, state, (x, y), step=None) -> logs`` over a whole dataset in eval mode:
    ``"loss"``, the loss's own logs and each metric (``None``: :func:`default_metrics`) as exact
    means over the examples (computed per example; the last batch is padded and masked).

    ``x``, ``y`` and the outputs may be pytrees. ``step`` goes to a loss that takes one (required
    then; e.g. ``train_state.step``). ``fused=True``: one ``lax.scan`` (jit the result);
    ``False``: a Python loop over one jitted batch function. With a ``mesh``, each batch (rounded
    up to a multiple of the ``data`` axis) is split along it.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.dense(1)
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 2)))
      >>> evaluate = jax.jit(jnn.train.make_eval_fn(model, jnn.losses.mse, batch_size=2))
      >>> x, y = jnp.ones((3, 2)), jnp.zeros((3, 1))
      >>> bool(jnp.isclose(evaluate(params, state, (x, y))["loss"], jnp.mean(model.apply(params, state, x)[0] ** 2)))
      True
    """
    takes_step = _takes_step(loss)

    def per_example(out, y, step):
        chosen = default_metrics(loss, out, y) if metrics is None else dict(metrics)

        def one(o, t):
            o, t = jax.tree_util.tree_map(lambda a: a[None], (o, t))
            value, logs = _loss_and_logs(loss, takes_step, o, t, step, chosen)
            return {"loss": value, **logs, **checks.metric_values(chosen, o, t)}
        return jax.vmap(one)(out, y)

    def batch_totals(params, state, xb, yb, mb, step):
        if mesh is not None:
            xb, yb, mb = _parallel.constrain_batch((xb, yb, mb), mesh, "make_eval_fn")
        out = _as_float32(model.apply(params, state, xb, train=False)[0])
        return {k: jnp.sum(jnp.where(mb, v, 0.0)) for k, v in per_example(out, yb, step).items()}

    def batched(data):
        data = as_arrays(data)
        n = num_examples_of(data)
        bs = min(batch_size, n)
        if mesh is not None:
            bs = -(-bs // _parallel.data_size(mesh)) * _parallel.data_size(mesh)
        num_batches = -(-n // bs)
        pad = num_batches * bs - n
        padded = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]).reshape(
            num_batches, bs, *a.shape[1:])
        mask = (jnp.arange(num_batches * bs) < n).reshape(num_batches, bs)
        x, y = jax.tree_util.tree_map(padded, tuple(data))
        return n, (x, y, mask)

    def check_step(step):
        if takes_step and step is None:
            raise ValueError("make_eval_fn: the loss takes the step; call evaluate(params, state, data, "
                             "step=...) (e.g. step=train_state.step)")
        return None if step is None or not takes_step else jnp.asarray(step, jnp.int32)

    def evaluate(params, state, data, step=None):
        step = check_step(step)
        n, batches = batched(data)
        _, per_batch = jax.lax.scan(lambda c, b: (c, batch_totals(params, state, *b, step)), None, batches)
        return {k: jnp.sum(v) / n for k, v in per_batch.items()}

    def sum_batches(totals, data):   # means over the examples of totals(x, y, mask), called once per batch
        n, (xs, ys, masks) = batched(data)
        per_batch = [totals(gather(xs, i), gather(ys, i), masks[i]) for i in range(len(masks))]
        return {k: sum(t[k] for t in per_batch) / n for k in per_batch[0]}

    # batch_totals: (params, state, x, y, mask, step) -> summed metrics (streamed and member-wise evaluation)
    evaluate.batch_totals, evaluate.sum_batches = batch_totals, sum_batches
    if fused:
        return evaluate
    batch_totals_jit = jit_outermost(batch_totals)

    def evaluate_stepwise(params, state, data, step=None):
        step = check_step(step)
        return sum_batches(lambda *b: batch_totals_jit(params, state, *b, step), data)

    return evaluate_stepwise
