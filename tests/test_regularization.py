"""Regularization through fit: weight-decay masks, penalties, batch-norm state, the overfitting experiment."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn
from experiments_path import load


def _params():
    model = jnn.serial(jnn.dense(3), jnn.layer_norm(), jnn.relu(), jnn.dense(2))
    return model.init(jax.random.key(0), jnp.zeros((1, 4)))[0]


def test_weight_decay_mask_selects_weights_not_biases_or_norm_scales():
    params = _params()
    mask = jnn.tree.mask(params)
    assert [p for p, selected in jnn.tree.leaves_with_paths(mask) if selected] == ["dense_0/w", "dense_1/w"]
    opt = optax.adamw(0.1, weight_decay=0.5, mask=jnn.tree.mask)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)
    # with zero gradients only decoupled weight decay moves anything: -lr * wd * w on masked leaves
    np.testing.assert_allclose(updates["dense_0"]["w"], -0.1 * 0.5 * params["dense_0"]["w"], rtol=1e-6)
    for path, leaf in jnn.tree.leaves_with_paths(updates):
        if not path.endswith("/w"):
            np.testing.assert_array_equal(leaf, 0.0)


def test_batch_norm_state_round_trips_through_fit():
    x, y = jnn.data.load_digits()
    model = jnn.serial(jnn.flatten(), jnn.dense(32), jnn.batch_norm(momentum=0.9), jnn.relu(), jnn.dense(10))
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(1e-2), (x, y),
                           key=jax.random.key(0), epochs=5, batch_size=64, val_split=0.2,
                           verbose=0)
    state, params = result.train_state.state, result.train_state.params
    running_mean = state["batch_norm_0"]["mean"]
    # the running mean tracks the pre-norm activations of the training data
    h = np.asarray(x.reshape(len(x), -1) @ params["dense_0"]["w"] + params["dense_0"]["b"])
    np.testing.assert_allclose(running_mean, h.mean(0), atol=0.15 * np.abs(h.mean(0)).max())
    assert result.history["val_accuracy"][-1] > 0.9


def test_overfitting_experiment_smoke(tmp_path, capsys):
    overfitting = load("overfitting")
    rows = overfitting.main(overfitting.Config(train_size=200, val_size=200, hidden=32, epochs=3,
                                               batch_size=50, out=str(tmp_path)))
    assert list(rows) == ["plain", "dropout", "l2", "early stopping", "all three"]
    # 3 epochs on 200 images (measured: plain 0.435, dropout 0.173); chance is 0.1
    assert all(r["test_acc"] > 0.14 for r in rows.values()) and rows["plain"]["test_acc"] > 0.3
    assert (tmp_path / "overfitting" / "curves.png").exists()
    assert "loss gap" in capsys.readouterr().out
