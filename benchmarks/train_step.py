"""The MNIST MLP's train step (grad + Adam): jnn against hand-written raw JAX, same process.

Four contenders, each timed over one epoch's worth of steps, interleaved, medians after warm-up:
  jnn per-step jit   : jax.jit(jnn.train.make_train_step(...)) called once per batch
  raw per-step jit   : a hand-written MLP + loss + optax.adam step, jitted, called once per batch
  jnn fused epoch    : jax.jit(jnn.train.make_train_epoch(...)), one lax.scan per epoch
  raw fused epoch    : the hand-written step inside a hand-written lax.scan (same shuffling)
Also reported: time to the first jnn step (trace + compile) and the compile cache sizes after
all epochs (1 means no recompilation); and the per-step ratio as the median over ``--pairs``
back-to-back pairs of 20-step blocks (jnn then raw, or raw then jnn, alternating), which
cancels the drift between whole epochs that moves the epoch-median ratio by several percent
from one run to the next on a shared CPU.

    python benchmarks/train_step.py [--examples 18000] [--repeats 15] [--pairs 400]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import jax
import jax.numpy as jnp
import optax

import jnn
from common import block, machine, time_interleaved

SIZES = (784, 128, 64, 10)


def jnn_model():
    return jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))


def raw_init(key):
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, 3), zip(SIZES[:-1], SIZES[1:])):
        params.append({"w": jax.random.normal(k, (n_in, n_out)) / jnp.sqrt(n_in), "b": jnp.zeros(n_out)})
    return params


def raw_loss(params, x, y):
    h = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def raw_step_fn(opt):
    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(raw_loss)(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss
    return step


def raw_epoch_fn(step, n, batch_size):
    nb = n // batch_size

    def epoch(carry, key, x, y):
        order = jax.random.permutation(key, n)[: nb * batch_size].reshape(nb, batch_size)
        carry, losses = jax.lax.scan(lambda c, idx: step(c, (x[idx], y[idx])), carry, order)
        return carry, jnp.mean(losses)
    return epoch


def paired_ratio(run_jnn, run_raw, pairs: int) -> float:
    """Median of jnn/raw time ratios over ``pairs`` back-to-back pairs of blocks, the order
    within a pair alternating."""
    ratios = []
    for i in range(pairs):
        times = {}
        for name, run in ((("jnn", run_jnn), ("raw", run_raw)) if i % 2 else (("raw", run_raw), ("jnn", run_jnn))):
            start = time.perf_counter()
            run()
            times[name] = time.perf_counter() - start
        ratios.append(times["jnn"] / times["raw"])
    return float(np.median(ratios))


def bench(batch_size: int, n: int, repeats: int, pairs: int):
    key = jax.random.key(0)
    x = jax.random.uniform(key, (n, 28, 28, 1))
    y = jax.random.randint(key, (n,), 0, 10)
    nb = n // batch_size
    xb, yb = x[: nb * batch_size].reshape(nb, batch_size, 28, 28, 1), y[: nb * batch_size].reshape(nb, batch_size)
    opt = optax.adam(1e-3)
    model, loss = jnn_model(), jnn.losses.softmax_cross_entropy

    jnn_step = jax.jit(jnn.train.make_train_step(model, loss, opt, metrics={}))
    jnn_epoch = jax.jit(jnn.train.make_train_epoch(jnn.train.make_train_step(model, loss, opt, metrics={}), n, batch_size))
    ts = jnn.train.init_train_state(model, opt, key, jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.float32))
    start = time.perf_counter()
    block(jnn_step(ts, (xb[0], yb[0])))
    first_step = time.perf_counter() - start

    raw_params = raw_init(key)
    raw_step = raw_step_fn(opt)
    raw_step_jit = jax.jit(raw_step)
    raw_epoch = jax.jit(raw_epoch_fn(raw_step, n, batch_size))
    raw_carry = (raw_params, opt.init(raw_params))
    state = {"jnn_step": ts, "jnn_epoch": ts, "raw_step": raw_carry, "raw_epoch": raw_carry, "key": key}

    def run_jnn_step():
        t = state["jnn_step"]
        for i in range(nb):
            t, logs = jnn_step(t, (xb[i], yb[i]))
        state["jnn_step"] = block(t)

    def run_raw_step():
        c = state["raw_step"]
        for i in range(nb):
            c, loss_value = raw_step_jit(c, (xb[i], yb[i]))
        state["raw_step"] = block(c)

    def run_jnn_epoch():
        state["jnn_epoch"] = block(jnn_epoch(state["jnn_epoch"], (x, y))[0])

    def run_raw_epoch():
        state["key"], sub = jax.random.split(state["key"])
        state["raw_epoch"] = block(raw_epoch(state["raw_epoch"], sub, x, y)[0])

    times = time_interleaved({"jnn per-step jit": run_jnn_step, "raw per-step jit": run_raw_step,
                              "jnn fused epoch": run_jnn_epoch, "raw fused epoch": run_raw_epoch}, repeats=repeats)
    per_step = {k: v / nb * 1e3 for k, v in times.items()}

    def blocks_of_20(step, name):
        def run():
            carry = state[name]
            for i in range(min(20, nb)):
                carry, _ = step(carry, (xb[i], yb[i]))
            state[name] = block(carry)
        return run

    paired = paired_ratio(blocks_of_20(jnn_step, "jnn_step"), blocks_of_20(raw_step_jit, "raw_step"), pairs)
    caches = {"jnn step": jnn_step._cache_size(), "jnn epoch": jnn_epoch._cache_size()}
    return per_step, paired, first_step, caches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=18000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--pairs", type=int, default=400, help="pairs of 20-step blocks for the paired ratio")
    args = parser.parse_args()
    print(machine())
    for bs in map(int, args.batch_sizes.split(",")):
        per_step, paired, first_step, caches = bench(bs, args.examples, args.repeats, args.pairs)
        print(f"\nbatch {bs}: ms per step (median of {args.repeats} epochs of {args.examples // bs} steps)")
        for name, ms in per_step.items():
            print(f"  {name:18s} {ms:8.3f}")
        print(f"  ratio per-step jit  jnn/raw = {per_step['jnn per-step jit'] / per_step['raw per-step jit']:.3f}")
        print(f"  ratio per-step jit  jnn/raw = {paired:.3f}  (median of {args.pairs} paired 20-step blocks)")
        print(f"  ratio fused epoch   jnn/raw = {per_step['jnn fused epoch'] / per_step['raw fused epoch']:.3f}")
        print(f"  fused vs per-step (jnn)     = {per_step['jnn per-step jit'] / per_step['jnn fused epoch']:.2f}x faster")
        print(f"  time to first jnn step (trace + compile): {first_step:.3f} s")
        print(f"  compile cache sizes after all epochs: {caches}  (1 = compiled once, no recompiles)")


if __name__ == "__main__":
    main()
