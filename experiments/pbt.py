"""Population-based training on an MNIST MLP against random search at equal member-epochs.

    python experiments/pbt.py                      # 16 members x 8 epochs, seeds 0, 1, 2
    python experiments/pbt.py --members 8 --epochs 6 --train-limit 4000

Both methods train ``members`` MLPs ``784 -> 128 -> ReLU -> dropout -> 10`` with AdamW for
``epochs`` epochs (the same member-epochs), drawing the initial learning rate, weight decay and
dropout rate from the same ranges (log-uniform, log-uniform, uniform) with the same seed. Random
search keeps each member's values (``jnn.train.search``); PBT (``jnn.train.pbt.fit_pbt``) every
``interval`` epochs replaces the worst quarter with copies of the best quarter and perturbs the
copies' values by 0.8 or 1.2. Members are ranked by their final validation accuracy (10% of the
training images held out); the official test set is used once per method and seed, for the
top-ranked member. Plots each PBT member's hyperparameter schedule and lineage (``pbt.png``).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import have_matplotlib, load_mnist_standardized, parse_config, run_dir, save_json, test_metrics
from jnn.train.pbt import PBT, fit_pbt

SPACE = {"lr": (1e-4, 3e-2, "log"), "wd": (1e-6, 1e-1, "log"), "rate": (0.0, 0.6)}


@dataclasses.dataclass
class Config:
    """PBT against random search on MNIST at equal member-epochs."""
    members: int = 16
    epochs: int = 8
    interval: int = 2              # PBT: epochs between exploit/explore steps
    fraction: float = 0.25         # PBT: truncation fraction
    seeds: tuple[int, ...] = (0, 1, 2)
    hidden: int = 128
    batch_size: int = 128
    val_split: float = 0.1
    train_limit: int = 10000       # the first N training images (0: all)
    out: str = "runs"


def make_model(config: Config):
    return lambda hp: jnn.serial(jnn.flatten(), jnn.dense(config.hidden), jnn.relu(), jnn.dropout(hp["rate"]),
                                 jnn.dense(10))


def make_optimizer(hp):
    return optax.inject_hyperparams(optax.adamw)(learning_rate=hp["lr"], weight_decay=hp["wd"])


def initial_hparams(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    draw = lambda low, high, log=None: (10 ** rng.uniform(np.log10(low), np.log10(high), n) if log
                                        else rng.uniform(low, high, n))
    return {k: jnp.asarray(draw(*bounds), jnp.float32) for k, bounds in SPACE.items()}


def run_seed(config: Config, seed: int, data) -> dict:
    x, y, x_test, y_test = data
    hparams, model = initial_hparams(config.members, seed), make_model(config)
    kwargs = dict(key=jax.random.key(seed), epochs=config.epochs, batch_size=config.batch_size,
                  val_split=config.val_split)
    start = time.perf_counter()
    pbt = fit_pbt(model, jnn.losses.softmax_cross_entropy, make_optimizer, (x, y), hparams=hparams,
                  pbt=PBT(space=SPACE, interval=config.interval, fraction=config.fraction), **kwargs)
    pbt_seconds = time.perf_counter() - start
    configs = [{k: float(v[i]) for k, v in hparams.items()} for i in range(config.members)]
    start = time.perf_counter()
    random = jnn.train.search(model, jnn.losses.softmax_cross_entropy, make_optimizer, (x, y), configs=configs,
                              **kwargs)
    random_seconds = time.perf_counter() - start
    best_pbt = int(np.nanargmax(pbt.history["val_accuracy"][-1]))
    best_random = int(np.nanargmax([r.history["val_accuracy"][-1] for r in random]))
    pbt_state = jax.tree_util.tree_map(lambda a: a[best_pbt], pbt.train_states)
    return {"seed": seed,
            "pbt": {"member": best_pbt, "val_accuracy": float(pbt.history["val_accuracy"][-1, best_pbt]),
                    "test_accuracy": test_metrics(model({"rate": 0.0}), pbt_state, x_test, y_test)["accuracy"],
                    "final_hparams": {k: float(v[best_pbt]) for k, v in pbt.hparams.items()},
                    "seconds": pbt_seconds},
            "random": {"member": best_random, "val_accuracy": float(random[best_random].history["val_accuracy"][-1]),
                       "test_accuracy": test_metrics(model({"rate": 0.0}), random[best_random].train_state, x_test,
                                                     y_test)["accuracy"],
                       "hparams": configs[best_random], "seconds": random_seconds},
            "_pbt_result": pbt}


def plot_pbt(result, path) -> bool:
    """Each member's hyperparameter schedule (one panel per hyperparameter) and, in the last
    panel, lineage: a line from donor to copier at each exploit step."""
    if not have_matplotlib():
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result.hparam_history)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.5 * (len(names) + 1), 3.6))
    epochs = np.arange(1, result.history["loss"].shape[0] + 1)
    for ax, name in zip(axes, names):
        ax.plot(epochs, result.hparam_history[name], lw=1)
        ax.set(xlabel="epoch", ylabel=name, yscale="log" if name in ("lr", "wd") else "linear")
    ax = axes[-1]
    for s, epoch in enumerate(result.lineage_epochs):
        for i, j in enumerate(result.lineage[s]):
            if i != j:
                ax.plot([epoch, epoch + 1], [j, i], "k-", alpha=0.6)
    ax.set(xlabel="epoch", ylabel="member (line: copied from)", title="lineage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(config: Config) -> dict:
    if config.members < 4 or config.epochs < config.interval + 1:
        raise ValueError(f"pbt: need --members >= 4 and --epochs > --interval, got {config.members}, "
                         f"{config.epochs}, {config.interval}")
    data = load_mnist_standardized(config.train_limit)
    runs = []
    for seed in config.seeds:
        run = run_seed(config, seed, data)
        print(f"seed {seed}: PBT best test {run['pbt']['test_accuracy']:.2%} (val {run['pbt']['val_accuracy']:.2%}, "
              f"{run['pbt']['seconds']:.0f} s); random search best test {run['random']['test_accuracy']:.2%} "
              f"(val {run['random']['val_accuracy']:.2%}, {run['random']['seconds']:.0f} s)", flush=True)
        runs.append(run)
    wins = sum(r["pbt"]["test_accuracy"] >= r["random"]["test_accuracy"] for r in runs)
    summary = {"config": dataclasses.asdict(config), "member_epochs": config.members * config.epochs,
               "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
               "pbt_matches_or_beats_random": wins, "seeds": len(runs)}
    print(f"PBT matched or beat random search on {wins} of {len(runs)} seeds "
          f"({config.members} members x {config.epochs} epochs each)")
    out = run_dir(config.out, "pbt")
    if out:
        save_json(out / "result.json", summary)
        if plot_pbt(runs[0]["_pbt_result"], out / "pbt.png"):
            print(f"schedules and lineage: {out / 'pbt.png'}")
    return {**summary, "_results": [r["_pbt_result"] for r in runs]}


if __name__ == "__main__":
    main(parse_config(Config))
