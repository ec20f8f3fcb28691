"""jnn.train.loop, the details its other tests left open (for mutation testing, tests/MUTATION.md):
every argument error of `fit` and its helpers from the first word to the last, the validation
split against the examples it holds out, the default metrics, the printed epoch line, the batch
size and evaluation batch size at the data's edges, early stopping at the last epoch, and
`predict` in ragged batches. References are NumPy or the closed form of a linear model."""
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import EarlyStopping
from jnn.train.loop import split_validation

KEY = jax.random.key(0)
X = np.arange(16, dtype=np.float32).reshape(8, 2) / 16
Y = X.sum(1, keepdims=True)


_DEFAULT = object()


def _fit(data=(X, Y), model=_DEFAULT, loss=jnn.losses.mse, optimizer=_DEFAULT, **kw):
    kw = {"key": KEY, "epochs": 2, "batch_size": 4, "metrics": {}, "verbose": 0, **kw}
    model = jnn.dense(1) if model is _DEFAULT else model
    optimizer = optax.sgd(0.1) if optimizer is _DEFAULT else optimizer
    return jnn.train.fit(model, loss, optimizer, data, **kw)


def _stream():
    return iter([(X[:4], Y[:4]), (X[4:], Y[4:])])


def _exactly(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("kw,error,message", [
    ({"epochs": 0}, ValueError, "fit: epochs must be a positive integer, got 0"),
    ({"epochs": 2.0}, ValueError, "fit: epochs must be a positive integer, got 2.0"),
    ({"epochs": True}, ValueError, "fit: epochs must be a positive integer, got True"),
    ({"train_state": jnn.train.Start(epoch=2)}, ValueError, "fit: Start.epoch must be an integer in [0, epochs=2), got 2"),
    ({"train_state": jnn.train.Start(epoch=-1)}, ValueError,
     "fit: Start.epoch must be an integer in [0, epochs=2), got -1"),
    ({"train_state": jnn.train.Start(epoch=True)}, ValueError,
     "fit: Start.epoch must be an integer in [0, epochs=2), got True"),
    ({"train_state": jnn.train.Start(epoch=1.0)}, ValueError,
     "fit: Start.epoch must be an integer in [0, epochs=2), got 1.0"),
    ({"val_data": (X, Y), "val_split": 0.25}, ValueError, "fit: pass either val_data or val_split, not both"),
    ({"fused": "yes"}, ValueError, "fit: fused must be one of True, False, 'auto', got 'yes'"),
    ({"early_stopping": "val_loss"}, TypeError,
     "fit: early_stopping must be a jnn.train.EarlyStopping, got str"),
    ({"early_stopping": EarlyStopping(), "callbacks": [EarlyStopping()]}, ValueError,
     "fit: at most one EarlyStopping per run, got 2 (in callbacks and early_stopping together)"),
    ({"data": jnn.train.Data((X, Y), steps_per_epoch=2)}, ValueError, "fit: Data.steps_per_epoch and checkpoint are "
     "for streamed train_data; for arrays use callbacks=[checkpointer.save_every(k)] and train_state= to resume"),
    ({"checkpoint": "ckpt"}, ValueError, "fit: Data.steps_per_epoch and checkpoint are for streamed train_data; "
     "for arrays use callbacks=[checkpointer.save_every(k)] and train_state= to resume"),
    ({"mesh": (None, jnn.parallel.fsdp())}, ValueError,
     "fit: rules shard params over a mesh; pass mesh=(mesh, rules)"),
    ({"model": jnn.dense}, TypeError, "fit: model must be a jnn.Layer (e.g. jnn.dense(10)), got function (did you "
     "forget to call it?)"),
    ({"model": None}, TypeError, "fit: model must be a jnn.Layer (e.g. jnn.dense(10)), got NoneType"),
    ({"optimizer": optax.sgd}, TypeError, "fit: optimizer must be an optax.GradientTransformation (e.g. "
     "optax.adam(1e-3)), got function (did you forget to call it?)"),
    ({"optimizer": "adam"}, TypeError, "fit: optimizer must be an optax.GradientTransformation (e.g. "
     "optax.adam(1e-3)), got str"),
    ({"loss": "mse"}, TypeError, "fit: loss must be a function (predictions, targets) -> scalar, e.g. "
     "jnn.losses.mse, got str"),
    ({"metrics": ["accuracy"]}, TypeError, "fit: metrics must be a dict {name: fn(predictions, targets)}, got list"),
    ({"metrics": {"acc": "accuracy"}}, TypeError, "fit: metrics must map names to functions (predictions, "
     "targets) -> scalar; 'acc' maps to str"),
    ({"regularizer": "l2"}, TypeError, "fit: regularizer must be a function params -> scalar or None, got str"),
    ({"key": 0}, TypeError, "fit: key must be one PRNG key (jax.random.key(0)), got 0"),
    ({"key": jax.random.split(KEY, 2)}, TypeError, "fit: key must be one PRNG key (jax.random.key(0)), got "
     "key<fry>[2]"),
    ({"verbose": "yes"}, ValueError, "fit: verbose must be one of 0, 1, 2, False, True, got 'yes'"),
    ({"verbose": 3}, ValueError, "fit: verbose must be one of 0, 1, 2, False, True, got 3"),
    ({"accumulate": 0}, ValueError, "fit: accumulate must be a positive integer, got 0"),
    ({"data": jnn.train.Data((X, Y), check=None)}, ValueError, "fit: Data.check must be True or False, got None"),
    ({"callbacks": [jnn.train.NonFinite(), jnn.train.NonFinite("stop")]}, ValueError,
     "fit: at most one NonFinite policy per run, got 2"),
    ({"train_state": {"params": {}}}, TypeError, "fit: train_state must be a jnn.train.TrainState (from "
     "init_train_state or a previous fit) or a jnn.train.Start, got dict"),
])
def test_fit_argument_errors_in_full(kw, error, message):
    with pytest.raises(error, match=_exactly(message)):
        _fit(**kw)


@pytest.mark.parametrize("make,error,message", [
    (lambda: jnn.train.NonFinite(debug="yes"), ValueError, "NonFinite: debug must be True or False, got 'yes'"),
    (lambda: jnn.train.NonFinite("ignore"), ValueError, "NonFinite: action must be one of 'raise', 'stop', got 'ignore'"),
    (lambda: jnn.train.callbacks.HistoryFile("run.txt"), ValueError,
     "HistoryFile: path must end in .csv or .jsonl, got run.txt"),
])
def test_callback_argument_errors_in_full(make, error, message):
    with pytest.raises(error, match=_exactly(message)):
        make()


def test_train_state_with_params_or_state_is_refused():
    ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), KEY, X)
    message = ("fit: pass train_state (resume a run) or params/state (start from given weights), not both")
    for kw in ({"params": ts.params}, {"state": {}}):
        with pytest.raises(ValueError, match=_exactly(message)):
            _fit(train_state=jnn.train.Start(train_state=ts, **kw))


