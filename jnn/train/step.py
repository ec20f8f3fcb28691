"""Pure training and evaluation steps over a :class:`TrainState` pytree.

Everything here is a pure function of arrays, so it composes with ``jax.jit``,
``jax.lax.scan`` and ``jax.vmap`` (a population of models is a vmap over train states).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnn import losses as _losses
from jnn import tree as _tree
from jnn.core import Layer
from jnn.train.permutation import permutation

__all__ = ["TrainState", "init_train_state", "make_train_step", "make_train_epoch", "make_stepwise_epoch",
           "epoch_order", "make_eval_fn", "penalty", "Metrics"]

Metrics = Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's parameters.
      state: the model's non-trained state (e.g. batch-norm running statistics).
      opt_state: the optax optimizer state.
      step: number of optimizer steps taken, an int32 scalar.
      key: the PRNG key that drives dropout and shuffling from here on.
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
    """A regularizer ``params -> l1 * sum|w| + l2 * sum w**2`` over the leaves selected by
    path pattern (by default the weights ``w``: not biases, norm scales or embeddings).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> reg = jnn.train.penalty(l2=0.5)
      >>> float(reg({"dense_0": {"w": jnp.array([2.0]), "b": jnp.array([9.0])}}))
      2.0
    """
    if l1 < 0 or l2 < 0:
        raise ValueError(f"penalty: l1 and l2 must be >= 0, got l1={l1}, l2={l2}")

    def regularizer(params):
        total = jnp.zeros((), jnp.float32)
        if l1:
            total += l1 * _losses.l1_penalty(params, include=include, exclude=exclude)
        if l2:
            total += l2 * _losses.l2_penalty(params, include=include, exclude=exclude)
        return total

    return regularizer


def _as_float32(y):
    return y.astype(jnp.float32) if jnp.issubdtype(y.dtype, jnp.floating) else y


def make_train_step(model: Layer, loss: LossFn, optimizer: optax.GradientTransformation, *,
                    metrics: Metrics | None = None, regularizer: Callable | None = None):
    """A pure step ``(train_state, (x, y)) -> (train_state, metrics)``; jit it once.

    The loss is computed in float32 from the model's outputs (whatever the compute dtype),
    plus ``regularizer(params)`` when given. ``metrics`` maps names to functions of
    ``(outputs, y)`` evaluated on the training-mode outputs of the batch; the returned dict
    holds ``"loss"`` (without the regularizer) and each metric.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model, opt = jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((4, 2)))
      >>> step = jax.jit(jnn.train.make_train_step(model, jnn.losses.mse, opt))
      >>> ts, m = step(ts, (jnp.ones((4, 2)), jnp.zeros((4, 1))))
      >>> int(ts.step)
      1
    """
    metrics = dict(metrics or {})

    def train_step(ts: TrainState, batch):
        x, y = batch
        key, step_key = jax.random.split(ts.key)

        def objective(params):
            out, new_state = model.apply(params, ts.state, x, key=step_key, train=True)
            out = _as_float32(out)
            data_loss = loss(out, y)
            total = data_loss + regularizer(params) if regularizer is not None else data_loss
            return total, (data_loss, out, new_state)

        grads, (data_loss, out, new_state) = jax.grad(objective, has_aux=True)(ts.params)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        logs = {"loss": data_loss, **{name: fn(out, y) for name, fn in metrics.items()}}
        return TrainState(params, new_state, opt_state, ts.step + 1, key), logs

    return train_step


def _epoch_batches(num_examples: int, batch_size: int, where: str) -> int:
    if batch_size <= 0:
        raise ValueError(f"{where}: batch_size must be positive, got {batch_size}")
    num_batches = num_examples // batch_size
    if num_batches == 0:
        raise ValueError(f"{where}: {num_examples} training examples is fewer than one batch "
                         f"of {batch_size}; lower batch_size")
    return num_batches


def epoch_order(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """One epoch's batches: ``int32 [num_examples // batch_size, batch_size]`` example indices,
    a random permutation drawn from ``key`` (:func:`jnn.train.permutation.permutation`) with the
    ragged remainder left out.

    Example:
      >>> import jax
      >>> epoch_order(jax.random.key(0), 10, 4).shape
      (2, 4)
    """
    num_batches = _epoch_batches(num_examples, batch_size, "epoch_order")
    order = permutation(key, num_examples)[: num_batches * batch_size]  # no sort: fast vmapped
    return order.reshape(num_batches, batch_size)


def _shuffle(ts: TrainState, num_examples: int, batch_size: int, order=None):
    """Splits the state's key; returns the new state and this epoch's order: ``order`` when
    given, else drawn from the other half of the key."""
    key, perm_key = jax.random.split(ts.key)
    if order is None:
        order = epoch_order(perm_key, num_examples, batch_size)
    return ts._replace(key=key), order


def make_train_epoch(train_step, num_examples: int, batch_size: int):
    """A pure epoch ``(train_state, (x, y), order=None) -> (train_state, mean metrics)`` that
    shuffles with the state's key and runs every full batch inside one ``jax.lax.scan``.

    Ragged last batch: the ``num_examples % batch_size`` examples left over after shuffling
    are skipped for this epoch (they are drawn again, with different neighbours, in the next
    one), so every step has one static shape and nothing recompiles.

    ``order`` (``[num_batches, batch_size]`` indices, e.g. from :func:`epoch_order`) replaces the
    state's own shuffle; the state's key is split exactly as without it, so everything else
    (dropout masks, later epochs' keys) stays the same. Populations use it to share one batch
    order between members (``fit_population(..., shared_order=True)``).
    """
    _epoch_batches(num_examples, batch_size, "make_train_epoch")

    def train_epoch(ts: TrainState, data, order=None):
        x, y = data
        ts, order = _shuffle(ts, num_examples, batch_size, order)
        ts, logs = jax.lax.scan(lambda ts, idx: train_step(ts, (x[idx], y[idx])), ts, order)
        return ts, jax.tree_util.tree_map(jnp.mean, logs)

    return train_epoch


def make_stepwise_epoch(train_step, num_examples: int, batch_size: int):
    """The same epoch as :func:`make_train_epoch` (same shuffle, same steps, same result), run as
    a Python loop over one jitted step instead of one scan.

    Use it where a loop body compiles badly: on CPU, XLA runs convolutions inside a loop far
    slower than outside one (jax-ml/jax#12868; 30x here), so conv nets train faster this way on
    CPU. Data stays on device; each step gathers its batch by index; nothing recompiles.
    """
    num_batches = _epoch_batches(num_examples, batch_size, "make_stepwise_epoch")
    shuffle = jax.jit(lambda ts: _shuffle(ts, num_examples, batch_size))
    step = jax.jit(lambda ts, x, y, idx: train_step(ts, (x[idx], y[idx])))

    def train_epoch(ts: TrainState, data):
        x, y = data
        ts, order = shuffle(ts)
        totals = None
        for i in range(num_batches):
            ts, logs = step(ts, x, y, order[i])
            totals = logs if totals is None else jax.tree_util.tree_map(jnp.add, totals, logs)
        return ts, jax.tree_util.tree_map(lambda v: v / num_batches, totals)

    train_epoch.step = step  # exposed for compile-count checks
    return train_epoch


def make_eval_fn(model: Layer, loss: LossFn, *, metrics: Metrics | None = None, batch_size: int = 1000,
                 fused: bool = True):
    """A pure ``(params, state, (x, y)) -> metrics`` over a whole dataset, exact to the example.

    The data is padded to whole batches; each example's loss and metrics are computed on its
    own (the loss and metric functions are vmapped over single-example batches) and padded rows
    are masked out, so ``"loss"`` and each metric are exact means over the ``len(x)``
    examples, whatever ``batch_size`` is. With ``fused=True`` the batches run in one
    ``lax.scan`` (jit the result); with ``fused=False`` a Python loop calls one jitted batch
    function (see :func:`make_stepwise_epoch` for why: conv nets on CPU).
    """
    fns = {"loss": loss, **dict(metrics or {})}

    def per_example(fn, out, y):
        return jax.vmap(lambda o, t: fn(o[None], t[None]))(out, y)

    def batch_totals(params, state, xb, yb, mb):
        out = _as_float32(model.apply(params, state, xb, train=False)[0])
        return {k: jnp.sum(jnp.where(mb, per_example(fn, out, yb), 0.0)) for k, fn in fns.items()}

    def batched(data):
        x, y = data
        n = x.shape[0]
        bs = min(batch_size, n)
        num_batches = -(-n // bs)
        pad = num_batches * bs - n
        padded = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]).reshape(
            num_batches, bs, *a.shape[1:])
        mask = (jnp.arange(num_batches * bs) < n).reshape(num_batches, bs)
        return n, (padded(x), padded(y), mask)

    def evaluate(params, state, data):
        n, batches = batched(data)
        zeros = {k: jnp.zeros((), jnp.float32) for k in fns}
        totals, _ = jax.lax.scan(
            lambda totals, b: (jax.tree_util.tree_map(jnp.add, totals, batch_totals(params, state, *b)), None),
            zeros, batches)
        return {k: v / n for k, v in totals.items()}

    if fused:
        return evaluate
    batch_totals_jit = jax.jit(batch_totals)

    def evaluate_stepwise(params, state, data):
        n, (xs, ys, masks) = batched(tuple(map(jnp.asarray, data)))
        totals = [batch_totals_jit(params, state, xs[i], ys[i], masks[i]) for i in range(len(xs))]
        return {k: sum(t[k] for t in totals) / n for k in fns}

    return evaluate_stepwise
