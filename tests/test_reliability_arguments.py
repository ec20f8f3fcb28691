"""Reliability, category 3: fit's arguments are checked before the first step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train

X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)


EPOCHS_RUN = []


def _fit(data=(X, Y), **kwargs):
    model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(2))
    kwargs = {"epochs": 2, "batch_size": 8, "verbose": 0, **kwargs}
    callbacks = [*kwargs.pop("callbacks", []), lambda epoch, ts, logs: EPOCHS_RUN.append(epoch)]
    return train.fit(model, jnn.losses.softmax_cross_entropy, optax.sgd(0.1), data, key=jax.random.key(0),
                     callbacks=callbacks, **kwargs)


@pytest.fixture(autouse=True)
def _no_epoch_before_the_error():
    EPOCHS_RUN.clear()
    yield


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": -4}, r"fit: batch_size must be a positive integer, got -4"),
    ({"batch_size": 8.0}, r"fit: batch_size must be a positive integer, got 8.0"),
    ({"batch_size": True}, r"fit: batch_size must be a positive integer, got True"),
    ({"eval_batch_size": 0}, r"fit: eval_batch_size must be a positive integer, got 0"),
    ({"val_split": 0.01}, r"fit: val_split=0.01 of 40 examples leaves no examples for validation; use a val_split between 0.025"),
    ({"val_split": 1.5}, r"fit: val_split must be a fraction in \(0, 1\), got 1.5"),
    ({"early_stopping": train.EarlyStopping(monitor="val_loss")},
     r"fit: early_stopping monitors 'val_loss', which is not among the logged metrics \['accuracy', 'loss', 'time'\]"),
])
def test_bad_arguments_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fit(**kwargs)
    assert EPOCHS_RUN == []  # nothing trained before the error


def test_a_bad_nonfinite_policy_fails_when_built():
    with pytest.raises(ValueError, match=r"NonFinite: action must be one of 'raise', 'stop', got 'ignore'"):
        _fit(callbacks=[train.NonFinite("ignore")])
    assert EPOCHS_RUN == []


def test_empty_training_set():
    with pytest.raises(ValueError, match=r"fit: train_data is empty \(0 examples\)"):
        _fit(data=(X[:0], Y[:0]))


def test_validation_data_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"fit: val_data x has examples of shape \(5,\) but train_data x has \(4,\)"):
        _fit(val_data=(np.zeros((10, 5), np.float32), Y[:10]))
    with pytest.raises(ValueError, match=r"fit: val_data y has examples of shape \(2,\) but train_data y has \(\)"):
        _fit(val_data=(X[:10], np.zeros((10, 2), np.int32)))


def test_history_path_whose_parent_is_a_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"HistoryFile: .*runs/h.csv cannot be written: .*runs is a file"):
        _fit(callbacks=[train.callbacks.HistoryFile(blocker / "h.csv")])


def test_regression_runs_log_no_accuracy_by_default():
    x = X
    y = x @ np.ones((4, 1), np.float32)
    result = train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.05), (x, y), key=jax.random.key(0), epochs=2,
                       batch_size=8, verbose=0)
    assert "accuracy" not in result.history and result.history["loss"][-1] < result.history["loss"][0]
    result = _fit()
    assert "accuracy" in result.history  # classification losses keep accuracy


def test_monitored_metric_that_is_logged_is_accepted():
    result = train.fit(jnn.dense(2), jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (X, Y), key=jax.random.key(0),
                       epochs=2, batch_size=8, val_split=0.25, verbose=0,
                       early_stopping=train.EarlyStopping(monitor="val_accuracy", patience=5))
    assert len(result.history["val_accuracy"]) == 2
