"""Meshes, train-state placement and batch sharding: one jitted program over many devices (GSPMD).

jnn builds meshes with **Auto** axes (``jax.sharding.AxisType.Auto``), deliberately. With
Explicit axes (the default of ``jax.make_mesh`` in JAX 0.10) shardings become part of every
array's type, and the backward pass of a plain ``x @ w`` with a batch sharded along ``data``
fails to type-check (``ShardingTypeError``, jax-ml/jax#31800). With Auto axes we only state the
layout of the inputs and of the train state (``NamedSharding`` + ``with_sharding_constraint``)
and XLA's partitioner propagates it through the model, its gradient and the optimizer, so every
layer works unchanged. A mesh with Explicit axes is refused with a message saying how to build
an Auto one.

Axis names: ``data`` (the batch is split along it) and ``model`` (tensor-parallel weights).
Params and optimizer state are replicated unless a rule (:mod:`jnn.parallel.rules`) shards them.
Under GSPMD, a mean over the batch axis of a ``data``-sharded array is the global mean, so the
loss, the metrics and batch-norm statistics all cover the global batch.

Example:
  >>> import jax, jnn
  >>> mesh = jnn.parallel.make_mesh()          # every device on the "data" axis
  >>> mesh.axis_names
  ('data', 'model')
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import tree as _tree
from jnn.parallel.rules import Rule, param_specs

__all__ = ["make_mesh", "check_mesh", "data_size", "state_specs", "state_shardings", "place",
           "constrain_state", "constrain_batch", "check_batch_size", "replicate", "sharded_init"]


def make_mesh(data: int | None = None, model: int = 1, *, devices: Sequence | None = None) -> Mesh:
    """A ``("data", "model")`` mesh with Auto axes over ``devices`` (default: all of them).

    Args:
      data: devices along the batch axis (default: all devices not used by ``model``).
      model: devices along the tensor-parallel axis.
      devices: the devices to use (e.g. ``jax.devices()[:4]``).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(model, int) or model < 1 or len(devices) % model:
        raise ValueError(f"make_mesh: model must be a positive integer dividing the {len(devices)} devices, "
                         f"got {model!r}")
    data = len(devices) // model if data is None else data
    if not isinstance(data, int) or data < 1 or data * model > len(devices):
        raise ValueError(f"make_mesh: data * model must be at most the {len(devices)} devices, "
                         f"got data={data!r}, model={model}")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[:data * model])


def check_mesh(mesh, where: str) -> None:
    """Raises unless ``mesh`` is a ``jax.sharding.Mesh`` with a ``data`` axis and Auto axes."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh (e.g. jnn.parallel.make_mesh()), "
                        f"got {type(mesh).__name__}")
    if "data" not in mesh.axis_names:
        raise ValueError(f"{where}: the mesh needs a 'data' axis for the batch, its axes are {mesh.axis_names}")
    explicit = [n for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Auto]
    if explicit:
        raise ValueError(f"{where}: mesh axes {explicit} are not Auto; jnn shards with Auto axes because "
                         f"Explicit axes break the backward pass of x @ w with a sharded batch "
                         f"(jax-ml/jax#31800). Build the mesh with jnn.parallel.make_mesh(...) or "
                         f"jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))")


def data_size(mesh) -> int:
    """How many ways the batch is split (the size of the ``data`` axis)."""
    return int(mesh.shape["data"])


def check_batch_size(batch_size: int, mesh, where: str) -> None:
    """Raises unless ``batch_size`` (the global batch) divides evenly over the data axis."""
    n = data_size(mesh)
    if batch_size % n:
        raise ValueError(f"{where}: the batch of {batch_size} examples is not divisible by the mesh's data "
                         f"axis of size {n}; use a batch size that is a multiple of {n}")


def _opt_leaf_spec(path: str, leaf, by_path: dict) -> P:
    parts = path.split("/")
    for k in range(len(parts)):
        hit = by_path.get("/".join(parts[k:]))
        if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
            return hit[1]
    return P()


def state_specs(train_state, mesh, rules: Sequence[Rule] | None = None):
    """PartitionSpecs for a :class:`~jnn.train.TrainState` (arrays or ``ShapeDtypeStruct``):
    params by ``rules``; optimizer-state leaves that mirror a parameter (same path suffix and
    shape, e.g. Adam's ``mu``/``nu``) like that parameter; everything else replicated.
    A pytree without a ``params`` field is treated as params."""
    if not hasattr(train_state, "params"):
        return param_specs(train_state, mesh, rules)
    pspecs = param_specs(train_state.params, mesh, rules)
    by_path = {p: (leaf.shape, spec) for (p, leaf), spec in
               zip(_tree.leaves_with_paths(train_state.params), jax.tree_util.tree_leaves(
                   pspecs, is_leaf=lambda s: isinstance(s, P)))}
    opt = jax.tree_util.tree_map_with_path(lambda p, leaf: _opt_leaf_spec(_tree.path_str(p), leaf, by_path),
                                           train_state.opt_state)
    rep = lambda t: jax.tree_util.tree_map(lambda _: P(), t)
    return train_state._replace(params=pspecs, state=rep(train_state.state), opt_state=opt,
                                step=P(), key=P())


def state_shardings(train_state, mesh, rules: Sequence[Rule] | None = None):
    """:func:`state_specs` as ``NamedSharding`` on ``mesh`` (for ``jax.jit``/``jax.device_put``)."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), state_specs(train_state, mesh, rules),
                                  is_leaf=lambda s: isinstance(s, P))


def place(train_state, mesh, rules: Sequence[Rule] | None = None):
    """``train_state`` on ``mesh``: replicated, except what ``rules`` shard.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> mesh = jnn.parallel.make_mesh()
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4)))
      >>> jnn.parallel.place(ts, mesh).params["w"].sharding.spec
      P()
    """
    check_mesh(mesh, "jnn.parallel.place")
    return jax.device_put(train_state, state_shardings(train_state, mesh, rules))


def replicate(tree, mesh):
    """Every leaf of ``tree`` copied to every device of ``mesh`` (e.g. a dataset that fits)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain_state(train_state, mesh, rules: Sequence[Rule] | None = None):
    """Pins ``train_state``'s layout inside a jitted function (``with_sharding_constraint``)."""
    return jax.lax.with_sharding_constraint(train_state, state_shardings(train_state, mesh, rules))


def constrain_batch(batch, mesh, where: str = "jnn.parallel"):
    """Splits every leaf of ``batch`` along its first (example) axis over ``data``, inside jit."""
    for leaf in jax.tree_util.tree_leaves(batch):
        check_batch_size(np.shape(leaf)[0], mesh, where)
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P("data")))


def sharded_init(init_fn, mesh, rules: Sequence[Rule] | None = None):
    """Runs ``init_fn() -> train_state`` under jit with its outputs laid out on ``mesh`` by
    ``rules``, so each device only ever allocates its own shards (a model too large for one
    device initializes straight into its FSDP layout)."""
    check_mesh(mesh, "jnn.parallel.sharded_init")
    return jax.jit(init_fn, out_shardings=state_shardings(jax.eval_shape(init_fn), mesh, rules))()
