"""``plan``: what one training step will cost on a mesh, before any device memory is used (the
step compiled for abstract sharded inputs; figures from XLA's memory and cost analyses).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import _checks as checks
from jnn import tree as _tree
from jnn.parallel.mesh import check_batch_size, check_mesh, make_mesh, state_shardings
from jnn.parallel.rules import Rule

__all__ = ["Plan", "plan"]


class Plan(NamedTuple):
    """What :func:`plan` returns (bytes per device): ``params`` (``[(path, shape, spec, bytes)]``),
    ``param_count`` (unsharded), ``param_bytes``, ``opt_state_bytes``, ``batch_bytes``,
    ``argument_bytes``/``output_bytes``/``temp_bytes`` (XLA's ``memory_analysis()``),
    ``flops_per_device`` (``cost_analysis()``) and ``flops`` (times the number of devices).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> batch = (jax.ShapeDtypeStruct((8, 3), jnp.float32), jax.ShapeDtypeStruct((8, 2), jnp.float32))
      >>> p = jnn.parallel.plan(jnn.dense(2), batch, optax.sgd(0.1), verbose=False)
      >>> [(path, shape, nbytes) for path, shape, _, nbytes in p.params], p.batch_bytes
      ([('b', (2,), 8), ('w', (3, 2), 24)], 160)
    """

    params: list
    param_count: int
    param_bytes: int
    opt_state_bytes: int
    batch_bytes: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    flops_per_device: float
    flops: float

    def table(self) -> str:
        """The per-parameter table and the totals, as text."""
        w = max([len(p) for p, *_ in self.params] + [9])
        lines = [f"{'parameter':<{w}}  {'shape':<16} {'sharding':<22} {'bytes/device':>12}"]
        lines += [f"{p:<{w}}  {str(s):<16} {str(tuple(spec)):<22} {b:>12,}" for p, s, spec, b in self.params]
        mib = lambda b: f"{b:>14,} B  ({b / 2**20:.2f} MiB)"
        lines += ["", f"parameters: {self.param_count:,}",
                  f"params per device:          {mib(self.param_bytes)}",
                  f"optimizer state per device: {mib(self.opt_state_bytes)}",
                  f"batch per device:           {mib(self.batch_bytes)}",
                  f"activations/temporaries:    {mib(self.temp_bytes)}",
                  f"FLOPs per step: {self.flops:,.0f} ({self.flops_per_device:,.0f} per device)"]
        return "\n".join(lines)


def _bytes_per_device(leaf, sharding) -> int:
    shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def _abstract(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype) if hasattr(x, "dtype") else x


def plan(model, example, optimizer, mesh=None, *, loss=None, rules: Sequence[Rule] | None = None,
         verbose: bool = True) -> Plan:
    """Dry-runs one training step of ``model`` on ``mesh`` (default: every device) for one global batch
    ``example`` (arrays or ``ShapeDtypeStruct``): bytes per device and FLOPs. ``loss`` defaults to
    :func:`jnn.losses.mse`; ``verbose`` prints :meth:`Plan.table`.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> batch = (jax.ShapeDtypeStruct((8, 3), jnp.float32), jax.ShapeDtypeStruct((8, 2), jnp.float32))
      >>> p = jnn.parallel.plan(jnn.dense(2), batch, optax.sgd(0.1), verbose=False)
      >>> p.param_count, p.param_bytes
      (8, 32)
    """
    from jnn import losses
    from jnn.train import guard
    from jnn.train.step import init_train_state, make_train_step
    where, loss = "jnn.parallel.plan", loss or losses.mse
    guard.check_parts(where, model=model, optimizer=optimizer, loss=loss, metrics=None, regularizer=None,
                      verbose=verbose)
    checks.require(isinstance(example, (tuple, list)) and len(example) == 2, where, f"example must be one global "
                   f"batch (x, y), got {type(example).__name__}", TypeError)
    mesh = make_mesh() if mesh is None else mesh
    check_mesh(mesh, where)
    batch = jax.tree_util.tree_map(_abstract, tuple(example))
    check_batch_size(batch[0].shape[0], mesh, where)
    ts = jax.eval_shape(lambda: init_train_state(model, optimizer, jax.random.key(0), batch[0]))
    ts_shardings = state_shardings(ts, mesh, rules)
    batch_sharding = NamedSharding(mesh, P("data"))
    step = make_train_step(model, loss, optimizer, mesh=mesh, rules=rules)
    compiled = jax.jit(step, in_shardings=(ts_shardings, batch_sharding),
                       out_shardings=(ts_shardings, NamedSharding(mesh, P()))).lower(ts, batch).compile()
    memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    leaves = jax.tree_util.tree_leaves
    sizes = lambda tree, shardings: sum(_bytes_per_device(leaf, s) for leaf, s in zip(leaves(tree), leaves(shardings)))
    rows = [(p, tuple(leaf.shape), s.spec, _bytes_per_device(leaf, s)) for (p, leaf), s in
            zip(_tree.leaves_with_paths(ts.params), leaves(ts_shardings.params))]
    flops = float(cost.get("flops", 0.0))
    result = Plan(
        params=rows, param_count=sum(int(np.prod(s, dtype=np.int64)) for _, s, _, _ in rows),
        param_bytes=sum(b for *_, b in rows), opt_state_bytes=sizes(ts.opt_state, ts_shardings.opt_state),
        batch_bytes=sum(_bytes_per_device(leaf, batch_sharding) for leaf in leaves(batch)),
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes), flops_per_device=flops, flops=flops * mesh.size)
    if verbose:
        print(result.table())
    return result
