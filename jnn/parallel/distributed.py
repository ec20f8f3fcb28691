"""Multi-process helpers around ``jax.distributed``: every process runs the same script, calls
:func:`initialize` first and feeds its share of each batch via :func:`global_batch`::

  jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
  mesh = jnn.parallel.make_mesh()
  step = jax.jit(make_train_step(model, loss, opt, mesh=mesh))
  for x_local, y_local in my_half_of_each_batch:
      ts, logs = step(ts, jnn.parallel.global_batch((x_local, y_local), mesh))
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import _checks as checks
from jnn.parallel.mesh import check_batch_size, check_mesh

__all__ = ["initialize", "is_main_process", "global_batch"]


@checks.declare_as("jnn.parallel.initialize", coordinator_address=checks.satisfies(
    lambda a: isinstance(a, str) and ":" in a, "'host:port'"), num_processes=checks.positive_int)
def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               cpu_collectives: str = "gloo", **kwargs) -> None:
    """``jax.distributed.initialize`` (extra ``kwargs`` passed on), with ``cpu_collectives`` selected
    for CPU devices; call it before anything touches JAX's devices.

    Example:
      >>> import jnn
      >>> jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=0)  # doctest: +SKIP
      >>> jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=2)
      Traceback (most recent call last):
      ValueError: jnn.parallel.initialize: process_id must be in [0, 2), got 2
    """
    checks.integer(0, num_processes - 1, described=f"in [0, {num_processes})")("jnn.parallel.initialize",
                                                                              "process_id", process_id)
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def is_main_process() -> bool:
    """Whether this is process 0, the one that logs and writes history files.

    Example:
      >>> import jnn
      >>> jnn.parallel.is_main_process()           # a single process is process 0
      True
    """
    return jax.process_index() == 0


def _local_sizes(n: int) -> list[int]:
    """Every process's ``n``, in process order."""
    from jax.experimental import multihost_utils
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(n))).reshape(-1)]


def global_batch(local_batch, mesh, *, check: bool = True):
    """One global batch, split along ``data``: every process's ``local_batch`` (a pytree of arrays, the
    same number of examples in each), in process order; ``check`` compares those numbers first.

    Example:
      >>> import numpy as np, jnn
      >>> x, y = jnn.parallel.global_batch((np.ones((4, 3)), np.zeros(4)), jnn.parallel.make_mesh())
      >>> x.shape, y.shape, x.sharding.spec
      ((4, 3), (4,), P('data',))
    """
    where = "jnn.parallel.global_batch"
    check_mesh(mesh, where)
    checks.flag(where, "check", check)
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree_util.tree_leaves(local_batch)}
    if len(sizes) != 1:
        raise ValueError(f"{where}: the leaves of the local batch have different numbers of examples {sorted(sizes)}")
    local = sizes.pop()
    all_sizes = _local_sizes(local) if check and jax.process_count() > 1 else [local]
    if len(set(all_sizes)) != 1:
        raise ValueError(f"{where}: processes disagree on the batch: local batch sizes per process are {all_sizes} "
                         f"(global sizes {[s * len(all_sizes) for s in all_sizes]}); every process must feed the "
                         f"same number of examples")
    check_batch_size(local * jax.process_count(), mesh, where)
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch)