@pytest.mark.parametrize("kw,message", [
    ({"val_split": 0.25}, "fit: a streamed train_data takes val_data=, not val_split; and no NonFinite(debug=True)"),
    ({"callbacks": [jnn.train.NonFinite(debug=True)]},
     "fit: a streamed train_data takes val_data=, not val_split; and no NonFinite(debug=True)"),
    ({"val_data": iter([(X, Y)]), "mesh": "mesh"},
     "fit: val_data as a stream is not supported with a mesh; pass (x, y) arrays"),
])
def test_streamed_fit_argument_errors_in_full(kw, message):
    if kw.get("mesh") == "mesh":
        kw["mesh"] = jnn.parallel.make_mesh()
    with pytest.raises(ValueError, match=_exactly(message)):
        _fit(jnn.train.Data(_stream(), steps_per_epoch=2), **kw)


@pytest.mark.parametrize("data,message", [
    ((X,), "expected a pair (x, y), got tuple"),
    ((X, Y, Y), "expected a pair (x, y), got tuple"),
    (({}, Y), "x and y must each hold at least one array"),
    ((X, {}), "x and y must each hold at least one array"),
    (({"a": X, "b": np.float32(1.0)}, Y),
     "every array needs a leading example axis; x['b'] is a scalar"),
    ((X, Y[:7]), "x and y must have the same number of examples, got 8 and 7 (x has 8, y has 7; "
     "every array holds the examples on its first axis)"),
    (({"a": X, "b": X[:6]}, Y), "x and y must have the same number of examples, got 8 and 6 "
     "(x['a'] has 8, x['b'] has 6; every array holds the examples on its first axis)"),
])
def test_data_errors_name_the_argument_and_the_array(data, message):
    with pytest.raises((TypeError, ValueError), match=_exactly(f"fit train_data: {message}")):
        _fit(data)


def test_val_data_errors_say_val_data():
    with pytest.raises(ValueError, match=_exactly("fit val_data: x and y must have the same number of examples, "
                                                  "got 8 and 7 (x has 8, y has 7; every array holds the examples "
                                                  "on its first axis)")):
        _fit(val_data=(X, Y[:7]))


def test_given_params_and_state_are_checked_against_the_model():
    model = jnn.serial(jnn.dense(1), jnn.batch_norm())
    params, state = model.init(KEY, X)
    missing = {"dense_0": params["dense_0"]}
    with pytest.raises(ValueError, match=_exactly("fit: the given params do not have the model's structure: missing "
                                                  "['batch_norm_0']['offset'], ['batch_norm_0']['scale']; "
                                                  "unexpected nothing")):
        _fit(model=model, train_state=jnn.train.Start(params=missing))
    extra = {**state, "more": {"x": jnp.zeros(1)}}
    with pytest.raises(ValueError, match=_exactly("fit: the given state do not have the model's structure: missing "
                                                  "nothing; unexpected ['more']['x']")):
        _fit(model=model, train_state=jnn.train.Start(state=extra))
    wrong = jax.tree_util.tree_map(lambda a: a, params)
    wrong["dense_0"]["w"] = jnp.zeros((3, 1))
    with pytest.raises(ValueError, match=_exactly("fit: given params['dense_0']['w'] has shape (3, 1), the model "
                                                  "expects (2, 1)")):
        _fit(model=model, train_state=jnn.train.Start(params=wrong))
    bad_state = jax.tree_util.tree_map(lambda a: jnp.zeros((2,)), state)
    with pytest.raises(ValueError, match=r"^fit: given state\['batch_norm_0'\]\['\w+'\] has shape \(2,\), the model "
                                         r"expects \(1,\)$"):
        _fit(model=model, train_state=jnn.train.Start(state=bad_state))


