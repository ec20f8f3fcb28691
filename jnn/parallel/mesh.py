"""Meshes, train-state placement and batch sharding: one jitted program over many devices (GSPMD).

Mesh axes are Auto: ``data`` (the batch) and ``model`` (tensor-parallel weights); params and
optimizer state are replicated unless a rule (:mod:`jnn.parallel.rules`) shards them.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import _checks as checks
from jnn import tree as _tree
from jnn.parallel.rules import Rule, param_specs

__all__ = ["make_mesh", "check_mesh", "data_size", "state_specs", "state_shardings", "place",
           "constrain_state", "constrain_batch", "check_batch_size", "replicate", "sharded_init"]


@checks.declare(devices=checks.optional(checks.satisfies(
    lambda d: isinstance(d, Sequence) and not isinstance(d, (str, bytes)) and d and all(
        isinstance(x, jax.Device) for x in d), "a non-empty list of jax devices (e.g. jax.devices()[:4])")))
def make_mesh(data: int | None = None, model: int = 1, *, devices: Sequence | None = None) -> Mesh:
    """A ``("data", "model")`` mesh with Auto axes over ``devices`` (default: all of them): ``data``
    devices along the batch axis (default: all not used by ``model``), ``model`` tensor-parallel.

    Example:
      >>> import jnn
      >>> dict(jnn.parallel.make_mesh(data=1).shape)
      {'data': 1, 'model': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    checks.require(checks.is_integer(model) and model >= 1 and len(devices) % model == 0, "make_mesh",
                   f"model must be a positive integer dividing the {len(devices)} devices, got {model!r}")
    data = len(devices) // model if data is None else data
    checks.require(checks.is_integer(data) and data >= 1 and data * model <= len(devices), "make_mesh",
                   f"data * model must be at most the {len(devices)} devices, got data={data!r}, model={model}")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[:data * model])


_mesh = checks.kind(lambda m: isinstance(m, Mesh), "a jax.sharding.Mesh (e.g. jnn.parallel.make_mesh())")


def check_mesh(mesh, where: str) -> None:
    """Raises unless ``mesh`` is a ``jax.sharding.Mesh`` with a ``data`` axis and Auto axes.

    Example:
      >>> import jnn
      >>> jnn.parallel.check_mesh(jnn.parallel.make_mesh(), "example")   # fine: returns None
      >>> jnn.parallel.check_mesh("not a mesh", "example")
      Traceback (most recent call last):
      TypeError: example: mesh must be a jax.sharding.Mesh (e.g. jnn.parallel.make_mesh()), got str
    """
    _mesh(where, "mesh", mesh)
    checks.require("data" in mesh.axis_names, where, f"the mesh needs a 'data' axis for the batch, its axes are "
                   f"{mesh.axis_names}")
    explicit = [n for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Auto]
    checks.require(not explicit, where, f"mesh axes {explicit} are not Auto; jnn shards with Auto axes because "
                   f"Explicit axes break the backward pass of x @ w with a sharded batch (jax-ml/jax#31800). Build "
                   f"the mesh with jnn.parallel.make_mesh(...) or jax.make_mesh(shape, names, "
                   f"axis_types=(jax.sharding.AxisType.Auto,) * len(names))")


def data_size(mesh) -> int:
    """How many ways the batch is split (the size of the ``data`` axis).

    Example:
      >>> import jnn
      >>> jnn.parallel.data_size(jnn.parallel.make_mesh(data=1))
      1
    """
    return int(mesh.shape["data"])


def check_batch_size(batch_size: int, mesh, where: str) -> None:
    """Raises unless ``batch_size`` (the global batch) divides evenly over the data axis.

    Example:
      >>> import jax, jnn
      >>> mesh = jax.sharding.AbstractMesh((2, 1), ("data", "model"))
      >>> jnn.parallel.check_batch_size(7, mesh, "example")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: example: the batch of 7 examples is not divisible by the mesh's data axis of size 2; ...
    """
    n = data_size(mesh)
    checks.require(batch_size % n == 0, where, f"the batch of {batch_size} examples is not divisible by the mesh's "
                   f"data axis of size {n}; use a batch size that is a multiple of {n} (a dataset smaller than "
                   f"batch_size is one batch of all its examples: then give a multiple of {n} examples)")


def _opt_leaf_spec(path: str, leaf, by_path: dict) -> P:
    parts = path.split("/")
    for k in range(len(parts)):
        hit = by_path.get("/".join(parts[k:]))
        if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
            return hit[1]
    return P()


