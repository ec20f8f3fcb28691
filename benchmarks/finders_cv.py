"""lr_find and cross_validate (populations) against the same runs one after another, MLP and CNN.

The sequential contender is what a user would write with the same compiled code reused for every
run: one train step (or, where fit fuses epochs, one scan-fused epoch) jitted once with the
hyperparameters traced, and one evaluation, called run after run in a Python loop; each run
initialized, shuffled and evaluated as fit does, so its params equal the population member's
(the largest difference is printed). fit's own choice of execution decides fused or stepwise:
the MLP's epochs are one lax.scan, the CNN trains stepwise on CPU (jax-ml/jax#12868).

Times are process CPU seconds (time.process_time: all threads; run it pinned to one core,
`taskset -c 1`, on a shared machine): each side's first call (trace + compile + run) in a fresh
process, and then, with the compiled code reused on both sides, the median of --repeats
interleaved calls. Ratio = sequential / population: >= 1 means the population
is at least as fast. members="auto" is the default; "vmap" is also timed for the CNN.

    JNN_DATA_DIR=../shared/data taskset -c 1 python benchmarks/finders_cv.py [--examples 8192 --num 6 --epochs 1]
"""
from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import machine
from jnn.train import compiler_options, epoch_order, init_train_state, make_eval_fn, make_train_step
from jnn.train.step import gather

LOSS = jnn.losses.softmax_cross_entropy


def mlp(hp):
    return jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))