def test_given_params_start_the_run_and_state_defaults_to_the_models():
    """lr 0: the run's params are exactly the given ones; the state left None starts from the
    model's init (mean 0), so one full-batch step leaves 0.01 of the batch mean in it."""
    model = jnn.serial(jnn.dense(1), jnn.batch_norm())
    params, _ = model.init(KEY, X)
    given = jax.tree_util.tree_map(lambda a: a + 1.0, params)
    result = jnn.train.fit(model, jnn.losses.mse, optax.sgd(0.0), (X, Y), key=jax.random.key(5), epochs=1,
                           batch_size=8, metrics={}, verbose=0, train_state=jnn.train.Start(params=given))
    jax.tree_util.tree_map(np.testing.assert_array_equal, result.train_state.params, given)
    assert int(result.train_state.step) == 1
    h = X @ np.asarray(given["dense_0"]["w"]) + np.asarray(given["dense_0"]["b"])
    np.testing.assert_allclose(result.train_state.state["batch_norm_0"]["mean"], 0.01 * h.mean(0), rtol=1e-4)


def test_split_validation_holds_out_round_n_times_fraction_examples_once_each():
    x = {"a": np.arange(10, dtype=np.float32)[:, None], "b": np.arange(10) * 10}
    y = np.arange(10)
    for fraction, n_val in ((0.2, 2), (0.25, 2), (0.35, 4), (0.95, 10)):   # round(2.5) == 2, round(3.5) == 4
        (tx, ty), (vx, vy) = split_validation(x, y, fraction, KEY)
        assert len(vy) == n_val and len(ty) == 10 - n_val
        assert sorted(np.concatenate([ty, vy]).tolist()) == list(range(10))
        np.testing.assert_array_equal(tx["a"][:, 0], ty)
        np.testing.assert_array_equal(vx["b"], vy * 10)
    held_out = lambda key: split_validation(x, y, 0.5, key)[1][1]
    assert not np.array_equal(held_out(KEY), held_out(jax.random.key(1)))
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=_exactly(f"split_validation: fraction must be in (0, 1), got {fraction}")):
            split_validation(x, y, fraction, KEY)


def test_val_split_evaluates_on_the_held_out_examples():
    """lr 0, so the model is its init throughout: val_loss is the init's loss on the examples
    that split_validation holds out with fit's second key (the docstring's "same key, same split")."""
    result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.0), (X, Y), key=KEY, epochs=1, batch_size=2,
                           val_split=0.25, metrics={}, verbose=0)
    (_, _), (vx, vy) = split_validation(X, Y, 0.25, jax.random.split(KEY)[1])
    p = result.train_state.params
    expected = np.mean((np.asarray(vx) @ np.asarray(p["w"]) + np.asarray(p["b"]) - np.asarray(vy)) ** 2)
    np.testing.assert_allclose(result.history["val_loss"], [expected], rtol=1e-6)
    assert int(result.train_state.step) == 3                 # 6 training examples / 2


def test_default_metrics_follow_the_loss_and_the_output():
    x, labels = X, np.array([0, 1] * 4)
    classify = lambda **kw: jnn.train.fit(jnn.dense(2), jnn.losses.softmax_cross_entropy, optax.sgd(0.1), (x, labels),
                                          key=KEY, epochs=1, batch_size=4, val_data=(x, labels), verbose=0,
                                          **kw)
    history = classify().history
    assert sorted(history) == ["accuracy", "epoch", "loss", "time", "val_accuracy", "val_loss"]
    assert sorted(classify(metrics={}).history) == ["epoch", "loss", "time", "val_loss"]
    regress = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (X, Y), key=KEY, epochs=1, batch_size=4,
                            verbose=0)
    assert sorted(regress.history) == ["epoch", "loss", "time"]
    two_heads = jnn.fan_out(jnn.dense(2), jnn.dense(2), merge=tuple)
    both = jnn.train.fit(two_heads, lambda out, y: jnn.losses.softmax_cross_entropy(out[0], y), optax.sgd(0.1),
                         (x, labels), key=KEY, epochs=1, batch_size=4, verbose=0)
    assert sorted(both.history) == ["epoch", "loss", "time"]