def state_specs(train_state, mesh, rules: Sequence[Rule] | None = None):
    """PartitionSpecs for a :class:`~jnn.train.TrainState` (or params): params by ``rules``,
    optimizer leaves mirroring a param (same path suffix and shape) like it, the rest replicated.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.adam(1e-3), jax.random.key(0), jnp.zeros((1, 4)))
      >>> mesh = jax.sharding.AbstractMesh((2, 1), ("data", "model"))
      >>> specs = jnn.parallel.state_specs(ts, mesh, jnn.parallel.fsdp())
      >>> specs.params["w"], specs.opt_state[0].mu["w"], specs.step
      (P('data', None), P('data', None), P())
    """
    if not hasattr(train_state, "params"):
        return param_specs(train_state, mesh, rules)
    pspecs = param_specs(train_state.params, mesh, rules)
    by_path = {p: (leaf.shape, spec) for (p, leaf), spec in
               zip(_tree.leaves_with_paths(train_state.params), jax.tree_util.tree_leaves(
                   pspecs, is_leaf=lambda s: isinstance(s, P)))}
    opt = jax.tree_util.tree_map_with_path(lambda p, leaf: _opt_leaf_spec(_tree.path_str(p), leaf, by_path),
                                           train_state.opt_state)
    state = jax.tree_util.tree_map(lambda _: P(), train_state.state)
    return train_state._replace(params=pspecs, state=state, opt_state=opt, step=P(), key=P())


def state_shardings(train_state, mesh, rules: Sequence[Rule] | None = None):
    """:func:`state_specs` as ``NamedSharding`` on ``mesh`` (for ``jax.jit``/``jax.device_put``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4)))
      >>> shardings = jnn.parallel.state_shardings(ts, jnn.parallel.make_mesh())
      >>> type(shardings.params["w"]).__name__, shardings.params["w"].spec
      ('NamedSharding', P())
    """
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), state_specs(train_state, mesh, rules),
                                  is_leaf=lambda s: isinstance(s, P))


def place(train_state, mesh, rules: Sequence[Rule] | None = None):
    """``train_state`` put on ``mesh``: replicated, except what ``rules`` shard.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4)))
      >>> jnn.parallel.place(ts, jnn.parallel.make_mesh()).params["w"].sharding.spec
      P()
    """
    check_mesh(mesh, "jnn.parallel.place")
    return jax.device_put(train_state, state_shardings(train_state, mesh, rules))


def replicate(tree, mesh):
    """Every leaf of ``tree`` copied to every device of ``mesh`` (e.g. a dataset that fits).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> data = jnn.parallel.replicate({"x": jnp.arange(4)}, jnn.parallel.make_mesh())
      >>> data["x"].shape, data["x"].sharding.spec
      ((4,), P())
    """
    check_mesh(mesh, "jnn.parallel.replicate")
    return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain_state(train_state, mesh, rules: Sequence[Rule] | None = None):
    """Pins ``train_state``'s layout inside a jitted function (``with_sharding_constraint``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> mesh = jnn.parallel.make_mesh()
      >>> ts = jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4)))
      >>> jax.jit(lambda ts: jnn.parallel.constrain_state(ts, mesh))(ts).params["w"].shape
      (4, 2)
    """
    return jax.lax.with_sharding_constraint(train_state, state_shardings(train_state, mesh, rules))


def constrain_batch(batch, mesh, where: str = "jnn.parallel"):
    """Splits every leaf of ``batch`` along its first (example) axis over ``data``, inside jit.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> mesh = jnn.parallel.make_mesh()
      >>> double = jax.jit(lambda batch: jnn.parallel.constrain_batch(batch, mesh)[0] * 2)
      >>> double((jnp.ones((4, 3)), jnp.zeros(4))).shape
      (4, 3)
    """
    for leaf in jax.tree_util.tree_leaves(batch):
        check_batch_size(np.shape(leaf)[0], mesh, where)
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P("data")))


def sharded_init(init_fn, mesh, rules: Sequence[Rule] | None = None):
    """Runs ``init_fn() -> train_state`` under jit with outputs laid out on ``mesh`` by ``rules``
    (each device allocates only its own shards).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> init = lambda: jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0),
      ...                                           jnp.zeros((1, 4)))
      >>> ts = jnn.parallel.sharded_init(init, jnn.parallel.make_mesh(), jnn.parallel.fsdp())
      >>> ts.params["w"].shape, ts.params["w"].sharding.spec
      ((4, 2), P('data', None))
    """
    check_mesh(mesh, "jnn.parallel.sharded_init")
    return jax.jit(init_fn, out_shardings=state_shardings(jax.eval_shape(init_fn), mesh, rules))()
