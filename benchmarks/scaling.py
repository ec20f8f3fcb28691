"""Data-parallel scaling of the MNIST MLP's fused training epoch over 1, 2, 4, ... devices.

For each device count n it times one scan-fused epoch (grad + Adam, fixed global batch) of
  jnn sharded  : jax.jit(make_train_epoch(make_train_step(..., mesh=n-device mesh)))
  jnn fsdp     : the same with params and Adam state sharded (jnn.parallel.fsdp())
and, in the same interleaved loop, the unsharded programs on one device:
  raw          : a hand-written MLP + optax.adam step in a hand-written lax.scan (no mesh)
  jnn 1-device : make_train_epoch without a mesh
It prints ms per step, examples/s, param + optimizer bytes per device (from the arrays'
addressable shards) with and without FSDP, and the ratio of the sharded program on a 1-device
mesh to the unsharded one (the cost of the sharding annotations themselves).

    python benchmarks/scaling.py --cpu-devices 8        # 8 virtual CPU devices
    python benchmarks/scaling.py                         # real devices (GPU machine)

Virtual CPU devices share the machine's cores, so on CPU examples/s cannot grow with n: the
CPU figures measure overhead, not speedup.
"""
from __future__ import annotations

import os
import sys

if "--cpu-devices" in sys.argv:  # before JAX starts
    _n = sys.argv[sys.argv.index("--cpu-devices") + 1]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jnn  # noqa: E402
from common import block, machine, time_interleaved  # noqa: E402
from train_step import jnn_model, raw_init, raw_step_fn  # noqa: E402


def per_device_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(s.data.nbytes for a in jax.tree_util.tree_leaves(tree) for s in a.addressable_shards
               if s.device == dev)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-devices", type=int, default=0)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(machine())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, args.examples).astype(np.int32)
    steps = args.examples // args.batch_size
    model, opt, loss = jnn_model(), optax.adam(1e-3), jnn.losses.softmax_cross_entropy
    example = jax.ShapeDtypeStruct((args.batch_size, 28, 28, 1), jnp.float32)
    ts0 = jnn.train.init_train_state(model, opt, jax.random.key(0), example)

    # unsharded, one device: raw JAX and jnn
    raw_params = raw_init(jax.random.key(0))
    raw_step = raw_step_fn(opt)
    order = jnp.arange(steps * args.batch_size).reshape(steps, args.batch_size)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    raw_epoch = jax.jit(lambda c: jax.lax.scan(lambda c, i: raw_step(c, (xd[i], yd[i])), c, order))
    raw_carry = (raw_params, opt.init(raw_params))
    plain = jax.jit(jnn.train.make_train_epoch(jnn.train.make_train_step(model, loss, opt, metrics={}), args.examples,
                                               args.batch_size))
    fns = {"raw": lambda: block(raw_epoch(raw_carry)), "jnn 1-device": lambda: block(plain(ts0, (xd, yd)))}
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= jax.device_count()]
    sizes = {}
    for n in counts:
        mesh = jnn.parallel.make_mesh(devices=jax.devices()[:n])
        data = jnn.parallel.replicate((x, y), mesh)
        for label, rules in (("sharded", None), ("fsdp", jnn.parallel.fsdp())):
            step = jnn.train.make_train_step(model, loss, opt, metrics={}, mesh=mesh, rules=rules)
            epoch = jax.jit(jnn.train.make_train_epoch(step, args.examples, args.batch_size, mesh=mesh))
            ts = jnn.parallel.place(ts0, mesh, rules)
            sizes[(n, label)] = per_device_bytes((ts.params, ts.opt_state))
            fns[f"{label} {n}"] = lambda epoch=epoch, ts=ts, data=data: block(epoch(ts, data))
    times = time_interleaved(fns, repeats=args.repeats)
    ms = lambda name: 1e3 * times[name] / steps
    print(f"\nMNIST MLP 784-128-64-10, Adam, global batch {args.batch_size}, {steps} steps per fused epoch; "
          f"ms per step (median of {args.repeats})")
    print(f"raw JAX 1 device, no mesh: {ms('raw'):.3f}   jnn 1 device, no mesh: {ms('jnn 1-device'):.3f}")
    print("| devices | ms/step | examples/s | ms/step fsdp | examples/s fsdp | bytes/device (params+opt) | "
          "bytes/device fsdp |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        print(f"| {n} | {ms(f'sharded {n}'):.3f} | {args.batch_size / ms(f'sharded {n}') * 1e3:,.0f} | "
              f"{ms(f'fsdp {n}'):.3f} | {args.batch_size / ms(f'fsdp {n}') * 1e3:,.0f} | "
              f"{sizes[(n, 'sharded')]:,} | {sizes[(n, 'fsdp')]:,} |")
    print(f"\nsharded program on a 1-device mesh / unsharded jnn: {times['sharded 1'] / times['jnn 1-device']:.3f}"
          f";  / raw JAX: {times['sharded 1'] / times['raw']:.3f};  jnn unsharded / raw: "
          f"{times['jnn 1-device'] / times['raw']:.3f}")
    if jax.device_count() >= 8:
        print(f"8-device sharded / 1-device unsharded jnn: {times['sharded 8'] / times['jnn 1-device']:.3f}")


if __name__ == "__main__":
    main()