def test_verbose_prints_one_line_per_epoch_with_every_log(capsys):
    result = _fit(verbose=2, val_data=(X, Y), epochs=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        h = result.history
        expected = (f"epoch {epoch:3d}  loss {h['loss'][epoch - 1]:.4f}  val_loss {h['val_loss'][epoch - 1]:.4f}  "
                    f"time ")
        assert line.startswith(expected), line
    assert not capsys.readouterr().out
    _fit(verbose=False)
    assert capsys.readouterr().out == ""


def test_batch_size_is_clamped_to_the_data_and_the_first_epoch_is_initial_epoch_plus_one():
    result = _fit(batch_size=100, epochs=3)
    assert int(result.train_state.step) == 3 and result.history["epoch"] == [1, 2, 3]
    resumed = _fit(train_state=jnn.train.Start(result.train_state, epoch=1), epochs=3, batch_size=100)
    assert resumed.history["epoch"] == [2, 3] and int(resumed.train_state.step) == 5


@pytest.mark.parametrize("fused", [True, False])
def test_validation_is_exact_for_any_eval_batch_size(fused):
    w = np.array([[0.5], [-1.0]], np.float32)
    vx = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
    vy = np.random.default_rng(1).normal(size=(7, 1)).astype(np.float32)
    model = jnn.dense(1)
    params = {"w": jnp.asarray(w), "b": jnp.asarray([0.25])}
    kw = dict(key=KEY, epochs=1, batch_size=8, metrics={}, verbose=0, train_state=jnn.train.Start(params=params), fused=fused)
    for eval_batch_size in (1, 3, 7, 100):
        result = jnn.train.fit(model, jnn.losses.mse, optax.sgd(0.0), (X, Y), val_data=(vx, vy),
                               eval_batch_size=eval_batch_size, **kw)
        np.testing.assert_allclose(result.history["val_loss"], [np.mean((vx @ w + 0.25 - vy) ** 2)], rtol=1e-5)


def test_early_stopping_on_the_last_epoch_is_not_stopping_early():
    """patience 1 on a rising loss: stops after epoch 2 of 3 (early); of 2, at the end (not early)."""
    rising = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(-0.05), (X, Y), key=KEY, batch_size=8,
                           metrics={}, verbose=0, epochs=3,
                           early_stopping=EarlyStopping("loss", patience=1))
    assert rising.history["epoch"] == [1, 2] and rising.stopped_early and rising.best_epoch == 1
    at_end = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(-0.05), (X, Y), key=KEY, batch_size=8,
                           metrics={}, verbose=0, epochs=2,
                           early_stopping=EarlyStopping("loss", patience=1))
    assert at_end.history["epoch"] == [1, 2] and not at_end.stopped_early and at_end.best_epoch == 1
    assert _fit().best_epoch is None


def test_predict_in_ragged_batches_equals_the_closed_form():
    w, b = np.array([[0.5], [-1.0]], np.float32), np.float32(0.25)
    params = {"w": jnp.asarray(w), "b": jnp.asarray([b])}
    x = np.random.default_rng(2).normal(size=(11, 2)).astype(np.float32)
    for batch_size in (1, 4, 11, 50):
        out = jnn.train.predict(jnn.dense(1), params, {}, x, batch_size=batch_size)
        assert out.shape == (11, 1)
        np.testing.assert_allclose(out, x @ w + b, rtol=1e-6)
    model = jnn.fan_out(jnn.dense(1), jnn.serial(jnn.dense(1), jnn.relu()), merge=tuple)
    out = jnn.train.predict(model, {"dense_0": params, "serial_0": {"dense_0": params}}, {}, x, batch_size=4)
    np.testing.assert_allclose(out[0], x @ w + b, rtol=1e-6)
    np.testing.assert_allclose(out[1], np.maximum(x @ w + b, 0), rtol=1e-6)


def test_predict_uses_evaluation_mode():
    model = jnn.serial(jnn.dropout(0.5), jnn.batch_norm())
    params, state = model.init(KEY, X)
    out = jnn.train.predict(model, params, state, X, batch_size=3)
    np.testing.assert_allclose(out, X / np.sqrt(1 + 1e-5), rtol=1e-5)


def test_a_one_channel_convolution_trains_stepwise_on_cpu():
    """conv's one-channel CPU path has no convolution in its forward pass, only in its JVP: the
    choice reads the JVP along the floating-point inputs (an integer input has no tangent)."""
    from jnn.train.loop import _tangent_primitives, fuses_by_default
    layer = jnn.conv(4, (3, 3))
    x = jnp.zeros((2, 8, 8, 1))
    params, state = layer.init(KEY, x)
    jaxpr = jax.make_jaxpr(lambda p, x, n: layer.apply(p, state, x * n)[0])(params, x, 2)
    assert "conv_general_dilated" in _tangent_primitives(jaxpr)
    assert fuses_by_default(jaxpr) is (jax.default_backend() != "cpu")
    dense = jnn.dense(3)
    dense_params, _ = dense.init(KEY, X)
    assert fuses_by_default(jax.make_jaxpr(lambda p, x, n: dense.apply(p, {}, x * n)[0])(dense_params, X, 2))


