"""Losses, penalties and metrics against NumPy references; stability at extreme inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn import losses, metrics

rng = np.random.default_rng(0)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_mse_and_mae_match_numpy():
    p, t = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(losses.mse(p, t), np.mean((p - t) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.mae(p, t), np.mean(np.abs(p - t)), rtol=1e-6)
    np.testing.assert_allclose(losses.mse(p, t, reduction="none"), (p - t) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"mse: predictions and targets must have the same shape, got \(5, 3\) and \(5,\)"):
        losses.mse(p, t[:, 0])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        losses.mae(p, t, reduction="sum")


def test_binary_cross_entropy_matches_numpy():
    z = rng.normal(size=(6, 1)).astype(np.float32) * 3
    y = (rng.random((6, 1)) > 0.5).astype(np.float32)
    prob = 1 / (1 + np.exp(-z))
    ref = np.mean(-(y * np.log(prob) + (1 - y) * np.log(1 - prob)))
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(z, y), ref, rtol=1e-5)
    np.testing.assert_allclose(losses.binary_cross_entropy(prob, y), ref, rtol=1e-5)


def test_softmax_cross_entropy_integer_onehot_and_smoothing_match_numpy():
    z = rng.normal(size=(7, 4)).astype(np.float32)
    y = rng.integers(0, 4, 7).astype(np.int32)
    onehot = np.eye(4, dtype=np.float32)[y]
    ref = -np.mean(np.sum(onehot * _log_softmax(z), -1))
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, y), ref, rtol=1e-5)
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, onehot), ref, rtol=1e-5)
    smooth = onehot * 0.9 + 0.1 / 4
    ref_smooth = -np.mean(np.sum(smooth * _log_softmax(z), -1))
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, y, label_smoothing=0.1), ref_smooth, rtol=1e-5)
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, onehot, label_smoothing=0.1), ref_smooth, rtol=1e-5)


def test_cross_entropy_label_errors():
    z = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"integer labels \(class ids for 4 classes\) must lie in \[0, 4\), got 4"):
        losses.softmax_cross_entropy(z, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(3,\) for logits of shape \(3, 4\), got \(3, 1\)"):
        losses.softmax_cross_entropy(z, jnp.zeros((3, 1), jnp.int32))


@pytest.mark.parametrize("loss, inputs, labels", [
    (losses.softmax_cross_entropy, jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]), jnp.array([1, 0])),
    (losses.binary_cross_entropy_with_logits, jnp.array([1e4, -1e4, 1e4]), jnp.array([0.0, 1.0, 1.0])),
    (losses.binary_cross_entropy, jnp.array([0.0, 1.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 1.0, 0.0])),
])
def test_losses_finite_values_and_gradients_at_extremes(loss, inputs, labels):
    value, grad = jax.value_and_grad(loss)(inputs, labels)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value > 1.0  # the confidently wrong entries are penalized, not clipped to zero


def test_penalties_sum_over_selected_leaves_only():
    params = {"dense_0": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])},
              "norm": {"scale": jnp.array([3.0])},
              "head": {"w": jnp.array([[-0.5]])}}
    assert float(losses.l1_penalty(params)) == 1 + 2 + 0.5
    assert float(losses.l2_penalty(params)) == 1 + 4 + 0.25
    assert float(losses.l2_penalty(params, exclude=("head/*",))) == 5
    assert float(losses.l1_penalty(params, include=("w", "b"))) == 8.5
    grads = jax.grad(lambda p: losses.l2_penalty(p))(params)
    np.testing.assert_array_equal(grads["dense_0"]["b"], [0.0])
    np.testing.assert_array_equal(grads["dense_0"]["w"], [[2.0, -4.0]])


def test_accuracy_and_top_k_match_numpy():
    z = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 6, 50).astype(np.int32)
    np.testing.assert_allclose(metrics.accuracy(z, y), np.mean(z.argmax(-1) == y))
    np.testing.assert_allclose(metrics.accuracy(z, np.eye(6, dtype=np.float32)[y]), np.mean(z.argmax(-1) == y))
    top3 = np.argsort(-z, -1)[:, :3]
    np.testing.assert_allclose(metrics.top_k_accuracy(z, y, k=3), np.mean((top3 == y[:, None]).any(-1)))
    assert float(metrics.top_k_accuracy(z, y, k=6)) == 1.0
    with pytest.raises(ValueError, match=r"top_k_accuracy: k must be an integer in \[1, 6\], got 7"):
        metrics.top_k_accuracy(z, y, k=7)
    with pytest.raises(ValueError, match=r"accuracy: integer labels must have shape \(50,\)"):
        metrics.accuracy(z, y[:10])


@pytest.mark.parametrize("name, fan_scale, dist", [
    ("glorot_uniform", 2 / (200 + 100), "uniform"), ("he_normal", 2 / 200, "normal"),
    ("he_uniform", 2 / 200, "uniform"), ("lecun_normal", 1 / 200, "normal"),
    ("lecun_uniform", 1 / 200, "uniform"), ("xavier_normal", 2 / 300, "normal"),
])
def test_initializer_variances(name, fan_scale, dist):
    w = np.asarray(jnn.initializers.get(name)(jax.random.key(0), (200, 100)))
    np.testing.assert_allclose(w.var(), fan_scale, rtol=0.05)
    if dist == "uniform":
        assert np.abs(w).max() <= np.sqrt(3 * fan_scale) + 1e-6


def test_initializer_selection_per_layer_and_errors():
    params, _ = jnn.dense(3, w_init=jnn.initializers.constant(0.5), b_init="ones").init(
        jax.random.key(0), jnp.zeros((1, 2)))
    np.testing.assert_array_equal(params["w"], np.full((2, 3), 0.5))
    np.testing.assert_array_equal(params["b"], np.ones(3))
    std = np.asarray(jnn.initializers.normal(0.1)(jax.random.key(0), (500, 500))).std()
    np.testing.assert_allclose(std, 0.1, rtol=0.02)
    with pytest.raises(ValueError, match="dense w_init: unknown initializer 'he'; expected one of"):
        jnn.dense(3, w_init="he")
    with pytest.raises(TypeError, match=r"got the factory he_normal; call it: he_normal\(\)"):
        jnn.dense(3, w_init=jnn.initializers.he_normal)


_Z2, _Z3 = jnp.zeros(2), jnp.zeros(3)
_HINT = "; binary labels are 0/1"


@pytest.mark.parametrize("call, message", [
    (lambda: losses.mse(_Z2, _Z3), r"^mse: predictions and targets must have the same shape, got \(2,\) and \(3,\)$"),
    (lambda: losses.mae(_Z2, _Z3), r"^mae: predictions and targets must have the same shape"),
    (lambda: losses.binary_cross_entropy_with_logits(_Z2, _Z3),
     r"^binary_cross_entropy_with_logits: logits and labels must have the same shape"),
    (lambda: losses.binary_cross_entropy(_Z2, _Z3),
     r"^binary_cross_entropy: probabilities and labels must have the same shape"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4))),
     r"^softmax_cross_entropy: logits and one-hot labels must have the same shape"),
    (lambda: losses.mse(_Z2, _Z2, reduction="sum"), r"^mse: reduction must be 'mean' or 'none', got 'sum'$"),
    (lambda: losses.mae(_Z2, _Z2, reduction="sum"), r"^mae: reduction must be"),
    (lambda: losses.binary_cross_entropy_with_logits(_Z2, _Z2, reduction="sum"),
     r"^binary_cross_entropy_with_logits: reduction must be"),
    (lambda: losses.binary_cross_entropy(_Z2, _Z2, reduction="sum"), r"^binary_cross_entropy: reduction must be"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), reduction="sum"),
     r"^softmax_cross_entropy: reduction must be"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3)), reduction="sum"),
     r"^softmax_cross_entropy: reduction must be"),
    (lambda: losses.binary_cross_entropy_with_logits(_Z2, jnp.array([0.0, 2.0])),
     rf"^binary_cross_entropy_with_logits: labels must lie in \[0, 1\], got 2{_HINT}"),
    (lambda: losses.binary_cross_entropy(jnp.array([0.5, 1.5]), _Z2),
     r"^binary_cross_entropy: probabilities must lie in \[0, 1\], got 1.5; for logits use "
     r"binary_cross_entropy_with_logits, or end the model with jnn.sigmoid\(\)$"),
    (lambda: losses.binary_cross_entropy(_Z2, jnp.array([-1.0, 0.0])),
     rf"^binary_cross_entropy: labels must lie in \[0, 1\], got -1{_HINT}"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])), r"^softmax_cross_entropy: "),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), label_smoothing=1.0),
     r"^softmax_cross_entropy: label_smoothing must be a number in \[0, 1\), got 1.0$"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), label_smoothing="0.1"),
     r"^softmax_cross_entropy: label_smoothing must be a number in \[0, 1\), got '0.1'$"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0])),
     r"^softmax_cross_entropy: labels of shape \(2,\) are class ids, which must be integers; got float32 "
     r"\(use labels.astype\(int\)\), or pass one-hot labels of shape \(2, 3\)$"),
    (lambda: metrics.accuracy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0])), r"^accuracy: labels of shape \(2,\) are "
     r"class ids, which must be integers"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros(()), jnp.array(0)),
     r"^softmax_cross_entropy: logits must have a class axis last, shape \[..., C\], got shape \(\)$"),
    (lambda: metrics.top_k_accuracy(jnp.zeros((2, 3)), jnp.array([0, 1]), k=True),
     r"^top_k_accuracy: k must be an integer in \[1, 3\], got True$"),
    (lambda: losses.mse(jnp.zeros((0, 1)), jnp.zeros((0, 1))), r"^mse: got an empty batch \(per-example losses of "
     r"shape \(0, 1\)\); a mean over no examples is undefined$"),
    (lambda: losses.softmax_cross_entropy(jnp.zeros((0, 3)), jnp.zeros(0, int)), r"^softmax_cross_entropy: got an "
     r"empty batch"),
    (lambda: metrics.accuracy(jnp.zeros((0, 3)), jnp.zeros(0, int)), r"^accuracy: got an empty batch \(labels of "
     r"shape \(0,\)\); a mean over no examples is undefined$"),
])
def test_each_loss_error_names_the_loss_and_its_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_losses_and_metrics_take_lists_numpy_and_integer_inputs():
    """Array-likes are converted; integer predictions are computed in float32 (the same values)."""
    assert float(losses.mse([1, 2], [1, 4])) == 2.0 and float(losses.mae(np.array([1, 2]), [0, 4])) == 1.5
    assert float(losses.softmax_cross_entropy([[0, 0]], [1])) == pytest.approx(np.log(2))
    assert float(losses.binary_cross_entropy_with_logits([0], [1])) == pytest.approx(np.log(2))
    assert float(metrics.accuracy([[2.0, 1.0], [0.0, 1.0]], [0, 0])) == 0.5
    assert float(metrics.top_k_accuracy(np.array([[2.0, 1.0, 0.0]]), [1], k=2)) == 1.0
    assert losses.mse(jnp.zeros((0, 1)), jnp.zeros((0, 1)), reduction="none").shape == (0, 1)  # no mean: fine


def test_binary_losses_compute_in_the_input_dtype():
    """Labels and targets are cast to the logits' / probabilities' dtype, not to the default float."""
    logits, labels = jnp.array([-2.0, 0.5, 3.0], jnp.bfloat16), jnp.array([0.0, 1.0, 1.0])
    assert losses.binary_cross_entropy_with_logits(logits, labels).dtype == jnp.bfloat16
    assert losses.binary_cross_entropy(jax.nn.sigmoid(logits), labels).dtype == jnp.bfloat16
    logits = jnp.array([[1.0, -1.0, 0.5]], jnp.bfloat16)
    assert losses.softmax_cross_entropy(logits, jnp.array([[0.0, 1.0, 0.0]])).dtype == jnp.bfloat16
    assert losses.softmax_cross_entropy(logits, jnp.array([2]), label_smoothing=0.1).dtype == jnp.bfloat16


def test_penalties_check_the_default_selection_and_honour_exclude():
    params = {"dense": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([5.0])}, "gate": {"wa": jnp.ones((2, 2))}}
    for penalty in (losses.l1_penalty, losses.l2_penalty):
        with pytest.raises(ValueError, match=r"^penalty: the default selection \(leaves named 'w'\) would skip "
                                             r"the weights \['gate/wa'\]"):
            penalty(params)
    assert float(losses.l1_penalty(params, exclude=("gate/wa",))) == 3.0
    assert float(losses.l2_penalty(params, exclude=("gate/wa",))) == 5.0
    none = losses.l2_penalty({"b": jnp.ones(3)})   # nothing selected: a float zero
    assert none.dtype == jnp.float32 and float(none) == 0.0


def test_smoothed_cross_entropy_over_sequences_matches_numpy():
    """Integer labels with smoothing on [B, T, C] logits: one-hot over the last axis."""
    rng = np.random.default_rng(0)
    logits, labels, s = rng.normal(size=(2, 5, 3)).astype(np.float32), rng.integers(0, 3, (2, 5)), 0.2
    targets = (1 - s) * np.eye(3)[labels] + s / 3
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -(targets * log_p).sum(-1)
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=s, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
