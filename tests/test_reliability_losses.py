"""Reliability, category 4: losses and metrics reject impossible values (eagerly; unchecked under jit)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import losses, metrics, train

LOGITS = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])


def test_accuracy_with_out_of_range_labels():
    with pytest.raises(ValueError, match=r"accuracy: integer labels \(class ids for 3 classes\) must lie in \[0, 3\), got 3"):
        metrics.accuracy(LOGITS, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"top_k_accuracy: .* must lie in \[0, 3\), got -1"):
        metrics.top_k_accuracy(LOGITS, jnp.array([-1, 1]), k=2)
    assert float(metrics.accuracy(LOGITS, jnp.array([0, 2]))) == 0.5  # valid labels: correct value
    # under jit values are not checked: an impossible id simply never matches
    assert float(jax.jit(metrics.accuracy)(LOGITS, jnp.array([0, 3]))) == 0.5


def test_integer_one_hot_labels_get_a_consistent_message():
    one_hot = jnp.array([[1, 0, 0], [0, 1, 0]])
    for fn, where in ((metrics.accuracy, "accuracy"), (losses.softmax_cross_entropy, "softmax_cross_entropy")):
        with pytest.raises(ValueError, match=rf"{where}: integer labels of shape \(2, 3\) look one-hot; pass class "
                                             rf"ids of shape \(2,\) \(labels.argmax\(-1\)\) or float one-hot"):
            fn(LOGITS, one_hot)
    np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, one_hot.astype(jnp.float32)),
                               losses.softmax_cross_entropy(LOGITS, jnp.array([0, 1])), rtol=1e-6)


def test_binary_cross_entropy_rejects_values_outside_the_unit_interval():
    p, y = jnp.array([0.2, 0.9]), jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match=r"binary_cross_entropy: probabilities must lie in \[0, 1\], got 3.5; "
                                         r"for logits use binary_cross_entropy_with_logits"):
        losses.binary_cross_entropy(jnp.array([0.2, 3.5]), y)
    with pytest.raises(ValueError, match=r"binary_cross_entropy: labels must lie in \[0, 1\], got 2"):
        losses.binary_cross_entropy(p, jnp.array([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: labels must lie in \[0, 1\], got -1"):
        losses.binary_cross_entropy_with_logits(p, jnp.array([-1.0, 1.0]))
    expected = -np.mean([np.log(0.8), np.log(0.9)])
    np.testing.assert_allclose(losses.binary_cross_entropy(p, y), expected, rtol=1e-6)


def test_fit_checks_labels_and_features_before_training():
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    model = jnn.serial(jnn.dense(3))
    run = lambda x, y: train.fit(model, losses.softmax_cross_entropy, optax.sgd(0.1), (x, y), key=jax.random.key(0),
                                 epochs=1, batch_size=8, verbose=0)
    y = np.arange(32) % 3
    with pytest.raises(ValueError, match=r"fit: train_data y does not suit the loss: softmax_cross_entropy: integer "
                                         r"labels \(class ids for 3 classes\) must lie in \[0, 3\), got 5"):
        run(x, np.where(np.arange(32) == 7, 5, y))
    bad = x.copy()
    bad[11, 2] = np.nan
    with pytest.raises(ValueError, match=r"fit: train_data x has non-finite values \(NaN or Inf\) in 1 example\(s\), first at index 11"):
        run(bad, y)
    assert run(x, y).history["loss"][0] > 0


def test_regression_default_metrics_have_no_accuracy():
    assert set(train.guard.default_metrics(losses.mse)) == set()
    assert set(train.guard.default_metrics(losses.softmax_cross_entropy)) == {"accuracy"}


@pytest.mark.parametrize("loss, names", [(losses.mse, ("predictions", "targets")), (losses.mae, ("predictions", "targets")),
                                         (losses.binary_cross_entropy, ("probabilities", "labels")),
                                         (losses.binary_cross_entropy_with_logits, ("logits", "labels")),
                                         (losses.softmax_cross_entropy, ("logits", "labels"))])
@pytest.mark.parametrize("bad", [None, "0.5"])
def test_a_non_array_argument_is_named_by_the_loss(loss, names, bad):
    """None or a string for either argument: a TypeError that names the loss and the argument."""
    good = jnp.zeros((2, 3))
    for at, name in enumerate(names):
        args = [good, good]
        args[at] = bad
        with pytest.raises(TypeError, match=rf"^{loss.__name__}: {name} must be an array, got {type(bad).__name__}$"):
            loss(*args)


@pytest.mark.parametrize("bad", [None, "0.5"])
def test_metrics_and_translate_name_a_non_array_argument(bad):
    for metric in (metrics.accuracy, metrics.top_k_accuracy):
        with pytest.raises(TypeError, match=rf"^{metric.__name__}: labels must be an array, got {type(bad).__name__}$"):
            metric(jnp.zeros((2, 3)), bad)
    with pytest.raises(ValueError, match=rf"^translate: shift must be a pair \(dy, dx\), got {bad!r}$"):
        jnn.data.augment.translate(jnp.zeros((2, 2, 1)), bad)