def _pull_to_initial_params():
    """An optimizer whose state is the params it was initialized with, and whose update moves the
    params there: after one step the params are exactly ``optimizer.init``'s argument."""
    init = lambda params: jax.tree_util.tree_map(jnp.copy, params)
    update = lambda grads, state, params: (jax.tree_util.tree_map(lambda s, p: s - p, state, params), state)
    return optax.GradientTransformation(init, update)


def test_given_params_and_state_reach_the_optimizer_and_the_model():
    model = jnn.serial(jnn.dense(1), jnn.batch_norm())
    params, state = model.init(KEY, X)
    given = jax.tree_util.tree_map(lambda a: a + 1.0, params)
    result = jnn.train.fit(model, jnn.losses.mse, _pull_to_initial_params(), (X, Y), key=jax.random.key(5),
                           epochs=1, batch_size=8, metrics={}, verbose=0, train_state=jnn.train.Start(params=given))
    jax.tree_util.tree_map(np.testing.assert_allclose, result.train_state.params, given)   # the given, not init's
    given_state = {"batch_norm_0": {"mean": jnp.full((1,), 3.0), "var": jnp.full((1,), 2.0)}}
    only_state = jnn.train.fit(model, jnn.losses.mse, optax.sgd(0.0), (X, Y), key=KEY, epochs=1, batch_size=8,
                               metrics={}, verbose=0, train_state=jnn.train.Start(state=given_state))
    dense = only_state.train_state.params["dense_0"]                  # lr 0: the model's own init
    h = X @ np.asarray(dense["w"]) + np.asarray(dense["b"])
    np.testing.assert_allclose(only_state.train_state.state["batch_norm_0"]["mean"], 0.99 * 3.0 + 0.01 * h.mean(0),
                               rtol=1e-5)
    extra = {**given_state, "more": {"x": jnp.zeros(1), "y": jnp.zeros(1)}}
    with pytest.raises(ValueError, match=_exactly("fit: the given state do not have the model's structure: missing "
                                                  "nothing; unexpected ['more']['x'], ['more']['y']")):
        _fit(model=model, train_state=jnn.train.Start(state=extra))


def test_fit_and_predict_compile_with_the_training_compiler_options(monkeypatch):
    seen, jit = [], jax.jit

    def spy(fn, **kw):
        seen.append(kw.get("compiler_options"))
        return jit(fn, **kw)

    monkeypatch.setattr(jax, "jit", spy)
    _fit(val_data=(X, Y), fused=True)
    jnn.train.predict(jnn.dense(1), jnn.dense(1).init(KEY, X)[0], {}, X)
    assert len(seen) >= 3 and all(options == jnn.train.compiler_options() for options in seen), seen


def test_fused_by_default_reads_convolutions_anywhere_in_the_forward_pass():
    """On CPU a convolution in the forward pass, also inside a cond's branches or a scan's body,
    means stepwise training; a forward pass without one fuses."""
    from jnn.train.loop import fuses_by_default
    on_cpu = jax.default_backend() == "cpu"
    layer = jnn.conv(4, (3, 3))
    x = jnp.zeros((2, 8, 8, 3))
    params, state = layer.init(KEY, x)
    conv = lambda x: layer.apply(params, state, x)[0]
    assert fuses_by_default(jax.make_jaxpr(conv)(x)) is not on_cpu
    branches = jax.make_jaxpr(lambda x: jax.lax.cond(x.sum() > 0, conv, lambda x: 2 * conv(x), x))(x)
    assert fuses_by_default(branches) is not on_cpu
    scanned = jax.make_jaxpr(lambda x: jax.lax.scan(lambda c, xi: (c, conv(xi)), 0.0, x[None])[1])(x)
    assert fuses_by_default(scanned) is not on_cpu
    plain = jax.make_jaxpr(lambda x: jax.lax.cond(x.sum() > 0, jnp.tanh, jnp.sin, x))(x)
    assert fuses_by_default(plain)
    custom_jvp = jax.make_jaxpr(jax.nn.relu)(x)            # a custom JVP without a convolution in it
    assert "custom_jvp_call" in str(custom_jvp) and fuses_by_default(custom_jvp)


def test_defaults_10_epochs_batch_128_eval_batch_1000_progress_and_lines(capsys, monkeypatch):
    progress = pytest.importorskip("rich.progress")
    bars, update = [], progress.Progress.update
    monkeypatch.setattr(progress.Progress, "update", lambda self, task, **kw: (bars.append(kw), update(self, task, **kw))[1])
    eval_sizes, make_eval_fn = [], jnn.train.loop.make_eval_fn
    monkeypatch.setattr(jnn.train.loop, "make_eval_fn",
                        lambda *a, **kw: (eval_sizes.append(kw.get("batch_size")), make_eval_fn(*a, **kw))[1])
    x = np.random.default_rng(3).normal(size=(256, 2)).astype(np.float32)
    result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (x, x[:, :1]), key=KEY, metrics={},
                           val_data=(x[:8], x[:8, :1]))
    assert result.history["epoch"] == list(range(1, 11)) and int(result.train_state.step) == 20   # 10 x 256 / 128
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]   # and rich's bar
    assert len(lines) == 10 and lines[0].startswith("epoch   1  loss ")
    assert set(eval_sizes) == {1000}
    assert sum(1 for kw in bars if kw.get("advance") == 1) == 10


