"""Tiny-config smoke test of experiments/vae.py on real MNIST: it learns, logs, and saves its PNGs."""
import json

import numpy as np
import pytest

from experiments_path import load

vae = load("vae")


def test_vae_tiny_config_learns_on_real_mnist(tmp_path):
    pytest.importorskip("matplotlib")
    config = vae.Config(latent=16, hidden=128, epochs=3, batch_size=64, train_limit=3000, kl_warmup_steps=60,
                        out=str(tmp_path), progress=False)
    result = vae.main(config)
    h = result["history"]
    # learned: far below an untrained decoder, and below the input-independent mean-image guess
    assert result["test_recon"] < 0.5 * result["initial_test_recon"]
    assert result["test_recon"] < result["mean_image_recon"] - 20
    assert 1.0 < result["test_kl"] < 100.0  # the encoder uses its latent, but stays near the prior
    # the loss's own logs reach the history; beta follows the schedule min(1, step / 60)
    steps = np.arange(1, 4) * (2700 // 64)
    np.testing.assert_allclose(h["val_beta"], np.minimum(1.0, steps / 60), rtol=1e-6)
    np.testing.assert_allclose(np.array(h["loss"]), np.array(h["recon"]) + np.array(h["beta"]) * np.array(h["kl"]),
                               rtol=0.02)  # per-epoch means of a product: close, not equal
    run = tmp_path / "vae-latent16"
    assert json.loads((run / "result.json").read_text())["test_recon"] == result["test_recon"]
    for png in ("reconstructions.png", "latent.png", "curves.png"):
        assert (run / png).stat().st_size > 5_000
