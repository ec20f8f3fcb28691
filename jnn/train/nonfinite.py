"""``find_nonfinite``: replay an epoch step by step from the last good state (training is pure
and seeded, so the same steps repeat) and locate the first non-finite value."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn import core
from jnn.train.step import shuffle_epoch, make_train_step, step_key

__all__ = ["replay_members", "NonFiniteReport", "find_nonfinite"]


class NonFiniteReport(NamedTuple):
    """Where training first went non-finite: ``step`` (before the failing update), ``batch`` (in the
    epoch), ``layer`` (first path with a non-finite output, else gradient; ``"(loss)"``, ``"(input)"``,
    or ``None`` for the update), ``kind`` (``"input"``, ``"output"``, ``"loss"``, ``"gradient"``,
    ``"update"``), ``examples`` (training-data indices) and ``bad_input`` (their inputs non-finite).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> (x, y), model, opt = jnn.data.xor(), jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
      >>> report = jnn.train.find_nonfinite(model, lambda out, y: jnp.mean(out - y) * jnp.nan, opt, ts, (x, y),
      ...                                   batch_size=2)
      >>> report.step, report.batch, report.layer, report.kind, len(report.examples), report.bad_input
      (0, 0, '(loss)', 'loss', 2, False)
    """

    step: int
    batch: int
    layer: str | None
    kind: str
    examples: tuple[int, ...]
    bad_input: bool = False

    def __str__(self):
        where = f"layer {self.layer!r}" if self.layer else "the optimizer update"
        cause = " (their input features are non-finite)" if self.bad_input else ""
        return (f"first non-finite value at step {self.step} (batch {self.batch} of the epoch): "
                f"{self.kind} of {where}; training examples involved: {list(self.examples)}{cause}")


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def _bad_rows(a) -> np.ndarray:
    a = np.asarray(a)
    return np.flatnonzero(~np.isfinite(a.reshape(a.shape[0] if a.ndim else 1, -1)).all(axis=1))


def _layer_outputs(model, params, state, x, key):
    """Every child's output (in completion order, so the deepest first) by path, under jit."""
    paths: list[str] = []

    def run(params, state, x, key):
        with core.recording() as records:
            model.apply(params, state, x, key=key, train=True)
        paths[:] = [path for path, *_ in records]
        return [y for _, _, y, _ in records]

    return list(zip(paths, jax.jit(run)(params, state, x, key)))


def _subtree(tree, path: str):
    for part in path.split("/"):
        if not isinstance(tree, dict) or part not in tree:
            return {}
        tree = tree[part]
    return tree


def find_nonfinite(model, loss, optimizer, train_state, train_data, *, batch_size: int,
                   metrics=None, regularizer=None) -> NonFiniteReport | None:
    """Replays one epoch of ``fit`` (same shuffle, keys and arguments) from the last good ``train_state``
    over ``(x, y)``: a :class:`NonFiniteReport` of the first non-finite value, or ``None``.

    Example:
      >>> import jax, optax, jnn
      >>> (x, y), model, opt = jnn.data.xor(), jnn.dense(1), optax.sgd(0.1)
      >>> ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:1])
      >>> print(jnn.train.find_nonfinite(model, jnn.losses.mse, opt, ts, (x, y), batch_size=2))   # all finite
      None
    """
    x, y = (jnp.asarray(a) for a in train_data)
    step = jax.jit(make_train_step(model, loss, optimizer, metrics=metrics, regularizer=regularizer))
    ts, order = shuffle_epoch(train_state, len(x), batch_size)
    for i, idx in enumerate(np.asarray(order)):
        batch = (x[idx], y[idx])
        new_ts, logs = step(ts, batch)
        if _finite(logs) and _finite(new_ts.params):
            ts = new_ts
            continue
        layer, kind, rows = _locate(model, loss, ts, batch)
        bad_input = bool(len(rows)) and not _finite(jax.tree_util.tree_map(lambda a: a[rows], batch[0]))
        return NonFiniteReport(int(ts.step), i, layer, kind, tuple(int(idx[r]) for r in rows), bad_input)
    return None


def _locate(model, loss, ts, batch):
    x, y = batch
    key = step_key(ts)  # the key the step gave the model
    for path, out in (outputs := _layer_outputs(model, ts.params, ts.state, x, key)):
        if not _finite(out):
            return path, "output", _bad_rows(jax.tree_util.tree_leaves(out)[0])

    def example_loss(params, xi, yi):
        out, _ = model.apply(params, ts.state, xi[None], key=key, train=True)
        return loss(out.astype(jnp.float32), yi[None])

    per_example = jax.jit(jax.vmap(example_loss, in_axes=(None, 0, 0)))(ts.params, x, y)
    if not _finite(per_example):
        return "(loss)", "loss", _bad_rows(per_example)
    grads = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))(ts.params, x, y)
    for path, _ in outputs:
        g = _subtree(grads, path)
        if jax.tree_util.tree_leaves(g) and not _finite(g):
            rows = np.unique(np.concatenate([_bad_rows(leaf) for leaf in jax.tree_util.tree_leaves(g)]))
            return path, "gradient", rows
    if not _finite(x):
        return "(input)", "input", _bad_rows(x)
    return None, "update", np.arange(len(x))


def replay_members(program, hparams, states, data, members) -> dict:
    """:func:`find_nonfinite` for each of ``members`` of a population alone, from batched ``states``."""
    def replay(i):
        hp = {k: v[i] for k, v in hparams.items()}
        return find_nonfinite(program.make_model(hp), program.loss, program.make_optimizer(hp),
                              jax.tree_util.tree_map(lambda a: a[i], states), data, batch_size=program.batch_size,
                              metrics=dict(program.metrics), regularizer=program.regularizer)
    return {int(i): replay(i) for i in members}
