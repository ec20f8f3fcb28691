"""Grain-fed training steps against in-memory ones: MNIST MLP and CNN, same process, interleaved.

Per model, each contender runs one epoch of ``--examples // --batch`` steps per call (medians after
warm-up, blocked on the result):
  in-memory fused   : jax.jit(jnn.train.make_train_epoch(...)), the data on the device, one lax.scan
                      (the CNN: make_stepwise_epoch, what fit runs for conv nets on CPU)
  raw host loop     : hand-written baseline, a Python loop that slices NumPy batches, jax.device_put
                      and calls the jitted step (no Grain, no prefetch)
  raw host chunks   : hand-written floor of the streamed path (fused models only): NumPy chunks of
                      the largest k batches, stacked before timing, each jax.device_put and run by
                      one jitted lax.scan; what streaming costs without any reading
  grain, 0 workers  : jnn.train.stream (what fit runs for a stream) over jnn.data.grain.pipeline
                      (global shuffle, batches read in Grain's reader threads), one jitted step per
                      batch, two batches prefetched
  grain, 0 w, chunk k: the same, k batches per jitted lax.scan (fit's default for streams, k = 8),
                      stacked on the host and transferred together, two chunks prefetched
  grain, N w, chunk k: the same with --workers Grain worker processes (mp_prefetch), largest k
Printed: ms per step and the ratio to in-memory. Also the input pipeline alone (batches/s with
no training, and its CPU time per batch in this process and in the workers), which is where the
time goes when a step is this small. With --uint8 every contender keeps the images as uint8
(MNIST's own type) and the models scale them to [0, 1] on the device: 4x fewer bytes through the
pipeline, the same values. With --idx the models and baselines keep float32 images, and the
Grain contenders stream them as ``jnn.data.grain.mnist_source`` does: the IDX file's uint8 bytes,
converted to float32 / 255 by the source's transform where the batch is read; the model sees the
same float32 batches as in-memory.

    python benchmarks/input_pipeline.py [--examples 12800] [--batch 128] [--workers 2] [--repeats 5] [--uint8 | --idx]
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import block, machine, time_interleaved
from jnn.train.stream import Feed, StreamEpochs


def models(uint8: bool):
    scale = [jnn.stateless("scale", lambda x: x.astype(jnp.float32) / 255)] if uint8 else []
    mlp = jnn.serial(*scale, jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))
    cnn = jnn.serial(*scale, jnn.conv(16, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.conv(32, (3, 3)),
                     jnn.relu(), jnn.max_pool((2, 2)), jnn.flatten(), jnn.dense(10))
    return {"mlp": (mlp, True), "cnn": (cnn, False)}


def contenders(model, fused: bool, x, y, source, args):
    loss, opt = jnn.losses.softmax_cross_entropy, optax.adam(1e-3)
    ts0 = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:args.batch])
    step = jnn.train.make_train_step(model, loss, opt)
    n, steps = len(x), len(x) // args.batch
    epoch = (jax.jit(jnn.train.make_train_epoch(step, n, args.batch)) if fused
             else jnn.train.make_stepwise_epoch(step, n, args.batch))
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    state = {"memory": ts0, "raw": ts0}
    raw_step = jax.jit(step)

    def in_memory():
        state["memory"], logs = epoch(state["memory"], (xd, yd))
        block(logs)

    def raw_host_loop():
        ts = state["raw"]
        for i in range(steps):
            sl = slice(i * args.batch, (i + 1) * args.batch)
            ts, logs = raw_step(ts, jax.device_put((x[sl], y[sl])))
        state["raw"] = block(ts)

    fns = {"in-memory fused": in_memory, "raw host loop": raw_host_loop}
    if fused:
        k = max(args.chunks)
        scan = jax.jit(lambda ts, chunk: jax.lax.scan(step, ts, chunk))
        starts = range(0, steps, k)   # the last chunk holds the steps % k left over, if any
        host_chunks = [(x[i * args.batch:min(i + k, steps) * args.batch].reshape(-1, args.batch, *x.shape[1:]),
                        y[i * args.batch:min(i + k, steps) * args.batch].reshape(-1, args.batch)) for i in starts]
        state["chunks"] = ts0

        def raw_host_chunks():
            ts = state["chunks"]
            for chunk in host_chunks:
                ts, logs = scan(ts, jax.device_put(chunk))
            state["chunks"] = block(ts)
        fns[f"raw host chunks of {k}"] = raw_host_chunks
    chunks, feeds = args.chunks if fused else [1], []
    for workers, chunk in [(0, c) for c in chunks] + [(args.workers, max(chunks))]:
        pipe = jnn.data.grain.pipeline(source, batch_size=args.batch, seed=0, worker_count=workers)
        feed = Feed(pipe, pipe.steps_per_epoch)
        feeds.append(feed)
        runner = StreamEpochs(step, feed, ts0, chunk=chunk)
        name = f"grain, {workers} w, chunk {chunk}"
        state[name] = ts0

        def streamed(name=name, runner=runner):
            state[name], logs = runner(state[name])
            block(logs)

        fns[name] = streamed
    return fns, steps, feeds


def _stat(pid) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ..., utime, stime, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pids) -> float:
    ticks = sum(sum(map(int, _stat(pid)[11:13])) for pid in pids)   # utime + stime, one read per process
    return ticks / os.sysconf("SC_CLK_TCK")


def _children() -> list[str]:
    me, kids = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if _stat(pid)[1] == me:
                kids.append(pid)
        except OSError:   # gone meanwhile
            pass
    return kids


def pipeline_alone(source, args, workers: int) -> tuple[float, float, float]:
    """Batches per second, and CPU ms per batch in this process and in its worker processes
    (after one epoch of warm-up, which starts every worker)."""
    pipe = jnn.data.grain.pipeline(source, batch_size=args.batch, seed=0, worker_count=workers)
    it = iter(pipe)
    for _ in range(pipe.steps_per_epoch):
        next(it)
    kids = _children() if os.path.isdir("/proc") else []
    count, own, theirs = 2 * pipe.steps_per_epoch, time.process_time(), _cpu_seconds(kids)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    seconds = time.perf_counter() - start
    own, theirs = time.process_time() - own, _cpu_seconds(kids) - theirs
    it.close()
    return count / seconds, 1e3 * own / count, 1e3 * theirs / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=12800)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 16],
                        help="batches per scan for the streamed MLP (the CNN streams stepwise, as it trains)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--uint8", action="store_true", help="uint8 images, scaled on the device")
    images.add_argument("--idx", action="store_true",
                        help="float32 images, streamed from MNIST's uint8 bytes as mnist_source reads them")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    args = parser.parse_args()
    x, y = jnn.data.load_mnist("train")
    x, y = x[:args.examples], y[:args.examples]
    stored = np.round(x * 255).astype(np.uint8)   # the IDX file's bytes: load_mnist divided them by 255
    if args.uint8:
        x = stored
    source = jnn.data.grain.ArraySource(x, y)
    if args.idx:
        source = jnn.data.grain.ArraySource(stored[..., 0], y, transform=jnn.data.grain.mnist_record)
        assert np.array_equal(source.read_batch(np.arange(args.batch))[0], x[:args.batch])   # the same batches
    print(machine(), f"| load average {os.getloadavg()[0]:.1f} | images {x.dtype}"
          f"{', streamed from uint8 bytes' if args.idx else ''}")
    for workers in (0, args.workers):
        rate, own, theirs = pipeline_alone(source, args, workers)
        print(f"input pipeline alone, {workers} workers: {rate:,.0f} batches/s; CPU per batch {own:.3f} ms in "
              f"this process, {theirs:.3f} ms in workers")
    for name, (model, fused) in models(args.uint8).items():
        if name not in args.models:
            continue
        fns, steps, feeds = contenders(model, fused, x, y, source, args)
        times = time_interleaved(fns, repeats=args.repeats, warmup=1)
        for feed in feeds:
            feed.close()   # stops Grain's worker processes and frees their shared memory
        base = times["in-memory fused"]
        for contender, seconds in times.items():
            print(f"{name}  {contender:22s} {1e3 * seconds / steps:7.3f} ms/step   ratio to in-memory "
                  f"{seconds / base:5.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
