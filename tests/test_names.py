"""One name, one meaning (issue 40, category 3): reserved history names, scalar logs, what a
callback's answer means, PBT that never exploits, predict on nothing; each case probed before its fix."""
import pathlib
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.callbacks import Callback
from jnn.train.pbt import PBT, fit_pbt

X, Y = jnn.data.xor()
MEAN = lambda o, t: jnp.mean(o)
DICT_MODEL = jnn.fan_out(jnn.dense(1), jnn.dense(1), merge=lambda o: {"a": o[0], "b": o[1]})


def _fit(model=None, loss=jnn.losses.mse, opt=None, **kw):
    kw = {"key": jax.random.key(0), "epochs": 2, "batch_size": 4, "metrics": {}, "verbose": 0, **kw}
    return jnn.train.fit(model or jnn.dense(1), loss, opt or optax.sgd(0.1), (X, Y), **kw)


def _population(loss=jnn.losses.mse, **kw):
    kw = {"hparams": {"lr": jnp.array([0.1, 0.01])}, "key": jax.random.key(1), "epochs": 3, "batch_size": 4,
          "metrics": {}, **kw}
    return jnn.train.fit_population(lambda hp: jnn.dense(1), loss, lambda hp: optax.sgd(hp["lr"]), (X, Y), **kw)


def _pbt(interval=1, epochs=3, n=4, metrics=None):
    make_opt = lambda hp: optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])
    return fit_pbt(lambda hp: jnn.dense(1), jnn.losses.mse, make_opt, (X, Y), hparams={"lr": jnp.full((n,), 0.1)},
                   key=jax.random.key(0), pbt=PBT(space={"lr": (1e-3, 1.0, "log")}, interval=interval, monitor="loss"),
                   epochs=epochs, batch_size=4, metrics={} if metrics is None else metrics)


def _evaluate(model, loss, metrics=None):
    return jnn.train.make_eval_fn(model, loss, metrics=metrics)(*model.init(jax.random.key(0), X), (X, Y))


def _with_log(name, value=lambda o, t: jnp.mean(o)):
    return lambda o, t: (jnp.mean((o - t) ** 2), {name: value(o, t)})


class _Returns(Callback):
    def __init__(self, epoch_end=None, train_end=None):
        self.epoch_end, self.train_end = epoch_end, train_end

    def on_epoch_end(self, epoch, train_state, logs):
        return self.epoch_end

    def on_population_epoch_end(self, epoch, states, logs, trained):
        return self.epoch_end

    def on_train_end(self, train_state, history):
        return self.train_end


def _capsule(data, **kw):
    path = pathlib.Path(tempfile.mkdtemp()) / "c.jnnx"
    jnn.export.export_capsule(path, jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), data, batch_size=4,
                              platforms=("cpu",), **{"metrics": {}, **kw})


