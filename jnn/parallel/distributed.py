"""Multi-process (multi-host) helpers around ``jax.distributed``.

A multi-process program is the same script in every process: call :func:`initialize` first,
build the mesh over ``jax.devices()`` (all processes' devices), and feed each process's share
of the global batch with :func:`global_batch`. ``fit`` writes its history file and prints only
in process 0 (:func:`is_main_process`); :class:`jnn.train.Checkpointer` must be called by every
process (Orbax writes each process's shards and process 0 the metadata).

Example (two processes on one machine, CPU)::

  jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
  mesh = jnn.parallel.make_mesh()
  ts = jnn.parallel.place(ts, mesh)
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


def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               cpu_collectives: str = "gloo", **kwargs) -> None:
    """``jax.distributed.initialize``, after selecting ``cpu_collectives`` ("gloo") for CPU
    devices, which have no cross-process collectives otherwise. Call it before anything else
    touches JAX's devices. Extra ``kwargs`` go to ``jax.distributed.initialize``.

    Example:
      >>> import jnn
      >>> jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=0)  # doctest: +SKIP
      >>> jnn.parallel.initialize("127.0.0.1:12355", num_processes=2, process_id=2)
      Traceback (most recent call last):
      ValueError: jnn.parallel.initialize: process_id must be in [0, 2), got 2
    """
    where = "jnn.parallel.initialize"
    if not isinstance(coordinator_address, str) or ":" not in coordinator_address:
        raise ValueError(f"{where}: coordinator_address must be 'host:port', got {coordinator_address!r}")
    checks.positive_int(where, "num_processes", num_processes)
    checks.integer(0, num_processes - 1, described=f"in [0, {num_processes})")(where, "process_id", process_id)
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
    from jax.experimental import multihost_utils
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(n))).reshape(-1)]


def global_batch(local_batch, mesh, *, check: bool = True):
    """One global batch, split along ``data``, from each process's local examples.

    Every process passes its own rows (the same number in every process); the result is the
    concatenation over processes in process order, as a global ``jax.Array`` (built with
    ``jax.make_array_from_process_local_data``). In a single process it is just the batch
    placed on the mesh.

    Args:
      local_batch: a pytree of arrays with this process's examples on the first axis.
      mesh: the mesh (with a ``data`` axis).
      check: compare the local batch sizes across processes first (one tiny collective), so
        that disagreeing processes get an error rather than a hang or a garbled batch.

    Raises:
      ValueError: processes disagree on the batch size, or the global batch does not divide
        over the data axis.

    Example:
      >>> import numpy as np, jnn
      >>> x, y = jnn.parallel.global_batch((np.ones((4, 3)), np.zeros(4)), jnn.parallel.make_mesh())
      >>> x.shape, y.shape, x.sharding.spec
      ((4, 3), (4,), P('data',))
    """
    check_mesh(mesh, "jnn.parallel.global_batch")
    checks.flag("jnn.parallel.global_batch", "check", check)
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree_util.tree_leaves(local_batch)}
    if len(sizes) != 1:
        raise ValueError(f"jnn.parallel.global_batch: the leaves of the local batch have different numbers of "
                         f"examples {sorted(sizes)}")
    local = sizes.pop()
    if check and jax.process_count() > 1:
        all_sizes = _local_sizes(local)
        if len(set(all_sizes)) != 1:
            raise ValueError(f"jnn.parallel.global_batch: processes disagree on the batch: local batch sizes "
                             f"per process are {all_sizes} (global sizes {[s * len(all_sizes) for s in all_sizes]}); "
                             f"every process must feed the same number of examples")
    check_batch_size(local * jax.process_count(), mesh, "jnn.parallel.global_batch")
    sharding = NamedSharding(mesh, P("data"))
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch)
