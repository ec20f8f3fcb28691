"""jnn against its peers: the same train steps in raw JAX, jnn, Flax Linen, Flax NNX, Equinox and
PyTorch eager, timed in one process, interleaved, medians after warm-up; ratios to raw JAX.

Models (peers_jax.py): the MNIST MLP and CNN, an LSTM over 28 rows of 28 pixels, one pre-norm
transformer encoder block on [B, 64, 128]; each a train step with softmax cross-entropy and
Adam on a fixed set of random batches. Frameworks that are not installed are skipped with a note
(``pip install -e ".[bench]"`` installs them). PyTorch runs eager on the CPU with 2 threads
(``--torch-threads``). Then the MLP's per-step jit and fused epoch (one ``lax.scan``) at each
``--mlp-batches`` size, against raw JAX (benchmarks/train_step.py).

    python benchmarks/peers.py [--models mlp,cnn,lstm,transformer --batch 128 --steps 10 --repeats 5]
    taskset -c 1 python benchmarks/peers.py --torch-threads 1 --cpu-time   # one core, CPU time (loaded machine)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's jnn
from common import block, machine, time_interleaved  # noqa: E402
import peers_frameworks as others  # noqa: E402
import peers_jax  # noqa: E402
import train_step  # noqa: E402

FRAMEWORKS = {"raw JAX": peers_jax.make_raw, "jnn": peers_jax.make_jnn, "Flax Linen": others.make_linen,
              "Flax NNX": others.make_nnx, "Equinox": others.make_equinox, "PyTorch eager": others.make_torch}


def runners(model: str, batch: int, steps: int, frameworks, torch_threads: int, notes: list):
    """One zero-argument function per framework that runs ``steps`` train steps and blocks."""
    rng = np.random.default_rng(0)
    xs = rng.uniform(size=(steps, batch, *peers_jax.SHAPES[model])).astype(np.float32)
    ys = rng.integers(0, 10, size=(steps, batch)).astype(np.int32)
    fns = {}
    for name in frameworks:
        make = FRAMEWORKS[name]
        try:
            if name == "PyTorch eager":
                step, carry, convert = make(model, None, batch, threads=torch_threads)
                batches = [convert(x, y) for x, y in zip(xs, ys)]
            else:
                step, carry = make(model, jax.random.key(0), batch)
                batches = [(jax.device_put(x), jax.device_put(y)) for x, y in zip(xs, ys)]
        except ImportError as error:
            notes.append(f"{name} skipped: not installed ({error.name})")
            continue
        fns[name] = _runner(name, step, carry, batches)
    return fns


def _runner(name, step, carry, batches):
    state = {"carry": carry}

    def run():
        c = state["carry"]
        for x, y in batches:
            c = step(c, x, y)
        if name == "Flax NNX":
            from flax import nnx
            block(nnx.state(c[0]))
        else:
            block(c)
        state["carry"] = c

    return run


def peer_table(models, batch, steps, repeats, frameworks, torch_threads, clock=time.perf_counter):
    notes, rows = [], []
    for model in models:
        times = time_interleaved(runners(model, batch, steps, frameworks, torch_threads, notes), repeats=repeats,
                                 clock=clock)
        ms = {name: t / steps * 1e3 for name, t in times.items()}
        rows.append((model, ms))
    names = [n for n in frameworks if any(n in ms for _, ms in rows)]
    lines = [f"batch {batch}; ms per train step of raw JAX, then each framework's time / raw JAX's "
             f"(median of {repeats} interleaved runs of {steps} steps{', CPU time' if clock is time.process_time else ''})",
             f"{'model':12s} {'raw JAX ms':>10s} " + " ".join(f"{n:>13s}" for n in names)]
    for model, ms in rows:
        raw = ms.get("raw JAX")
        cells = [f"{ms[n] / raw:13.2f}" if n in ms and raw else f"{'-':>13s}" for n in names]
        lines.append(f"{model:12s} {raw if raw else float('nan'):10.3f} " + " ".join(cells))
    if "PyTorch eager" in names and "jnn" in names:
        lines.append("jnn / PyTorch eager: " + ", ".join(
            f"{m} {ms['jnn'] / ms['PyTorch eager']:.2f}" for m, ms in rows if "PyTorch eager" in ms))
    return lines + sorted(set(notes))


def mlp_lines(batches, examples, repeats):
    lines = []
    for bs in batches:
        per_step, paired, _, caches = train_step.bench(bs, examples, repeats, pairs=20 * repeats)
        lines.append(f"MLP batch {bs}: per-step jit jnn/raw = "
                     f"{per_step['jnn per-step jit'] / per_step['raw per-step jit']:.3f} "
                     f"(median of {20 * repeats} paired 20-step blocks: {paired:.3f}) "
                     f"(raw {per_step['raw per-step jit']:.3f} ms); fused epoch jnn/raw scan = "
                     f"{per_step['jnn fused epoch'] / per_step['raw fused epoch']:.3f} "
                     f"(raw {per_step['raw fused epoch']:.3f} ms/step); compiles {caches}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,lstm,transformer")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--mlp-batches", default="128,1024", help="'' to skip the MLP per-step/fused lines")
    parser.add_argument("--mlp-examples", type=int, default=6000)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time this process's CPU time, not wall time (one core: taskset -c 1 ... --torch-threads 1)")
    parser.add_argument("--out", default="", help="also append the output to this file")
    args = parser.parse_args(argv)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks {sorted(unknown)}; choose from {list(FRAMEWORKS)}")
    lines = [machine(), f"load average: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs"]
    print("\n".join(lines), flush=True)
    for line in peer_table(args.models.split(","), args.batch, args.steps, args.repeats, frameworks,
                           args.torch_threads, time.process_time if args.cpu_time else time.perf_counter):
        print(line, flush=True)
        lines.append(line)
    if args.mlp_batches:
        for line in mlp_lines([int(b) for b in args.mlp_batches.split(",")], args.mlp_examples, args.repeats):
            print(line, flush=True)
            lines.append(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
