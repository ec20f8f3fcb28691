"""A variational autoencoder on MNIST: MLP encoder and decoder, a dict output through ``fit``.

    python experiments/vae.py                     # latent 2: a latent-space map of the digits
    python experiments/vae.py --latent 16 --epochs 20

The model returns ``{"logits", "mu", "logvar"}``; the loss takes the step and anneals the KL
weight ``beta`` linearly from 0 to 1 over ``--kl-warmup-steps``, returning ``(loss, logs)``, so
the reconstruction term, the KL term and ``beta`` are logged for training and validation. The
likelihood is Bernoulli over pixel intensities in [0, 1] (cross-entropy with logits, summed
over the 784 pixels); all figures are nats per image. Saved in the run directory: ``result.json``,
``history.csv``, ``curves.png``, ``reconstructions.png`` (test digits above their
reconstructions) and ``latent.png`` (test-set means coloured by digit; the first two principal
components when the latent has more than two dimensions).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from common import have_matplotlib, parse_config, plot_curves, run_dir, save_json


@dataclasses.dataclass
class Config:
    """MNIST variational autoencoder (MLP encoder/decoder, KL annealing)."""
    latent: int = 2
    hidden: int = 256
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    kl_warmup_steps: int = 2000     # beta = min(1, step / kl_warmup_steps)
    val_split: float = 0.1
    train_limit: int = 0            # use only the first N training images (0: all)
    seed: int = 0
    out: str = "runs"               # run directory root ("" to save nothing)
    progress: bool = True


def vae(latent: int, hidden: int) -> jnn.Layer:
    """``[N, 28, 28, 1]`` -> ``{"logits": [N, 28, 28, 1], "mu": [N, latent], "logvar": [N, latent]}``.

    In training ``z = mu + exp(logvar / 2) * noise`` (the reparameterization, noise from the
    step's key); in evaluation ``z = mu``.
    """
    encoder = jnn.serial(jnn.flatten(), jnn.dense(hidden), jnn.relu(), jnn.dense(2 * latent))
    decoder = jnn.serial(jnn.dense(hidden), jnn.relu(), jnn.dense(28 * 28), jnn.reshape((28, 28, 1)))

    def init(key, x):
        enc_key, dec_key = jax.random.split(key)
        enc, _ = encoder.init(enc_key, x)
        dec, _ = decoder.init(dec_key, jax.ShapeDtypeStruct((x.shape[0], latent), x.dtype))
        return {"encoder": enc, "decoder": dec}, {}

    def apply(params, state, x, *, key=None, train=False):
        stats, _ = encoder.apply(params["encoder"], {}, x)
        mu, logvar = jnp.split(stats, 2, axis=-1)
        if train:
            if key is None:
                raise ValueError("vae: training samples z and needs a key: apply(..., key=key, train=True)")
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        else:
            z = mu
        logits, _ = decoder.apply(params["decoder"], {}, z)
        return {"logits": logits, "mu": mu, "logvar": logvar}, state

    return jnn.Layer(init, apply, "vae")


def make_loss(kl_warmup_steps: int):
    """``loss(outputs, images, step) -> (recon + beta * kl, {"recon", "kl", "beta"})``."""
    def loss(out, images, step):
        recon = jnn.losses.binary_cross_entropy_with_logits(out["logits"], images, reduction="none")
        recon = jnp.mean(jnp.sum(recon, axis=(1, 2, 3)))
        kl = jnp.mean(-0.5 * jnp.sum(1 + out["logvar"] - out["mu"] ** 2 - jnp.exp(out["logvar"]), axis=-1))
        beta = jnp.minimum(1.0, step / max(kl_warmup_steps, 1))
        return recon + beta * kl, {"recon": recon, "kl": kl, "beta": beta}
    return loss


def mean_image_recon(train_images, test_images) -> float:
    """Reconstruction loss (nats/image) of the input-independent guess "the mean training image"."""
    p = np.clip(train_images.mean(0), 1e-6, 1 - 1e-6)
    return float(-(test_images * np.log(p) + (1 - test_images) * np.log1p(-p)).sum((1, 2, 3)).mean())


def save_reconstructions(path, images, reconstructions) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(n, 2.2))
    for i in range(n):
        for row, img in enumerate((images[i], reconstructions[i])):
            axes[row, i].imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    fig.suptitle("test digits (top) and their reconstructions (bottom)", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_latent(path, mu, labels) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    projected = mu.shape[1] > 2
    if projected:  # first two principal components
        centered = mu - mu.mean(0)
        mu = centered @ np.linalg.svd(centered, full_matrices=False)[2][:2].T
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=2, alpha=0.7)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_title("test-set latent means" + (" (first 2 principal components)" if projected else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(config: Config) -> dict:
    x, _ = jnn.data.load_mnist("train")
    x_test, y_test = jnn.data.load_mnist("test")
    if config.train_limit:
        x = x[: config.train_limit]
    net, loss = vae(config.latent, config.hidden), make_loss(config.kl_warmup_steps)
    out = run_dir(config.out, f"vae-latent{config.latent}")
    key = jax.random.key(config.seed)
    evaluate = jax.jit(jnn.train.make_eval_fn(net, loss, batch_size=1000))
    params0, state0 = net.init(jax.random.fold_in(key, 1), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    initial = {k: float(v) for k, v in evaluate(params0, state0, (x_test, x_test), 0).items()}

    start = time.perf_counter()
    result = jnn.train.fit(net, loss, optax.adam(config.learning_rate), (x, x), key=key, epochs=config.epochs,
                           batch_size=config.batch_size, val_split=config.val_split, verbose=1 if config.progress else 2,
                           callbacks=[jnn.train.callbacks.HistoryFile(out / "history.csv")] if out else [])
    train_seconds = time.perf_counter() - start
    ts = result.train_state
    test = {k: float(v) for k, v in evaluate(ts.params, ts.state, (x_test, x_test), ts.step).items()}
    baseline = mean_image_recon(np.asarray(x), np.asarray(x_test))
    print(f"test recon {test['recon']:.1f}  kl {test['kl']:.2f}  -elbo {test['recon'] + test['kl']:.1f} nats "
          f"(untrained recon {initial['recon']:.1f}; mean-image guess {baseline:.1f}; "
          f"{config.epochs} epochs in {train_seconds:.1f} s)")
    summary = {"test_recon": test["recon"], "test_kl": test["kl"], "test_neg_elbo": test["recon"] + test["kl"],
               "initial_test_recon": initial["recon"], "mean_image_recon": baseline,
               "train_seconds": train_seconds, "config": dataclasses.asdict(config)}
    if out:
        save_json(out / "result.json", summary)
        if have_matplotlib():
            plot_curves({"vae": result.history}, out / "curves.png", keys=("loss", "recon", "kl"))
            outputs = jnn.train.predict(net, ts.params, ts.state, x_test)
            save_reconstructions(out / "reconstructions.png", np.asarray(x_test[:10]),
                                 np.asarray(jax.nn.sigmoid(outputs["logits"][:10])))
            save_latent(out / "latent.png", np.asarray(outputs["mu"]), np.asarray(y_test))
        print(f"saved to {out}")
    return {**summary, "history": result.history}


if __name__ == "__main__":
    main(parse_config(Config))
