"""Training across devices and hosts on ``jax.sharding`` (GSPMD) and ``jax.distributed``.

Pass a mesh to ``fit`` (or ``make_train_step``...): the batch is split along ``data``, params are
replicated unless ``rules`` shard them::

  mesh = jnn.parallel.make_mesh()                       # all devices on "data"
  fit(model, loss, opt, data, key=key, mesh=mesh)       # data parallel
  fit(..., mesh=(mesh, jnn.parallel.fsdp()))           # + params/optimizer state sharded (ZeRO-3)
  jnn.parallel.plan(model, (x, y), opt, mesh, rules=...)  # bytes and FLOPs per device, no memory used

Tensor parallelism: :func:`tensor_parallel` (Megatron layout: :data:`TRANSFORMER_AXES` mapped to
mesh axes by :data:`AXIS_RULES`).
"""
from jnn.parallel.distributed import global_batch, initialize, is_main_process
from jnn.parallel.plan import Plan, plan
from jnn.parallel.mesh import (check_batch_size, check_mesh, constrain_batch, constrain_state, data_size,
                               make_mesh, place, replicate, sharded_init, state_shardings, state_specs)
from jnn.parallel.rules import (AXIS_RULES, TRANSFORMER_AXES, Rule, fsdp, logical, param_specs,
                                tensor_parallel)

__all__ = ["make_mesh", "check_mesh", "data_size", "check_batch_size", "place", "replicate", "state_specs",
           "state_shardings", "sharded_init", "constrain_state", "constrain_batch", "Rule", "fsdp", "logical",
           "tensor_parallel", "param_specs", "TRANSFORMER_AXES", "AXIS_RULES", "initialize",
           "is_main_process", "global_batch", "plan", "Plan"]
