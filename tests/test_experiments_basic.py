"""The training issue's experiments: XOR, the perceptron and the MNIST digit recognizer."""
import json

import pytest

import jnn
from experiments_path import load

xor, perceptron, mnist_mlp = load("xor"), load("perceptron"), load("mnist_mlp")


def test_xor_fits_all_four_points(capsys):
    result = xor.main(xor.Config(epochs=500, print_every=250))  # loss 8.8e-5 at epoch 500
    assert result["accuracy"] == 1.0 and result["final_loss"] < 0.01
    assert "epoch   500  mse" in capsys.readouterr().out


def test_perceptron_learns_and_or_but_not_xor(capsys):
    results = perceptron.main(perceptron.Config())
    assert results["AND"] == 1.0 and results["OR"] == 1.0 and results["XOR"] < 1.0
    assert "not linearly separable" in capsys.readouterr().out


def test_mnist_mlp_default_config_reaches_95_5_percent_on_real_mnist(tmp_path, capsys):
    """The README's main job with its default settings: 18k train / 2k val / official 10k test."""
    result = mnist_mlp.main(mnist_mlp.Config(out=str(tmp_path), progress=False))
    assert result["dataset"] == "mnist"
    assert result["test_accuracy"] >= 0.955
    run = tmp_path / "mnist_mlp-mnist"
    assert json.loads((run / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    assert (run / "history.csv").read_text().count("\n") == 6
    assert (run / "curves.png").stat().st_size > 10_000
    # a second run goes to a new directory; nothing saved is overwritten
    mnist_mlp.main(mnist_mlp.Config(out=str(tmp_path), progress=False, epochs=1, train_limit=2000))
    assert (tmp_path / "mnist_mlp-mnist-2" / "result.json").exists()
    assert "test accuracy:" in capsys.readouterr().out


@pytest.fixture
def no_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("JNN_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(jnn.data.mnist, "MNIST_MIRRORS", ())


def test_mnist_mlp_falls_back_to_digits_with_a_notice(no_mnist, capsys):
    result = mnist_mlp.main(mnist_mlp.Config(out="", epochs=3, progress=False, batch_size=64))
    out = capsys.readouterr().out
    assert "notice: MNIST is not in" in out and "falling back to scikit-learn's 8x8 digits" in out
    assert result["dataset"] == "digits" and result["test_accuracy"] > 0.85


def test_mnist_mlp_insisting_on_mnist_fails_clearly(no_mnist):
    with pytest.raises(jnn.data.DatasetUnavailableError, match="t10k-images-idx3-ubyte.gz|train-images-idx3-ubyte.gz"):
        mnist_mlp.main(mnist_mlp.Config(dataset="mnist", out="", progress=False))