RESERVED = "the history reserves (loss, epoch, time, lr, val_*)"
# case: (run it, error, message). Before the fix, each ran silently (a metric named "loss", "epoch",
# "time", "lr" or "val_loss" replaced the history's own value; a loss log "epoch" replaced the epoch),
# or failed with another library's words (JAX's "Gradient only defined for scalar-output functions",
# a tree_map TypeError, make_train_epoch's "batch_size must be positive, got 0").
REFUSED = {
    "fit metric loss": (lambda: _fit(metrics={"loss": MEAN}), ValueError,
                        f"fit: metrics use the name(s) ['loss'] {RESERVED}"),
    "fit metric epoch": (lambda: _fit(metrics={"epoch": MEAN}), ValueError, "fit: metrics use the name(s) ['epoch']"),
    "fit metric time": (lambda: _fit(metrics={"time": MEAN}), ValueError, "fit: metrics use the name(s) ['time']"),
    "fit metric lr": (lambda: _fit(metrics={"lr": MEAN}), ValueError, "fit: metrics use the name(s) ['lr']"),
    "fit metric val_loss": (lambda: _fit(metrics={"val_loss": MEAN}, val_data=(X, Y)), ValueError,
                            "fit: metrics use the name(s) ['val_loss']"),
    "population metric loss": (lambda: _population(metrics={"loss": MEAN}), ValueError,
                               "fit_population: metrics use the name(s) ['loss']"),
    "pbt metric lr": (lambda: _pbt(metrics={"lr": MEAN}), ValueError, "fit_pbt: metrics use the name(s) ['lr']"),
    "make_train_step metric loss": (lambda: jnn.train.make_train_step(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1),
                                                                      metrics={"loss": MEAN}),
                                    ValueError, "make_train_step: metrics use the name(s) ['loss']"),
    "make_eval_fn metric epoch": (lambda: jnn.train.make_eval_fn(jnn.dense(1), jnn.losses.mse, metrics={"epoch": MEAN}),
                                  ValueError, "make_eval_fn: metrics use the name(s) ['epoch']"),
    "capsule metric loss": (lambda: _capsule((X, Y), metrics={"loss": MEAN}), ValueError,
                            "jnn.export.export_capsule: metrics use the name(s) ['loss']"),
    "fit loss log epoch": (lambda: _fit(loss=_with_log("epoch")), ValueError,
                           "loss: the logs it returns use the reserved name(s) ['epoch']"),
    "fit loss log val_loss": (lambda: _fit(loss=_with_log("val_loss"), val_data=(X, Y)), ValueError,
                              "loss: the logs it returns use the reserved name(s) ['val_loss']"),
    "population loss log lr": (lambda: _population(loss=_with_log("lr")), ValueError,
                               "loss: the logs it returns use the reserved name(s) ['lr']"),
    "fit vector loss log": (lambda: _fit(loss=_with_log("abs", lambda o, t: jnp.abs(o - t)[:, 0])), ValueError,
                            "loss: its log 'abs' must be a scalar (a mean over the batch), got shape (4,)"),
    "fit vector metric": (lambda: _fit(metrics={"m": lambda o, t: jnp.abs(o - t)[:, 0]}), ValueError,
                          "metrics: 'm' must return a scalar (a mean over the batch), got shape (4,)"),
    "eval vector metric": (lambda: _evaluate(jnn.dense(1), jnn.losses.mse, {"m": lambda o, t: o[:, 0]}), ValueError,
                           "metrics: 'm' must return a scalar (a mean over the batch), got shape (1,)"),
    "fit per-example loss, dict model": (lambda: _fit(DICT_MODEL, lambda o, t: ((o["a"] - t) ** 2)[:, 0]), ValueError,
                                         "loss must return a scalar (e.g. the mean over the batch), it returned "
                                         "shape (4,)"),
    "fit loss of shape (1,)": (lambda: _fit(loss=lambda o, t: jnp.mean((o - t) ** 2)[None]), ValueError,
                               "loss must return a scalar (e.g. the mean over the batch), it returned shape (1,)"),
    "eval per-example loss": (lambda: _evaluate(DICT_MODEL, lambda o, t: ((o["a"] - t) ** 2)[:, 0]), ValueError,
                              "loss must return a scalar (e.g. the mean over the batch), it returned shape (1,)"),
    "callback returns a dict": (lambda: _fit(callbacks=[lambda e, ts, logs: {"stop": True}]), TypeError,
                                "fit: callback <lambda> must return None, a bool (True stops), got dict"),
    "callback returns an int": (lambda: _fit(callbacks=[_Returns(1)]), TypeError,
                                "fit: callback _Returns must return None, a bool (True stops), got int"),
    "population callback returns floats": (lambda: _population(callbacks=[_Returns(np.array([0.5, 0.0]))]), TypeError,
                                           "fit_population: callback _Returns must return None, a bool or a bool "
                                           "array [2] (True stops), got float64[2]"),
    "population callback returns a dict": (lambda: _population(callbacks=[_Returns({"a": 1})]), TypeError,
                                           "got dict"),
    "population callback, 3 of 2 members": (lambda: _population(callbacks=[_Returns(np.array([True, False, True]))]),
                                            TypeError, "fit_population: callback _Returns must return None, a "
                                            "bool or a bool array [2] (True stops), got bool[3]"),
    "on_train_end returns a dict": (lambda: _fit(callbacks=[_Returns(train_end={"a": 1})]), TypeError,
                                    "fit: callback _Returns's on_train_end must return None or a train state like the "
                                    "one it was given, got dict"),
    "population on_train_end returns True": (lambda: _population(callbacks=[_Returns(train_end=True)]), TypeError,
                                             "fit_population: callback _Returns's on_train_end must return None or a "
                                             "train state like the one it was given, got bool"),
    "predict batch_size 0": (lambda: jnn.train.predict(jnn.dense(1), *jnn.dense(1).init(jax.random.key(0), X), X,
                                                       batch_size=0), ValueError,
                             "predict: batch_size must be a positive integer, got 0"),
    "capsule mismatched lengths": (lambda: _capsule((X, Y[:3])), ValueError,
                                   "jnn.export.export_capsule: train_data's x and y must have the same number of "
                                   "examples, got shapes (4, 2) and (3, 1)"),
    "capsule empty train_data": (lambda: _capsule((X[:0], Y[:0])), ValueError,
                                 "jnn.export.export_capsule: train_data is empty (0 examples)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_a_message_naming_the_cause(case):
    run, error, message = REFUSED[case]
    with pytest.raises(error, match=re.escape(message)):
        run()


@pytest.mark.parametrize("answer", [np.True_, np.float32(1.0) > 0, jnp.asarray(True), np.array(True), True])
def test_any_true_bool_stops_fit(answer):
    result = _fit(epochs=5, callbacks=[lambda epoch, ts, logs: answer if epoch == 2 else np.False_])
    assert result.history["epoch"] == [1, 2] and result.stopped_early


def test_a_population_callback_may_answer_with_numpy_or_jax_bools():
    assert _population(callbacks=[_Returns(np.True_)]).epochs_trained.tolist() == [1, 1]
    assert _population(callbacks=[_Returns(jnp.array([False, True]))]).epochs_trained.tolist() == [3, 1]


def test_on_train_end_returning_none_keeps_the_state_and_a_state_replaces_it():
    first = _fit(epochs=1).train_state
    kept, replaced = _fit(callbacks=[_Returns(train_end=None)]), _fit(callbacks=[_Returns(train_end=first)])
    assert int(kept.train_state.step) == 2 and replaced.train_state is first


def test_loss_logs_and_metrics_are_the_same_mean_in_training_and_validation():
    """On the same data, one full batch and no update (lr 0), each log is the same mean in both."""
    loss = _with_log("abs_mean", lambda o, t: jnp.mean(jnp.abs(o - t)))
    result = _fit(loss=loss, opt=optax.sgd(0.0), epochs=1, val_data=(X, Y), metrics={"out": MEAN})
    for name in ("loss", "abs_mean", "out"):
        np.testing.assert_allclose(result.history[name], result.history[f"val_{name}"], rtol=1e-6)
    out = np.asarray(jnn.dense(1).apply(result.train_state.params, result.train_state.state, X)[0])
    np.testing.assert_allclose(result.history["abs_mean"], [np.mean(np.abs(out - np.asarray(Y)))], rtol=1e-6)


@pytest.mark.parametrize("interval,epochs,n,message", [
    (5, 3, 4, "fit_pbt: PBT(interval=5) never exploits with epochs=3: a step runs after epochs 5, 10, ... but never "
              "after the last; use an interval below epochs"),
    (3, 3, 4, "fit_pbt: PBT(interval=3) never exploits with epochs=3"),
    (1, 3, 1, "fit_pbt: PBT never exploits a population of 1 member; it needs at least 2"),
])
def test_pbt_that_never_exploits_warns(interval, epochs, n, message):
    with pytest.warns(UserWarning, match=re.escape(message)) as caught:
        lineage = _pbt(interval, epochs, n).lineage
    assert caught[0].filename == __file__     # points at the caller's line
    assert lineage.shape[0] == (0 if n > 1 else 2)


def test_predict_on_no_examples_returns_empty_outputs_of_the_model_s_structure():
    params, state = DICT_MODEL.init(jax.random.key(0), X)
    out = jnn.train.predict(DICT_MODEL, params, state, X[:0])
    assert {k: v.shape for k, v in out.items()} == {"a": (0, 1), "b": (0, 1)}
    assert jnn.train.predict(jnn.dense(3), *jnn.dense(3).init(jax.random.key(0), X), X[:0]).shape == (0, 3)


def test_metrics_none_means_fit_s_default_everywhere():
    """``metrics=None``: accuracy for a classification loss, none for a regression loss, in fit_pbt,
    export_capsule and make_member_epoch as in fit (they used to add accuracy to any loss)."""
    assert "accuracy" not in _fit(metrics=None).history
    assert "accuracy" not in _pbt(metrics=None).history
    epoch = jnn.train.population.make_member_epoch(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(0.1),
                                                   4, 4)
    ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), X)
    logs = epoch({}, ts, True, (jnp.asarray(X), jnp.asarray(Y)))[1]
    assert sorted(logs) == ["loss"]
    path = pathlib.Path(tempfile.mkdtemp()) / "c.jnnx"
    jnn.export.export_capsule(path, jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (X, Y), batch_size=4,
                              platforms=("cpu",))
    header, fns = jnn.export.load(path)
    assert sorted(fns["train_epoch"](fns["init"](jax.random.key_data(jax.random.key(0))), X, Y)[1]) == ["loss"]
    labels = jnp.array([0, 1, 1, 0])
    assert "accuracy" in _pbt_on(jnn.losses.softmax_cross_entropy, labels).history


def _pbt_on(loss, y):
    make_opt = lambda hp: optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])
    return fit_pbt(lambda hp: jnn.dense(2), loss, make_opt, (X, y), hparams={"lr": jnp.full((2,), 0.1)},
                   key=jax.random.key(0), pbt=PBT(space={"lr": (1e-3, 1.0, "log")}, interval=1, monitor="loss"),
                   epochs=2, batch_size=4)
