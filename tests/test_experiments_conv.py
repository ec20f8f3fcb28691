"""Tiny-config smoke tests of the convolutional experiments (the real runs are recorded in
benchmarks/RESULTS.md)."""
import jax
import numpy as np
import pytest

from experiments_path import load


def test_mnist_cnn_smoke(tmp_path, capsys):
    mnist_cnn = load("mnist_cnn")
    results = mnist_cnn.main(mnist_cnn.Config(variants=("plain", "augmented"), epochs=3, train_limit=640,
                                              features=(4, 8), dense=16, dropout=0.1, batch_size=64,
                                              out=str(tmp_path), progress=False))
    assert set(results) == {"plain", "augmented"}
    assert all(0.2 < r["test_accuracy"] <= 1.0 for r in results.values())  # chance is 0.1
    run = tmp_path / "mnist_cnn"
    assert (run / "misclassified_plain.png").exists() and (run / "curves.png").exists()
    assert "augmentation changes test accuracy by" in capsys.readouterr().out
    with pytest.raises(ValueError, match="mnist_cnn: --variants takes plain and/or augmented, got"):
        mnist_cnn.main(mnist_cnn.Config(variants=("plain", "rotated"), out=""))


def test_transfer_learning_smoke(capsys):
    transfer = load("transfer_learning")
    result = transfer.main(transfer.Config(per_class=10, pretrain_limit=1000, pretrain_epochs=1,
                                           finetune_epochs=2, features=(4, 8), out=""))
    # Checked here from the params themselves, not from the experiment's own flag: the frozen base
    # is bit-identical to where fine-tuning started, and full fine-tuning did move it.
    leaves = {k: jax.tree_util.tree_leaves(v) for k, v in result["base_params"].items()}
    assert all(np.array_equal(a, b) for a, b in zip(leaves["start"], leaves["frozen"]))
    assert any(not np.array_equal(a, b) for a, b in zip(leaves["start"], leaves["full"]))
    assert result["frozen_base_unchanged"] is True
    assert set(result["test_accuracy"]) == {"frozen base + new head", "full fine-tuning", "from scratch"}
    assert "frozen base bit-identical after fine-tuning: True" in capsys.readouterr().out
