"""Training from a dataset larger than memory: augmented MNIST on disk, streamed through Grain.

    python experiments/streaming.py                      # 16x and 80x augmented MNIST (0.25 and 1.25 GB)
    python experiments/streaming.py --copies 2,10 --steps 200

For each size it writes ``copies`` randomly rotated/scaled/sheared copies of MNIST's training
images (the sizes above are for the 20,000 in the shared test data; 3x that for all 60,000),
as uint8, augmented on device with :func:`jnn.data.augment.random_affine` one chunk at a time,
into one ``.npy`` file, then trains a 784-128-10 MLP from it in a fresh process:
:func:`jnn.data.grain.pipeline` over :class:`jnn.data.grain.NpySource` (records read with
``pread``, so nothing is mapped into the process) feeding :func:`jnn.train.fit`.

It reports, per size: the file size, the training process's peak resident memory
(``resource.getrusage``) and its resident memory before training, the test accuracy, and where
the time goes: seconds per batch for the input pipeline alone (reading, shuffling, converting,
batching) against seconds per streamed training step (the second of two epochs of ``steps / 2``,
after compilation). An MLP step takes about a millisecond, so the host pipeline sets the pace.
Peak memory should be the same at both sizes (within 20%), and below the memory budget that the
larger file exceeds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import jnn
from common import parse_config, run_dir, save_json


@dataclasses.dataclass
class Config:
    """Train an MNIST MLP from augmented copies of MNIST on disk, in bounded memory."""
    copies: tuple[int, ...] = (16, 80)    # dataset sizes, in augmented copies of the training images
    train_limit: int = 0                   # use only the first N training images per copy (0: all)
    steps: int = 400                       # training steps at each size
    batch_size: int = 128
    hidden: int = 128
    learning_rate: float = 1e-3
    memory_budget_mb: int = 768            # peak RSS must stay below it; the largest file should exceed it
    chunk: int = 6000                      # images augmented and written at a time
    data: str = ""                         # where the .npy files go, rewritten each run (default: a temp dir, removed)
    seed: int = 0
    out: str = "runs"                      # run directory root ("" to save nothing)
    train_dir: str = ""                    # internal: train from this directory and print JSON


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def write_dataset(directory: pathlib.Path, copies: int, config: Config) -> int:
    """Writes ``images.npy`` (uint8 ``[copies * n, 28, 28]``) and ``labels.npy``; returns the bytes written."""
    from jnn.data.idx import read_idx
    images = read_idx(jnn.data.data_dir() / "mnist" / "train-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(jnn.data.data_dir() / "mnist" / "train-labels-idx1-ubyte.gz", ndim=1)
    if config.train_limit:
        images, labels = images[:config.train_limit], labels[:config.train_limit]
    augment = jax.jit(jnn.data.augment.random_affine(15, max_scale=0.1, max_shear=10))

    def chunks():
        key = jax.random.key(config.seed)
        for _ in range(copies):
            for start in range(0, len(images), config.chunk):
                key, sub = jax.random.split(key)
                batch = images[start:start + config.chunk, :, :, None].astype(np.float32)
                out = np.asarray(augment(sub, batch))[..., 0]
                yield np.clip(np.rint(out), 0, 255).astype(np.uint8)

    directory.mkdir(parents=True, exist_ok=True)
    n = copies * len(images)
    jnn.data.grain.write_npy(directory / "images.npy", (n, 28, 28), np.uint8, chunks(), overwrite=True)  # rewritten
    np.save(directory / "labels.npy", np.tile(labels.astype(np.int32), copies))
    return sum((directory / f).stat().st_size for f in ("images.npy", "labels.npy"))


def train_from_disk(directory: pathlib.Path, config: Config) -> dict:
    """Trains from ``directory`` in this process; returns the measurements."""
    import optax
    source = jnn.data.grain.ArraySource(jnn.data.grain.NpySource(directory / "images.npy"),
                                        np.load(directory / "labels.npy"), transform=jnn.data.grain.mnist_record)
    pipeline = lambda: jnn.data.grain.pipeline(source, batch_size=config.batch_size, seed=config.seed)
    x_test, y_test = jnn.data.load_mnist("test")
    model = jnn.serial(jnn.flatten(), jnn.dense(config.hidden), jnn.relu(), jnn.dense(10))
    rss_before = _current_rss_mb()
    start, it = time.perf_counter(), iter(pipeline())
    for _ in range(config.steps):        # the input pipeline alone
        next(it)
    read_seconds = time.perf_counter() - start
    del it
    per_epoch = max(1, config.steps // 2)   # two "epochs" of steps/2: the second one is timed (compiled)
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(config.learning_rate),
                           jnn.train.Data(pipeline(), steps_per_epoch=per_epoch, check=False),
                           key=jax.random.key(config.seed), epochs=2, verbose=0)
    test = jax.jit(jnn.train.make_eval_fn(model, jnn.losses.softmax_cross_entropy,
                                          metrics={"accuracy": jnn.metrics.accuracy}))(
        result.train_state.params, result.train_state.state, (x_test, y_test))
    return {"records": len(source), "peak_rss_mb": _peak_rss_mb(), "rss_before_training_mb": rss_before,
            "test_accuracy": float(test["accuracy"]), "pipeline_seconds_per_batch": read_seconds / config.steps,
            "fit_seconds_per_step": result.history["time"][-1] / per_epoch, "history": result.history}


def _child_env() -> dict:
    """This environment, with the checkout that holds ``jnn`` on the child's path."""
    root = str(pathlib.Path(jnn.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def main(config: Config) -> dict:
    if config.train_dir:
        return train_from_disk(pathlib.Path(config.train_dir), config)
    root = pathlib.Path(config.data) if config.data else pathlib.Path(tempfile.mkdtemp(prefix="jnn-streaming-"))
    rows = []
    for copies in config.copies:
        directory = root / f"mnist-x{copies}"
        start = time.perf_counter()
        size = write_dataset(directory, copies, config)
        write_seconds = time.perf_counter() - start
        flags = [f"--{f.name.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                 for f in dataclasses.fields(config) for v in [getattr(config, f.name)] if f.name != "train_dir"]
        proc = subprocess.run([sys.executable, __file__, *flags, f"--train-dir={directory}"],
                              capture_output=True, text=True, env=_child_env())
        if proc.returncode:
            raise RuntimeError(f"streaming: training from {directory} failed:\n{proc.stderr[-3000:]}")
        row = {"copies": copies, "dataset_mb": size / 2 ** 20, "write_seconds": write_seconds,
               **json.loads(proc.stdout.strip().splitlines()[-1])}
        row["input_share"] = row["pipeline_seconds_per_batch"] / row["fit_seconds_per_step"]
        rows.append(row)
        print(f"{copies:3d} copies: {row['records']:9,d} records, {row['dataset_mb']:7.1f} MB on disk; peak RSS "
              f"{row['peak_rss_mb']:6.1f} MB (before training {row['rss_before_training_mb']:6.1f} MB); test "
              f"accuracy {row['test_accuracy']:.2%}; input pipeline {1e3 * row['pipeline_seconds_per_batch']:.2f} "
              f"ms/batch vs {1e3 * row['fit_seconds_per_step']:.2f} ms/step", flush=True)
        for f in ("images.npy", "labels.npy"):
            (directory / f).unlink()
    peaks = [r["peak_rss_mb"] for r in rows]
    summary = {"rows": rows, "peak_rss_ratio": max(peaks) / min(peaks),
               "memory_budget_mb": config.memory_budget_mb, "largest_dataset_mb": max(r["dataset_mb"] for r in rows),
               "within_budget": max(peaks) < config.memory_budget_mb, "config": dataclasses.asdict(config),
               "machine_load": os.getloadavg()}
    print(f"peak RSS ratio across sizes {summary['peak_rss_ratio']:.3f}; budget {config.memory_budget_mb} MB, "
          f"largest dataset {summary['largest_dataset_mb']:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    out = run_dir(config.out, "streaming")
    if out:
        save_json(out / "result.json", summary)
        print(f"saved to {out}")
    return summary


if __name__ == "__main__":
    config = parse_config(Config)
    result = main(config)
    if config.train_dir:   # the training child reports to its parent on stdout
        print(json.dumps(result, default=float))