def cnn(hp):
    return jnn.serial(jnn.conv(16, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.conv(32, (3, 3)), jnn.relu(),
                      jnn.max_pool((2, 2)), jnn.flatten(), jnn.dense(64), jnn.relu(), jnn.dense(10))


def adam(hp):
    return optax.adam(hp["lr"])


@functools.cache
def compiled(make_model, batch_size):
    """The step, fused epoch, evaluation and shuffle that every sequential run reuses (jitted once)."""
    def step(hp, ts, data, idx):
        return make_train_step(make_model(hp), LOSS, adam(hp), metrics={})(ts, gather(data, idx))

    def epoch(hp, ts, data):
        key, perm = jax.random.split(ts.key)
        return jax.lax.scan(lambda t, idx: step(hp, t, data, idx), ts._replace(key=key),
                            epoch_order(perm, len(data[0]), batch_size))

    def evaluate(hp, ts, data):
        return make_eval_fn(make_model(hp), LOSS, metrics={})(ts.params, ts.state, data, ts.step)

    def shuffle(ts, n):
        key, perm = jax.random.split(ts.key)
        return ts._replace(key=key), epoch_order(perm, n, batch_size)

    return (*(jax.jit(f, compiler_options=compiler_options()) for f in (step, epoch, evaluate)),
            jax.jit(shuffle, static_argnums=1))


def sequential_runs(make_model, runs, *, epochs, batch_size, fused):
    """``runs``: ``(hp, key, train, held_out or None)``, each trained as ``fit(..., key=key)`` (fused or
    stepwise) with the same compiled functions. Returns each run's final params (leaves)."""
    step_jit, epoch_jit, eval_jit, shuffle = compiled(make_model, batch_size)
    params = []
    for hp, key, train, held_out in runs:
        example = jax.ShapeDtypeStruct((batch_size, *train[0].shape[1:]), train[0].dtype)
        ts = init_train_state(make_model(hp), adam(hp), jax.random.split(key)[0], example)
        for _ in range(epochs):
            if fused:
                ts, logs = epoch_jit(hp, ts, train)
            else:
                ts, order = shuffle(ts, len(train[0]))
                for idx in order:
                    ts, logs = step_jit(hp, ts, train, idx)
            if held_out is not None:
                logs = eval_jit(hp, ts, held_out)
        params.append(jax.tree_util.tree_leaves(ts.params))
    return params


def timed(fn):
    start = time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.process_time() - start


def compare(label, population_fn, sequential_fn, member_params, repeats, first):
    """Times both: ``first`` (seconds of each side's first call, trace + compile + run, each in a fresh
    process), then ``repeats`` interleaved calls with the compiled code reused (median); prints the
    ratios and the largest param difference."""
    pop, seq = population_fn(), sequential_fn()   # warm-up
    again = np.median([[timed(fn)[1] for fn in (population_fn, sequential_fn)] for _ in range(repeats)], axis=0)
    diff = max(float(jnp.max(jnp.abs(member_params(pop, i)[k] - s[k])))
               for i, s in enumerate(seq) for k in range(len(s)))
    print(f"  {label:50s} first {first[0]:6.2f} s vs {first[1]:6.2f} s = {first[1] / first[0]:5.2f}x   "
          f"again {again[0]:6.2f} s vs {again[1]:6.2f} s = {again[1] / again[0]:5.2f}x   max |params diff| {diff:.1e}",
          flush=True)


def cases(args, x_all, y_all):
    """``(model name, label, population_fn, sequential_fn, member_params)`` of every comparison (nothing run)."""
    bs, epochs, key = args.batch_size, args.epochs, jax.random.key(0)
    flat = lambda tree: jax.tree_util.tree_leaves(tree)
    for name, make_model, fused in (("MLP 784-128-64-10", mlp, True), ("CNN conv16-conv32-dense64", cnn, False)):
        if make_model.__name__ not in args.models.split(","):
            continue
        model = make_model({})   # one model object: lr_find's compiled code is reused across its calls
        fixed = lambda hp, model=model: model
        for members, n in [("auto", args.examples)] + ([("vmap", args.vmap_examples)] if not fused else []):
            x, y = x_all[:n], y_all[:n]
            lrs = np.geomspace(1e-4, 1e-2, args.num)
            yield (name, f"lr_find, {args.num} rates, {n} examples, members={members}",
                   lambda x=x, y=y, members=members: jnn.train.lr_find(
                       model, LOSS, optax.adam, (x, y), key=key, min_lr=1e-4, max_lr=1e-2, num=args.num, epochs=epochs,
                       batch_size=bs, metrics={}, members=members),
                   lambda x=x, y=y, fixed=fixed, fused=fused: sequential_runs(
                       fixed, [({"lr": jnp.float32(lr)}, key, (x, y), None) for lr in lrs], epochs=epochs,
                       batch_size=bs, fused=fused),
                   lambda found, i: flat(jax.tree_util.tree_map(lambda a: a[i], found.population.train_states.params)))
            split_key, seed_key = jax.random.split(key)   # cross_validate's folds and seed keys
            size = n // args.folds
            folds = np.asarray(jax.random.permutation(split_key, n))[: size * args.folds].reshape(args.folds, size)
            seed_keys = jax.random.split(seed_key, args.seeds)

            def fold_runs(x=x, y=y, folds=folds, seed_keys=seed_keys):   # as a user would gather them (timed)
                runs = []
                for f in range(args.folds):
                    rest = np.concatenate([folds[j] for j in range(args.folds) if j != f])
                    train, held_out = (x[rest], y[rest]), (x[folds[f]], y[folds[f]])
                    runs += [({"lr": jnp.float32(1e-3)}, seed_keys[s], train, held_out) for s in range(args.seeds)]
                return runs
            yield (name, f"cross_validate, {args.folds}x{args.seeds}, {n} examples, members={members}",
                   lambda x=x, y=y, members=members, make_model=make_model: jnn.train.cross_validate(
                       make_model, LOSS, adam, (x, y), key=key, folds=args.folds, seeds=args.seeds,
                       hparams={"lr": jnp.array([1e-3])}, epochs=epochs, batch_size=bs, metrics={}, members=members),
                   lambda make_model=make_model, fold_runs=fold_runs, fused=fused: sequential_runs(
                       make_model, fold_runs(), epochs=epochs, batch_size=bs, fused=fused),
                   lambda result, i: flat(jax.tree_util.tree_map(lambda a: a[i], result.train_states.params)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--vmap-examples", type=int, default=512, help="the CNN's members=\"vmap\" rows (slow)")
    parser.add_argument("--num", type=int, default=6, help="lr_find's rates")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--first", nargs=2, help=argparse.SUPPRESS)   # (label, side): one first call, its seconds
    args = parser.parse_args()
    try:
        x, y = jnn.data.load_mnist("train", download=False)
        x_all, y_all = jnp.asarray(x[: args.examples]), jnp.asarray(y[: args.examples])
    except jnn.data.errors.DatasetUnavailableError:
        x_all = jax.random.uniform(jax.random.key(2), (args.examples, 28, 28, 1))
        y_all = jax.random.randint(jax.random.key(3), (args.examples,), 0, 10)
    if args.first:
        case = next(c for c in cases(args, x_all, y_all) if f"{c[0]}: {c[1]}" == args.first[0])
        print(timed(case[2] if args.first[1] == "population" else case[3])[1])
        return
    print(machine())
    shown = None
    for name, label, population_fn, sequential_fn, member_params in cases(args, x_all, y_all):
        if name != shown:
            print(f"\n{name}: batch {args.batch_size}, {args.epochs} epochs, adam; CPU seconds, population vs "
                  f"sequential = ratio", flush=True)
            shown = name
        first = [float(subprocess.run([sys.executable, __file__, *sys.argv[1:], "--first", f"{name}: {label}", side], check=True,
                                      capture_output=True, text=True).stdout.split()[-1])
                 for side in ("population", "sequential")]
        compare(label, population_fn, sequential_fn, member_params, args.repeats, first)


if __name__ == "__main__":
    main()
