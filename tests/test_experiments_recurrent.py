"""The recurrent experiments on tiny configs: sequential MNIST and the char-level LSTM.

The full default runs (>= 97% test accuracy; < 1.8 validation nats/char) take minutes and are
run by hand (see the experiments' docstrings); these check that the scripts learn something real
in a few steps, save what they say they save, and that the sampler agrees with the model.
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from experiments_path import load

sequential_mnist, char_rnn = load("sequential_mnist"), load("char_rnn")


def test_sequential_mnist_tiny_config_learns_and_saves(tmp_path, capsys):
    config = sequential_mnist.Config(hidden=16, epochs=2, train_limit=2000, batch_size=50, learning_rate=1e-2,
                                     out=str(tmp_path), progress=False)
    result = sequential_mnist.main(config)
    history = result["history"]
    assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"] + [result["test_loss"]])
    assert history["loss"][1] < history["loss"][0] < math.log(10) + 0.1
    assert result["test_accuracy"] > 0.3  # chance is 0.1
    run = tmp_path / "sequential_mnist"
    assert json.loads((run / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    assert (run / "history.csv").read_text().count("\n") == 3
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "lstm_0" in out


def test_sequential_mnist_rejects_bad_options():
    with pytest.raises(ValueError, match="--schedule must be constant or cosine, got 'linear'"):
        sequential_mnist.optimizer(sequential_mnist.Config(schedule="linear"), 10)
    with pytest.raises(ValueError, match="--clip-norm must be >= 0, got -1"):
        sequential_mnist.optimizer(sequential_mnist.Config(clip_norm=-1.0), 10)


@pytest.mark.parametrize("build", [
    lambda: sequential_mnist.optimizer(sequential_mnist.Config(clip_norm=0.5, schedule="constant",
                                                               learning_rate=0.1), 10),
    lambda: char_rnn.optimizer(char_rnn.Config(clip_norm=0.5, warmup_steps=0, learning_rate=0.1,
                                               epochs=1000, steps_per_epoch=1000)),
], ids=["sequential_mnist", "char_rnn"])
def test_optimizer_is_adam_on_gradients_clipped_by_global_norm(build):
    """Two steps against Adam fed by hand-clipped gradients (step 1 alone cannot tell: Adam's
    first update is scale-free); unclipped Adam differs."""
    opt = build()
    grads = [{"a": jnp.array([30.0, -40.0]), "b": {"w": jnp.zeros((1,))}},      # global norm 50
             {"a": jnp.array([0.3, 0.1]), "b": {"w": jnp.array([0.2])}}]        # norm 0.37 < 0.5
    norm = lambda g: jnp.sqrt(sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(g)))
    clip = lambda g: jax.tree_util.tree_map(lambda a: a * jnp.minimum(1.0, 0.5 / norm(g)), g)

    def updates(opt, gs):
        state = opt.init(gs[0])
        for g in gs:
            u, state = opt.update(g, state)
        return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(u)])

    # char_rnn's cosine schedule is ~0.1 for 2 of 10^6 steps
    reference = updates(optax.adam(0.1), [clip(g) for g in grads])
    np.testing.assert_allclose(updates(opt, grads), reference, rtol=1e-4)
    assert not np.allclose(updates(optax.adam(0.1), grads), reference, rtol=1e-2)


def test_char_rnn_tiny_config_learns_and_samples(tmp_path, capsys):
    config = char_rnn.Config(hidden=32, embed=16, seq_len=32, batch_size=32, epochs=2, steps_per_epoch=40,
                             warmup_steps=5, learning_rate=1e-2, sample_length=120, out=str(tmp_path))
    result = char_rnn.main(config)
    history = result["history"]
    vocab = jnn.data.CharVocab(jnn.data.load_tiny_shakespeare())
    assert result["vocab"] == vocab.chars and vocab.size == 65
    assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"])
    # uniform guessing costs ln(65) = 4.17 nats; the unigram frequencies alone give about 3.3
    assert history["val_loss"][1] < history["val_loss"][0] and result["val_loss"] < 3.0
    assert len(result["sample"]) == config.sample_length == len(result["sample_ids"])
    assert set(result["sample"]) <= set(vocab.chars)
    assert vocab.decode(result["sample_ids"]) == result["sample"]
    run = tmp_path / "char_rnn"
    assert (run / "sample.txt").read_text() == config.prompt + result["sample"] + "\n"
    assert json.loads((run / "result.json").read_text())["val_loss"] == result["val_loss"]
    out = capsys.readouterr().out
    assert "nats/char" in out and "budget: 80 steps" in out and config.prompt + result["sample"] in out


def test_char_rnn_greedy_sampler_matches_the_full_model():
    """The jitted step-by-step sampler carries the LSTM states (two stacked layers) exactly as the
    scanned layers do: each greedy character is the arg-max of the full model's logits at the
    previous position."""
    config = char_rnn.Config(hidden=8, embed=4, layers=2, sample_length=12)
    lm = char_rnn.model(7, config)
    params, state = lm.net.init(jax.random.key(3), jax.ShapeDtypeStruct((1, 5), jnp.int32))
    prompt = jnp.array([1, 4, 2, 6, 0], jnp.int32)
    sampler = char_rnn.make_sampler(lm, config.sample_length)
    greedy = sampler(params, prompt, jax.random.key(0), jnp.float32(0.0))
    assert greedy.shape == (12,) and greedy.dtype == jnp.int32
    logits = lm.net.apply(params, state, jnp.concatenate([prompt, greedy])[None])[0][0]
    np.testing.assert_array_equal(greedy, jnp.argmax(logits[len(prompt) - 1:-1], axis=-1))
    # sampling with a temperature draws from the vocabulary, and a new temperature does not recompile
    hot = sampler(params, prompt, jax.random.key(0), jnp.float32(2.0))
    assert hot.shape == (12,) and bool(((hot >= 0) & (hot < 7)).all())
    assert sampler._cache_size() == 1


def test_char_rnn_rejects_bad_options():
    with pytest.raises(ValueError, match="--temperature must be >= 0"):
        char_rnn.main(char_rnn.Config(temperature=-1.0, out=""))
    with pytest.raises(ValueError, match=r"characters not in the vocabulary: \['~'\]"):
        char_rnn.main(char_rnn.Config(prompt="~", out=""))
    with pytest.raises(ValueError, match="--val-fraction must be in"):
        char_rnn.split_text("abc", 1.5)
