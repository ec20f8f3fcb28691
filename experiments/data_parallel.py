"""The MNIST MLP trained data-parallel on N devices: the same ``fit`` call plus ``mesh=``.

    python experiments/data_parallel.py --devices 8            # CPU: 8 virtual devices
    python experiments/data_parallel.py --devices 8 --fsdp     # params + Adam state sharded 8 ways
    python experiments/data_parallel.py --devices 0            # every real device (e.g. GPUs)

On CPU, ``--devices N`` sets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX
starts (it has no effect on GPU/TPU, whose real devices are used). The batch is split along the
mesh's ``data`` axis; with ``--fsdp`` the parameters and optimizer state are split too
(:func:`jnn.parallel.fsdp`). Before training it prints :func:`jnn.parallel.plan`'s table: bytes
per device and FLOPs per step.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # must happen before JAX initializes its CPU backend
    _argv = sys.argv[1:]
    _n = _argv[_argv.index("--devices") + 1] if "--devices" in _argv else "8"
    if int(_n) > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={_n}").strip()

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jnn  # noqa: E402
from common import load_mnist_standardized, parse_config, run_dir, save_run, test_metrics  # noqa: E402


@dataclasses.dataclass
class Config:
    """MNIST MLP (784-128-64-10, Adam), data-parallel over a device mesh."""
    devices: int = 8                 # devices on the data axis (0: all available)
    fsdp: bool = False               # also shard params and optimizer state (ZeRO-3)
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 5
    batch_size: int = 128            # the global batch, split over the devices
    learning_rate: float = 1e-3
    train_limit: int = 0             # use only the first N training images (0: all 60k)
    seed: int = 0
    out: str = "runs"
    progress: bool = True


def main(config: Config) -> dict:
    available = jax.devices()
    n = config.devices or len(available)
    if n > len(available):
        raise ValueError(f"data_parallel: --devices {n} but only {len(available)} {available[0].platform} "
                         f"devices; on CPU run this script directly (it sets XLA_FLAGS) or set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    mesh = jnn.parallel.make_mesh(devices=available[:n])
    rules = jnn.parallel.fsdp() if config.fsdp else None
    x, y, x_test, y_test = load_mnist_standardized(config.train_limit)
    layers = [jnn.flatten()]
    for width in config.hidden:
        layers += [jnn.dense(width), jnn.relu()]
    net = jnn.serial(*layers, jnn.dense(10))
    opt = optax.adam(config.learning_rate)
    loss = jnn.losses.softmax_cross_entropy
    print(f"{n} {available[0].platform} device(s), mesh {dict(mesh.shape)}, fsdp={config.fsdp}")
    batch = (jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), jnp.float32),
             jax.ShapeDtypeStruct((config.batch_size,), jnp.int32))
    plan = jnn.parallel.plan(net, batch, opt, mesh, loss=loss, rules=rules, verbose=jax.process_index() == 0)
    out = run_dir(config.out, f"data_parallel-{n}dev{'-fsdp' if config.fsdp else ''}")
    start = time.perf_counter()
    result = jnn.train.fit(net, loss, opt, (x, y), key=jax.random.key(config.seed), epochs=config.epochs,
                           batch_size=config.batch_size, val_split=0.1, verbose=1 if config.progress else 2,
                           mesh=(mesh, rules), callbacks=[jnn.train.callbacks.HistoryFile(out / "history.csv")] if out else [])
    seconds = time.perf_counter() - start
    test = test_metrics(net, result.train_state, x_test, y_test)
    w = result.train_state.params["dense_0"]["w"]
    print(f"test accuracy: {test['accuracy']:.2%}  ({config.epochs} epochs in {seconds:.1f} s; "
          f"dense_0/w sharding {w.sharding.spec}, {w.addressable_shards[0].data.nbytes:,} of {w.nbytes:,} "
          f"bytes on device 0)")
    summary = {"devices": n, "platform": available[0].platform, "test_accuracy": test["accuracy"],
               "test_loss": test["loss"], "train_seconds": seconds, "param_bytes_per_device": plan.param_bytes,
               "opt_state_bytes_per_device": plan.opt_state_bytes, "flops_per_step": plan.flops,
               "config": dataclasses.asdict(config)}
    save_run(out, summary, {"data_parallel": result.history})
    return {**summary, "history": result.history, "train_state": result.train_state}


if __name__ == "__main__":
    main(parse_config(Config))