def test_a_streams_first_batch_is_checked_and_named():
    with pytest.raises(ValueError, match=_exactly("fit train_data (first batch): x and y must have the same number of "
                                                  "examples, got 4 and 3 (x has 4, y has 3; every array holds the "
                                                  "examples on its first axis)")):
        _fit(jnn.train.Data(iter([(X[:4], Y[:3])]), steps_per_epoch=1))
    with pytest.raises(ValueError, match=_exactly("fit val_data (first batch): x and y must have the same number of "
                                                  "examples, got 4 and 3 (x has 4, y has 3; every array holds the "
                                                  "examples on its first axis)")):
        _fit(val_data=[(X[:4], Y[:3])])


def test_a_one_device_mesh_trains_and_validates_like_no_mesh():
    """Data parallelism over one device: the same steps as without a mesh (the many-device runs
    are in test_parallel.py); FSDP rules lay out the same values."""
    plain = _fit(val_data=(X, Y), epochs=3)
    for rules in (None, jnn.parallel.fsdp()):
        meshed = _fit(val_data=(X, Y), epochs=3, mesh=(jnn.parallel.make_mesh(), rules))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                               meshed.train_state.params, plain.train_state.params)
        np.testing.assert_allclose(meshed.history["val_loss"], plain.history["val_loss"], rtol=1e-6)
    with pytest.raises(TypeError, match=_exactly("fit: mesh must be a jax.sharding.Mesh (e.g. "
                                                 "jnn.parallel.make_mesh()), got str")):
        _fit(mesh="data")


def test_the_regularizer_joins_the_gradient_but_not_the_logged_loss():
    """One full-batch SGD step from given weights against NumPy: d/dw [mse + 0.5 |w|^2]."""
    w0, b0 = np.array([[0.5], [-1.0]], np.float32), np.array([0.25], np.float32)
    decay = lambda params: 0.5 * jnp.sum(params["w"] ** 2)
    result = _fit(epochs=1, batch_size=8, train_state=jnn.train.Start(params={"w": w0, "b": b0}), regularizer=decay)
    error = X @ w0 + b0 - Y
    np.testing.assert_allclose(result.train_state.params["w"], w0 - 0.1 * (2 * X.T @ error / 8 + w0), rtol=1e-5)
    np.testing.assert_allclose(result.train_state.params["b"], b0 - 0.1 * 2 * error.mean(0), rtol=1e-5)
    np.testing.assert_allclose(result.history["loss"][0], np.mean(error ** 2), rtol=1e-5)


def test_callbacks_on_train_begin_get_the_starting_state():
    begun = []
    record = type("Record", (), {"on_train_begin": lambda self, ts: begun.append(ts),
                                 "on_epoch_end": lambda self, epoch, ts, logs: None})()
    given = {"w": np.full((2, 1), 0.5, np.float32), "b": np.zeros(1, np.float32)}
    _fit(train_state=jnn.train.Start(params=given), callbacks=[record])
    assert len(begun) == 1 and int(begun[0].step) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, begun[0].params, given)


def test_each_epoch_line_is_flushed_as_it_is_printed(monkeypatch):
    """Printed lines reach a pipe (a log file, a notebook) as each epoch ends, not at exit."""
    class Pipe:
        def __init__(self):
            self.text, self.flushed = "", []

        def write(self, s):
            self.text += s

        def flush(self):
            self.flushed.append(self.text)

    pipe = Pipe()
    monkeypatch.setattr("sys.stdout", pipe)
    _fit(verbose=2, epochs=2)
    lines = pipe.text.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"epoch {i:3d}  loss") for i, line in enumerate(lines, 1))
    assert lines[0] + "\n" in pipe.flushed and pipe.text in pipe.flushed


def test_the_progress_bar_shows_each_epochs_metrics(monkeypatch):
    progress = pytest.importorskip("rich.progress")
    shown, update = [], progress.Progress.update
    monkeypatch.setattr(progress.Progress, "update",
                        lambda self, task, **kw: (shown.append(kw.get("description")), update(self, task, **kw))[1])
    result = _fit(verbose=1, epochs=2)
    expected = [f"loss {loss:.4f}" for loss in result.history["loss"]]
    assert [d for d in shown if d and d.startswith("loss")] == expected


