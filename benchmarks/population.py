"""Population training: N members vectorized with jax.vmap against the same N trained one by one.

Every contender runs the same per-member epoch, ``jnn.train.population.make_member_epoch``
(which is ``jnn.train.make_train_epoch``, as in ``fit``: shuffle with the member's key, one
lax.scan over the batches; adamw via optax.inject_hyperparams with per-member learning rate and
weight decay; dropout at the member's rate):
  vectorized     : jax.jit(make_population_epoch(...)), all members in one vmap, one call per epoch
  chunks of c    : the same with chunk_size=c (c members vmapped at a time, chunks in a lax.map)
  shared order   : vectorized, but all members see the same batches (fit_population's
                   shared_order=True): one permutation and one batch gather per epoch, and the
                   first layer multiplies one shared input; it trains on different batches, so
                   its params differ from the others' by more than float reordering
  sequential     : jax.jit(member_epoch) called once per member (hyperparameters traced, so it
                   compiles once for all members; calls dispatched asynchronously, blocked once)
Timed per population epoch (all N members), calls interleaved, medians after warm-up. States are
threaded through, so every contender trains; all have run the same epochs from the same initial
states, and the largest parameter difference from the sequential run is printed (float
reordering only, amplified by Adam on near-zero gradients).

    JNN_DATA_DIR=../shared/data python benchmarks/population.py [--members 64] [--mnist-examples 2048] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import block, machine, time_interleaved
from jnn.train import epoch_order
from jnn.train import autoexec
from jnn.train.pbt import PBT, exploit_explore
from jnn.train.population import (population_epoch_jit, Program, init_population, make_member_epoch,
                                  make_population_epoch, member_keys, shared_order_key)


def mlp(sizes, dropout=True):
    def make_model(hp):
        layers = [jnn.flatten()]
        for width in sizes[:-1]:
            layers += [jnn.dense(width), jnn.relu()] + ([jnn.dropout(hp["rate"])] if dropout else [])
        return jnn.serial(*layers, jnn.dense(sizes[-1]))
    return make_model


def make_adamw(hp):
    return optax.inject_hyperparams(optax.adamw)(learning_rate=hp["lr"], weight_decay=hp["wd"])


def hyperparameters(n, key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"lr": 10.0 ** jax.random.uniform(k1, (n,), minval=-4, maxval=-2),
            "wd": 10.0 ** jax.random.uniform(k2, (n,), minval=-5, maxval=-2),
            "rate": jax.random.uniform(k3, (n,), maxval=0.5)}


def bench(name, sizes, x, y, *, members, batch_size, repeats, dropout=True, chunks=()):
    x, y = jnp.asarray(x), jnp.asarray(y)
    make_model, loss = mlp(sizes, dropout), jnn.losses.softmax_cross_entropy
    hparams = hyperparameters(members, jax.random.key(1))
    keys = member_keys(jax.random.key(0), members)
    example = jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype)
    states = init_population(make_model, make_adamw, hparams, keys, example)
    active = jnp.ones(members, bool)
    unstack = lambda tree: [jax.tree_util.tree_map(lambda a: a[i], tree) for i in range(members)]
    hp_list = unstack(hparams)
    sequential = jax.jit(make_member_epoch(make_model, loss, make_adamw, len(x), batch_size))
    live = {"sequential": unstack(states)}
    fns = {}
    for chunk in (None, *chunks):
        label = "vectorized" if chunk is None else f"chunks of {chunk}"
        epoch = jax.jit(make_population_epoch(make_model, loss, make_adamw, len(x), batch_size, chunk_size=chunk))
        live[label] = states

        def run(label=label, epoch=epoch):
            live[label] = block(epoch(hparams, live[label], active, (x, y))[0])
        fns[label] = run

    # shared order: one permutation per epoch (timed with it) instead of one per member
    shared = jax.jit(make_population_epoch(make_model, loss, make_adamw, len(x), batch_size))
    order_fn = jax.jit(epoch_order, static_argnums=(1, 2))
    live["shared order"], calls = states, [0]

    def run_shared():
        calls[0] += 1
        order = order_fn(shared_order_key(keys, calls[0]), len(x), batch_size)
        live["shared order"] = block(shared(hparams, live["shared order"], active, (x, y), order)[0])
    fns["shared order"] = run_shared

    # fit_population's default (chunk_size="auto", shared_order=False): the first epochs measure
    # each candidate autoexec.ROUNDS times (included in its first-call time below), then the fastest is kept
    program = Program(make_model, loss, make_adamw, (("accuracy", jnn.metrics.accuracy),), None, len(x),
                       batch_size, 1000, None)
    options = autoexec.candidates(members, "auto", False)   # what fit_population measures
    auto, live["default (auto)"], chosen = autoexec.AutoEpoch(population_epoch_jit, program, options), states, []

    def run_auto():
        new, _, option = auto(hparams, live["default (auto)"], active, (x, y), None)
        live["default (auto)"] = block(new)
        chosen.append(option)
    fns["default (auto)"] = run_auto

    def run_sequential():
        live["sequential"] = block([sequential(hp, ts, True, (x, y))[0] for hp, ts in zip(hp_list, live["sequential"])])
    fns["sequential"] = run_sequential

    measuring = autoexec.ROUNDS * len(options)
    first_s = {}  # first call: trace + compile + one epoch (auto: + all its measuring epochs)
    for label, fn in fns.items():
        start = time.perf_counter()
        for _ in range(measuring if label == "default (auto)" else 1):
            fn()
        first_s[label] = time.perf_counter() - start
        for _ in range(measuring - 1 if label != "default (auto)" else 0):
            fn()  # untimed: every contender has trained as many epochs as auto's measurement
    times = time_interleaved(fns, repeats=repeats, warmup=1)
    live["sequential"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *live["sequential"])
    reference = jax.tree_util.tree_leaves(live["sequential"].params)
    steps = len(x) // batch_size
    print(f"\n{name}: {members} members, MLP {'-'.join(map(str, (int(np.prod(x.shape[1:])), *sizes)))}"
          f"{' with dropout' if dropout else ''}, adamw, {len(x)} examples, batch {batch_size} ({steps} steps per "
          f"member-epoch)\n  seconds per population epoch (all members), median of {repeats}:")
    for label, seconds in times.items():
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree_util.tree_leaves(live[label].params), reference))
        print(f"  {label:12s} {seconds:8.3f} s  {times['sequential'] / seconds:5.2f}x vs sequential  "
              f"({members * steps / seconds:7.0f} member-steps/s; first call incl. compile {first_s[label]:5.1f} s; "
              f"max |params - sequential's| {diff:.1e})")
    print(f"  default (auto) chose {chosen[-1]} by the quicker of {autoexec.ROUNDS} measured epochs each: "
          + ", ".join(f"{o}: {t:.3f} s" for o, t in autoexec.CHOICES[next(reversed(autoexec.CHOICES))][2].items()))
    pbt_overhead(make_model, hparams, live["vectorized"], times["vectorized"], repeats)
    return times


def pbt_overhead(make_model, hparams, states, epoch_seconds, repeats):
    """The PBT exploit/explore step (truncation 25%, perturb lr/wd/rate, optimizer hyperparameters
    refreshed) on this population, against one vectorized population epoch."""
    pbt = PBT(space={"lr": (1e-5, 1e-1, "log"), "wd": (1e-6, 1e-1, "log"), "rate": (0.0, 0.5)}, monitor="loss")
    scores = jax.random.uniform(jax.random.key(3), (len(hparams["lr"]),))
    step = jax.jit(lambda hp, ts, key: exploit_explore(pbt, hp, ts, scores, key, make_optimizer=make_adamw))
    keys = iter(jax.random.split(jax.random.key(4), 1000))
    seconds = time_interleaved({"pbt": lambda: block(step(hparams, states, next(keys)))}, repeats=max(repeats, 10))["pbt"]
    print(f"  PBT exploit/explore step: {seconds * 1e3:.2f} ms per interval = {seconds / epoch_seconds:.2%} "
          f"of one vectorized population epoch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--mnist-examples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    x, y = jnn.data.load_digits()
    for dropout in (True, False):
        bench("8x8 digits", (32, 10), x, y, members=args.members, batch_size=32, repeats=args.repeats,
              dropout=dropout)
    try:
        x, y = jnn.data.load_mnist("train", download=False)
        source = "real MNIST (first examples)"
    except jnn.data.errors.DatasetUnavailableError as error:  # no data: random data of MNIST's shape
        print(f"\n(MNIST unavailable: {error}; using random data of MNIST's shape)")
        key = jax.random.key(2)
        x = np.asarray(jax.random.uniform(key, (args.mnist_examples, 28, 28, 1)))
        y = np.asarray(jax.random.randint(key, (args.mnist_examples,), 0, 10))
        source = "random data of MNIST's shape"
    n = args.mnist_examples
    print(f"\nMNIST data: {source}")
    bench("MNIST", (128, 64, 10), x[:n], y[:n], members=args.members, batch_size=128, repeats=args.repeats,
          chunks=(8, 1))


if __name__ == "__main__":
    main()
