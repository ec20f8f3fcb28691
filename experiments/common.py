"""Shared plumbing for the experiment scripts: dataclass configs on the command line,
run directories that never overwrite, and optional matplotlib plots."""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import typing

from jnn.io import atomic_write, fresh_path

__all__ = ["parse_config", "run_dir", "save_json", "plot_curves", "have_matplotlib", "standardize",
           "load_mnist_standardized", "test_metrics", "save_run"]


def parse_config(config_cls, argv=None, description: str | None = None):
    """Builds ``config_cls`` (a dataclass) from ``--field value`` flags; every field is a flag
    with its default shown in ``--help``. Tuples take comma-separated values (``--hidden 256,128``)."""
    parser = argparse.ArgumentParser(description=description or config_cls.__doc__)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        hint = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            parser.add_argument(flag, default=field.default, metavar="A,B,...",
                                type=lambda s, item=item: tuple(item(v) for v in s.split(",") if v))
        else:
            base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            parser.add_argument(flag, type=base, default=field.default, help=f"default: {field.default}")
    return config_cls(**vars(parser.parse_args(sys.argv[1:] if argv is None else argv)))


def run_dir(out: str | None, name: str) -> pathlib.Path | None:
    """A new directory ``out/name`` (or ``out/name-2``, ... if taken); ``None`` if ``out`` is empty."""
    if not out:
        return None
    path = fresh_path(pathlib.Path(out) / name)
    path.mkdir(parents=True)
    return path


def save_json(path: pathlib.Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curves(histories: dict[str, dict[str, list]], path: pathlib.Path,
                keys=("loss", "accuracy")) -> pathlib.Path | None:
    """Train/validation curves, one panel per key, one line pair per history; PNG at ``path``.
    Returns ``None`` (and does nothing) when matplotlib is not installed."""
    if not have_matplotlib():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for label, history in histories.items():
            prefix = f"{label} " if len(histories) > 1 else ""
            line, = ax.plot(history["epoch"], history[key], label=f"{prefix}train")
            if f"val_{key}" in history:
                ax.plot(history["epoch"], history[f"val_{key}"], "--", color=line.get_color(),
                        label=f"{prefix}validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def standardize(train, *others):
    """Scales every array by the training set's pixel mean and standard deviation."""
    mean, std = float(train.mean()), float(train.std())
    return [(a - mean) / std for a in (train, *others)]


def load_mnist_standardized(train_limit: int = 0):
    """``x, y, x_test, y_test``: the MNIST training images (the first ``train_limit`` if > 0) and
    the official test set, both scaled by the training images' pixel mean and std."""
    import jnn
    x, y = jnn.data.load_mnist("train")
    x_test, y_test = jnn.data.load_mnist("test")
    if train_limit:
        x, y = x[:train_limit], y[:train_limit]
    x, x_test = standardize(x, x_test)
    return x, y, x_test, y_test


def test_metrics(net, train_state, x, y) -> dict[str, float]:
    """Softmax cross-entropy ``"loss"`` and ``"accuracy"`` of a trained classifier over every
    example of ``(x, y)`` (one pass, after training: the test set is used once)."""
    import jax
    import jnn
    evaluate = jax.jit(jnn.train.make_eval_fn(net, jnn.losses.softmax_cross_entropy,
                                              metrics={"accuracy": jnn.metrics.accuracy}))
    return {k: float(v) for k, v in evaluate(train_state.params, train_state.state, (x, y)).items()}


def save_run(out: pathlib.Path | None, summary: dict, histories: dict[str, dict]) -> None:
    """``result.json`` and ``curves.png`` (when matplotlib is installed) in ``out``; nothing
    when ``out`` is ``None``."""
    if not out:
        return
    save_json(out / "result.json", summary)
    if plot_curves(histories, out / "curves.png"):
        print(f"learning curves: {out / 'curves.png'}")
    print(f"saved to {out}")