def test_debug_nonfinite_replays_with_the_runs_metrics():
    """A metric that is NaN (the loss stays finite) is found by the replay, at the first step."""
    nan_metric = {"nan": lambda out, y: jnp.mean(out) * jnp.nan}
    with pytest.raises(jnn.train.NonFiniteError, match="^fit: epoch 1 produced non-finite metrics") as failure:
        _fit(metrics=nan_metric, callbacks=[jnn.train.NonFinite(debug=True)])
    report = failure.value.report
    assert report is not None and (report.step, report.batch, report.kind) == (0, 0, "update")
    with pytest.warns(RuntimeWarning, match="^fit: epoch 1 produced non-finite metrics"):
        stopped = _fit(metrics=nan_metric, callbacks=[jnn.train.NonFinite("stop", debug=True)])
    assert stopped.nonfinite_epoch == 1 and stopped.nonfinite_report == report
    with pytest.warns(RuntimeWarning, match="^fit: epoch 1 produced non-finite metrics"):
        assert _fit(metrics=nan_metric, callbacks=[jnn.train.NonFinite("stop")]).nonfinite_report is None   # no replay without debug


def _spy_on(monkeypatch, name):
    """Records the keywords of every call of ``jnn.train.loop.<name>`` during the test."""
    calls, original = [], getattr(jnn.train.loop, name)
    monkeypatch.setattr(jnn.train.loop, name, lambda *a, **kw: (calls.append(kw), original(*a, **kw))[1])
    return calls


IMAGES = np.random.default_rng(4).normal(size=(8, 6, 6, 1)).astype(np.float32)
CNN = jnn.serial(jnn.conv(2, (3, 3)), jnn.flatten(), jnn.dense(1))


@pytest.mark.parametrize("metrics", [None, {}])
def test_fused_auto_trains_a_cnn_stepwise_on_cpu_and_fused_elsewhere(monkeypatch, metrics):
    """fused="auto" reads the forward pass whether or not metrics are given; off CPU (the backend
    faked here) it fuses whatever the model."""
    fused, stepwise = _spy_on(monkeypatch, "make_train_epoch"), _spy_on(monkeypatch, "make_stepwise_epoch")
    evals = _spy_on(monkeypatch, "make_eval_fn")
    _fit((IMAGES, Y), model=CNN, metrics=metrics, epochs=1, val_data=(IMAGES, Y), eval_batch_size=3)
    assert (len(fused), len(stepwise)) == (0, 1)
    assert {(kw["batch_size"], kw.get("fused")) for kw in evals} >= {(3, False)}   # evaluation stepwise too
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    _fit((IMAGES, Y), model=CNN, metrics=metrics, epochs=1)
    assert (len(fused), len(stepwise)) == (1, 1)
    _fit((IMAGES, Y), model=CNN, metrics=metrics, epochs=1, fused=False)   # an explicit choice stands there too
    assert (len(fused), len(stepwise)) == (1, 2)


def test_early_stopping_may_monitor_the_logged_learning_rate_or_a_streamed_validation():
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    result = jnn.train.fit(jnn.dense(1), jnn.losses.mse, sgd, (X, Y), key=KEY, epochs=3, batch_size=4, metrics={},
                           verbose=0, early_stopping=EarlyStopping(monitor="lr", patience=1))
    assert result.history["lr"] == pytest.approx([0.1] * 2) and result.stopped_early   # lr never improves
    with pytest.raises(ValueError, match=r"^fit: early_stopping monitors 'lr', which is not among the logged"):
        _fit(early_stopping=EarlyStopping(monitor="lr"))
    streamed = _fit(val_data=_Batches(), epochs=2,
                    early_stopping=EarlyStopping(monitor="val_loss", patience=5))
    assert len(streamed.history["val_loss"]) == 2 and not streamed.stopped_early


class _Batches:
    """Validation batches read afresh every epoch (an iterable that is not a tuple or list)."""

    def __iter__(self):
        return iter([(X[:4], Y[:4]), (X[4:], Y[4:])])


def test_a_run_that_trains_every_epoch_did_not_stop_early():
    result = _fit(epochs=2, early_stopping=EarlyStopping(monitor="loss", patience=5))
    assert result.stopped_early is False and result.history["epoch"] == [1, 2]
    assert _fit(epochs=1).stopped_early is False


def test_the_progress_bar_counts_the_epochs_left(monkeypatch):
    progress = pytest.importorskip("rich.progress")
    totals, add_task = [], progress.Progress.add_task
    monkeypatch.setattr(progress.Progress, "add_task",
                        lambda self, *a, **kw: (totals.append(kw.get("total")), add_task(self, *a, **kw))[1])
    first = _fit(epochs=1)
    _fit(verbose=1, epochs=3, train_state=jnn.train.Start(first.train_state, epoch=1))
    assert totals == [2]


def test_resuming_on_a_mesh_continues_from_the_given_state():
    """train_state= with a (one-device) mesh: epochs 2..3 from epoch 1's state equal a 3-epoch run."""
    mesh = jnn.parallel.make_mesh()
    for rules in (None, jnn.parallel.fsdp()):
        whole = _fit(epochs=3, mesh=(mesh, rules))
        first = _fit(epochs=1, mesh=(mesh, rules))
        rest = _fit(epochs=3, train_state=jnn.train.Start(first.train_state, epoch=1), mesh=(mesh, rules))
        assert int(rest.train_state.step) == int(whole.train_state.step) == 6
        jax.tree_util.tree_map(np.testing.assert_array_equal, rest.train_state.params, whole.train_state.params)


