"""The learning-rate finder (K rates as one vmapped population) against the same K runs one after
another with ``fit``, on the MNIST MLP and CNN: time each way and agreement.

    python experiments/lr_finder.py [--models mlp,cnn --train-limit 20000 --cnn-limit 512 --num 6 --epochs 1]

Both ways train from the same key for the same budget, so each rate's final training loss must
agree (printed: the largest relative difference) and both pick the same rate. Times include
compilation; both run in this process, the finder first.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import optax

import jnn
import mnist_cnn
import mnist_mlp
from common import load_mnist_standardized, parse_config, run_dir, save_json

LOSS = jnn.losses.softmax_cross_entropy


@dataclasses.dataclass
class Config:
    """Learning-rate finder vs a grid of separate runs (MNIST MLP and CNN, Adam)."""
    models: tuple[str, ...] = ("mlp",)   # --models mlp,cnn adds the CNN
    train_limit: int = 20000          # MLP: the first N training images
    cnn_limit: int = 512              # CNN: the first N training images
    num: int = 6
    min_lr: float = 1e-4
    max_lr: float = 0.3
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    out: str = "runs"


def compare(name: str, model: jnn.Layer, data, config: Config) -> dict:
    key = jax.random.key(config.seed)
    kwargs = dict(epochs=config.epochs, batch_size=config.batch_size, metrics={})
    start = time.perf_counter()
    found = jnn.train.lr_find(model, LOSS, optax.adam, data, key=key, min_lr=config.min_lr, max_lr=config.max_lr,
                              num=config.num, **kwargs)
    finder_s = time.perf_counter() - start
    start = time.perf_counter()
    grid = []
    for lr in found.lrs:
        try:
            run = jnn.train.fit(model, LOSS, optax.adam(float(np.float32(lr))), data, key=key, verbose=0, **kwargs)
            grid.append(run.history["loss"][-1])
        except jnn.train.NonFiniteError:
            grid.append(np.inf)
    grid_s = time.perf_counter() - start
    grid = np.asarray(grid)
    finite = np.isfinite(grid) & np.isfinite(found.losses)
    agree = float(np.max(np.abs(found.losses[finite] - grid[finite]) / np.abs(grid[finite])))
    examples = config.num * config.epochs * len(data[0])
    print(f"\n{name}: {len(data[0])} images, {config.num} learning rates x {config.epochs} epoch(s)")
    print("  lr         finder loss  grid loss")
    for lr, a, b in zip(found.lrs, found.losses, grid):
        print(f"  {lr:9.2e}  {a:11.4f}  {b:9.4f}")
    grid_pick = float(found.lrs[np.flatnonzero(grid <= grid.min() + 0.1 * abs(grid.min()))[0]])
    print(f"  suggestion {found.suggestion:.2e} (grid, same rule: {grid_pick:.2e}); lowest loss at "
          f"{found.lrs[np.argmin(found.losses)]:.2e} (grid: {found.lrs[np.argmin(grid)]:.2e}); "
          f"largest relative loss difference {agree:.1e}")
    print(f"  finder {finder_s:6.1f} s ({examples / finder_s:7.0f} examples/s)   grid one after another "
          f"{grid_s:6.1f} s ({examples / grid_s:7.0f} examples/s)   speed-up {grid_s / finder_s:.2f}x")
    return {"lrs": found.lrs.tolist(), "finder_loss": found.losses.tolist(), "grid_loss": grid.tolist(),
            "suggestion": found.suggestion, "grid_suggestion": grid_pick, "max_rel_diff": agree,
            "finder_s": finder_s, "grid_s": grid_s, "found": found}


def main(config: Config) -> dict:
    x, y, _, _ = load_mnist_standardized(max(config.train_limit, config.cnn_limit))
    models = {"mlp": (mnist_mlp.model(mnist_mlp.Config().hidden), config.train_limit),
              "cnn": (mnist_cnn.model(mnist_cnn.Config(), augmented=False), config.cnn_limit)}
    results = {name: compare(name, models[name][0], (x[:models[name][1]], y[:models[name][1]]), config)
               for name in config.models}
    out = run_dir(config.out, "lr_finder")
    if out:
        for name, r in results.items():
            try:
                import matplotlib
                matplotlib.use("Agg")
                r["found"].plot().figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
            except ImportError:
                pass
        save_json(out / "results.json", {"config": dataclasses.asdict(config),
                                         "results": {k: {f: v for f, v in r.items() if f != "found"}
                                                     for k, r in results.items()}})
        print(f"saved to {out}")
    return results


if __name__ == "__main__":
    main(parse_config(Config))