def test_a_resumed_streamed_run_counts_epochs_from_initial_epoch():
    first = _fit(epochs=1)
    with pytest.raises(ValueError, match=r"^fit: train_data ran out after 1 batches of epoch 2, but steps_per_epoch "
                                         r"is 2"):
        _fit(jnn.train.Data(iter([(X[:4], Y[:4])]), steps_per_epoch=2), train_state=jnn.train.Start(first.train_state, epoch=1))


def test_each_epochs_logged_time_is_its_own_duration(monkeypatch):
    """A clock that reads 100, 102.5, 200, 203 around the two epochs logs 2.5 and 3 seconds."""
    readings = iter([100.0, 102.5, 200.0, 203.0])
    monkeypatch.setattr(jnn.train.engine, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(readings))}))
    assert _fit(epochs=2).history["time"] == [2.5, 3.0]


def test_debug_nonfinite_replays_with_the_runs_regularizer():
    """A regularizer whose gradient is NaN (the logged loss leaves it out) poisons the first
    update; the replay finds it only if it trains with the regularizer too."""
    poison = lambda params: jnp.sum(jnp.sqrt(-params["w"] ** 2))   # at w = 0: 0/0, a NaN gradient
    zeros = {"w": np.zeros((2, 1), np.float32), "b": np.zeros(1, np.float32)}
    with pytest.raises(jnn.train.NonFiniteError, match="^fit: epoch 1 produced non-finite metrics") as failure:
        _fit(train_state=jnn.train.Start(params=zeros), regularizer=poison, callbacks=[jnn.train.NonFinite(debug=True)])
    report = failure.value.report
    assert report is not None and (report.step, report.batch, report.kind) == (0, 0, "update")


def test_callbacks_on_train_end_get_the_final_state_and_the_history():
    seen = []

    class Last(jnn.train.callbacks.Callback):
        def on_train_end(self, train_state, history):
            seen.append((train_state, {k: list(v) for k, v in history.items()}))

    result = _fit(epochs=2, callbacks=[Last()])
    (final, history), = seen
    assert int(final.step) == 4 and history == result.history and history["epoch"] == [1, 2]
    jax.tree_util.tree_map(np.testing.assert_array_equal, final.params, result.train_state.params)


def test_the_nonfinite_warning_points_at_the_callers_line():
    # tests/mutation.py: mutmut's trampoline is a frame between
    if any("__mutmut" in n for m in (jnn.train.loop, jnn.train.engine) for n in vars(m)):
        pytest.skip("mutmut calls fit through a trampoline, one frame more")
    nan_metric = {"nan": lambda out, y: jnp.mean(out) * jnp.nan}
    with pytest.warns(RuntimeWarning, match="^fit: epoch 1 produced non-finite metrics") as record:
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (X, Y), key=KEY, epochs=1, batch_size=4,
                      metrics=nan_metric, callbacks=[jnn.train.NonFinite("stop")], verbose=0)
    assert [w.filename for w in record] == [__file__]


def test_a_streamed_run_checkpoints_every_k_steps_and_resumes_in_this_process(tmp_path):
    """Checkpoints at steps 3 and 6 of 8 (4 a epoch); a run resumed from step 6 with another key
    (the state, data position and history come from the checkpoint) ends where the whole run did."""
    pytest.importorskip("grain")
    pipe = lambda: jnn.data.grain.pipeline(jnn.data.grain.ArraySource(X, Y), batch_size=2, seed=3)
    whole_dir = tmp_path / "whole"
    whole = _fit(pipe(), batch_size=None, checkpoint=jnn.train.Checkpointer(whole_dir).every_steps(3))
    assert jnn.train.Checkpointer(whole_dir).all_steps() == [3, 6]
    assert jnn.train.Checkpointer(whole_dir).read_meta(6)["progress"]["epoch"] == 2
    (tmp_path / "resumed").mkdir()
    shutil.copytree(whole_dir / "6", tmp_path / "resumed" / "6")
    resumed = _fit(pipe(), batch_size=None, key=jax.random.key(99),
                   checkpoint=jnn.train.Checkpointer(tmp_path / "resumed").every_steps(3, resume=True))
    assert int(resumed.train_state.step) == 8 and resumed.history["epoch"] == [1, 2]
    assert resumed.history["loss"] == whole.history["loss"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.train_state.params, whole.train_state.params)


def test_verbose_takes_keras_style_levels(capsys):
    quiet = _fit(verbose=0)
    loud = _fit(verbose=2)
    assert capsys.readouterr().out.count("epoch") == 2          # two epochs printed once, by the verbose run
    np.testing.assert_array_equal(quiet.train_state.params["w"], loud.train_state.params["w"])
