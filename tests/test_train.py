"""jnn.train: steps, scan-fused epochs, exact evaluation, fit, early stopping, history files."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train


def _digits(n=600):
    x, y = jnn.data.load_digits()
    return x[:n], y[:n]


def _mlp():
    return jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dense(10))


LOSS = jnn.losses.softmax_cross_entropy


def test_train_step_equals_hand_written_sgd_update():
    model = _mlp()
    x, y = _digits(32)
    ts = train.init_train_state(model, optax.sgd(0.5), jax.random.key(0), x)
    new_ts, logs = jax.jit(train.make_train_step(model, LOSS, optax.sgd(0.5)))(ts, (x, y))

    def hand_loss(p):
        h = jnp.maximum(x.reshape(32, -1) @ p["dense_0"]["w"] + p["dense_0"]["b"], 0)
        z = h @ p["dense_1"]["w"] + p["dense_1"]["b"]
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(32), y])

    value, grads = jax.value_and_grad(hand_loss)(ts.params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, ts.params, grads)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           new_ts.params, expected)
    np.testing.assert_allclose(logs["loss"], value, rtol=1e-6)
    assert int(new_ts.step) == 1


def test_regularizer_adds_l2_gradient_on_weights_only():
    model = _mlp()
    x, y = _digits(32)
    ts = train.init_train_state(model, optax.sgd(1.0), jax.random.key(0), x)
    plain = train.make_train_step(model, LOSS, optax.sgd(1.0))(ts, (x, y))[0].params
    reg = train.make_train_step(model, LOSS, optax.sgd(1.0), regularizer=train.penalty(l2=0.1))(ts, (x, y))[0].params
    # d/dw (0.1 * sum w^2) = 0.2 w, so the regularized step moves w by an extra -0.2 w; biases untouched
    np.testing.assert_allclose(reg["dense_0"]["w"], plain["dense_0"]["w"] - 0.2 * ts.params["dense_0"]["w"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reg["dense_0"]["b"], plain["dense_0"]["b"])


def test_epoch_is_compiled_once_and_skips_the_ragged_remainder():
    model = _mlp()
    x, y = map(jnp.asarray, _digits(100))
    traces = []

    def counting_loss(out, t):
        traces.append(1)  # Python runs only while tracing
        return LOSS(out, t)

    ts = train.init_train_state(model, optax.adam(1e-2), jax.random.key(0), x)
    epoch = jax.jit(train.make_train_epoch(train.make_train_step(model, counting_loss, optax.adam(1e-2)), 100, 32))
    for _ in range(4):
        ts, logs = epoch(ts, (x, y))
    assert int(ts.step) == 4 * 3  # 100 // 32 = 3 full batches per epoch
    assert epoch._cache_size() == 1 and len(traces) == 1


def test_eval_is_exact_whatever_the_batch_size():
    model = _mlp()
    x, y = map(jnp.asarray, _digits(103))
    params, state = model.init(jax.random.key(0), x)
    logits = model.apply(params, state, x)[0]
    expected = {"loss": LOSS(logits, y), "accuracy": jnn.metrics.accuracy(logits, y)}
    for bs, fused in ((10, True), (64, True), (103, True), (500, True), (10, False), (64, False), (500, False)):
        got = train.make_eval_fn(model, LOSS, metrics={"accuracy": jnn.metrics.accuracy}, batch_size=bs,
                                 fused=fused)(params, state, (x, y))
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["accuracy"], expected["accuracy"], rtol=1e-6)


def _fit(**kwargs):
    args = dict(key=jax.random.key(0), epochs=3, batch_size=64, val_split=0.2, verbose=0)
    args.update(kwargs)
    return train.fit(_mlp(), LOSS, args.pop("optimizer", optax.adam(1e-2)), _digits(), **args)


def test_same_seed_gives_bit_identical_params_and_different_seed_does_not():
    a, b = _fit(), _fit()
    c = _fit(key=jax.random.key(1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.train_state.params, b.train_state.params)
    assert a.history["loss"] == b.history["loss"]
    assert not np.array_equal(a.train_state.params["dense_0"]["w"], c.train_state.params["dense_0"]["w"])


def test_fit_learns_and_logs_history_and_learning_rate():
    schedule = optax.linear_schedule(0.02, 0.0, 6 * 7)
    result = _fit(epochs=6, optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=schedule))
    h = result.history
    assert h["epoch"] == [1, 2, 3, 4, 5, 6]
    assert set(h) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert h["val_accuracy"][-1] > 0.85 and h["loss"][-1] < h["loss"][0]
    # 480 training examples / 64 = 7 steps an epoch; "lr" is the rate of each epoch's last step
    np.testing.assert_allclose(h["lr"], [float(schedule(7 * e - 1)) for e in range(1, 7)], rtol=1e-5)


def test_early_stopping_stops_and_restores_best():
    # gradient *ascent* makes the validation loss worse every epoch: epoch 1 is the best
    stop = train.EarlyStopping(monitor="val_loss", patience=2)
    result = _fit(epochs=10, optimizer=optax.sgd(-0.5), early_stopping=stop)
    assert result.best_epoch == 1 and result.stopped_early and len(result.history["epoch"]) == 3
    one_epoch = _fit(epochs=1, optimizer=optax.sgd(-0.5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, result.train_state.params, one_epoch.train_state.params)


def test_early_stopping_validation():
    with pytest.raises(ValueError, match="EarlyStopping: patience must be an integer >= 1, got 0"):
        train.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="fit: early_stopping monitors 'val_f1', which is not among the logged"):
        _fit(early_stopping=train.EarlyStopping(monitor="val_f1"))
    assert train.EarlyStopping(monitor="val_accuracy").maximize and not train.EarlyStopping().maximize


def test_history_files_are_written_and_never_overwritten(tmp_path):
    _fit(callbacks=[train.callbacks.HistoryFile(tmp_path / "h.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "val_loss" in rows[0]
    _fit(callbacks=[train.callbacks.HistoryFile(tmp_path / "h.csv")])
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 4
    with pytest.raises(FileExistsError, match="h.csv already exists"):
        _fit(callbacks=[train.callbacks.HistoryFile(tmp_path / "h.csv")])
    assert len((tmp_path / "h.csv").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "h.jsonl"]  # no temp files left


def test_fit_input_errors():
    with pytest.raises(ValueError, match="x and y must have the same number of examples, got 600 and 10"):
        train.fit(_mlp(), LOSS, optax.adam(1e-3), (_digits()[0], _digits()[1][:10]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="pass either val_data or val_split, not both"):
        _fit(val_data=_digits(10))
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        _fit(epochs=0)


def test_stepwise_epoch_equals_fused_epoch_and_compiles_once():
    model = _mlp()
    x, y = map(jnp.asarray, _digits(100))
    opt = optax.adam(1e-2)
    step = train.make_train_step(model, LOSS, opt)
    ts = train.init_train_state(model, opt, jax.random.key(0), x)
    fused, stepwise = jax.jit(train.make_train_epoch(step, 100, 32)), train.make_stepwise_epoch(step, 100, 32)
    a, b = ts, ts
    for _ in range(3):
        a, logs_a = fused(a, (x, y))
        b, logs_b = stepwise(b, (x, y))
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a.params, b.params)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    np.testing.assert_allclose(logs_a["loss"], logs_b["loss"], rtol=1e-5)
    assert int(b.step) == 9 and stepwise.step._cache_size() == 1


def test_fused_auto_trains_conv_nets_stepwise_on_cpu_and_the_rest_fused(monkeypatch):
    # fused="auto" (the default): a model with a convolution (even one inside a remat's nested
    # jaxpr) trains stepwise on CPU, where XLA runs convolutions inside loops several times slower;
    # a dense model keeps the scan-fused epoch; the same holds for a stream's chunked scans.
    import jnn.train.loop as loop
    stepwise, chunks = [], []
    make_stepwise = train.make_stepwise_epoch
    monkeypatch.setattr(loop, "make_stepwise_epoch", lambda *a, **k: stepwise.append(1) or make_stepwise(*a, **k))
    stream_epochs = jnn.train.stream.StreamEpochs
    monkeypatch.setattr(jnn.train.stream, "StreamEpochs", lambda *a, **k: chunks.append(k["chunk"]) or stream_epochs(*a, **k))
    x, y = np.random.default_rng(0).normal(size=(32, 6, 6, 1)).astype(np.float32), np.arange(32) % 3
    conv_net = jnn.serial(jnn.remat(jnn.residual(jnn.conv(1, (3, 3)), jnn.relu())), jnn.flatten(), jnn.dense(3))
    dense_net = jnn.serial(jnn.flatten(), jnn.dense(3))
    kw = dict(key=jax.random.key(0), epochs=1, batch_size=8, verbose=0)
    for model, expected in ((conv_net, 1), (dense_net, 0)):
        stepwise.clear()
        train.fit(model, LOSS, optax.sgd(0.1), (x, y), **kw)
        assert len(stepwise) == (expected if jax.default_backend() == "cpu" else 0)
        train.fit(model, LOSS, optax.sgd(0.1), train.Data(iter([(x[:8], y[:8])] * 4), steps_per_epoch=4), **kw)
    assert chunks == ([1, jnn.train.stream.CHUNK] if jax.default_backend() == "cpu" else [8, 8])
    stepwise.clear()
    train.fit(conv_net, LOSS, optax.sgd(0.1), (x, y), fused=True, **kw)
    assert not stepwise
    with pytest.raises(ValueError, match=r"fit: fused must be one of True, False, 'auto', got 'yes'"):
        train.fit(dense_net, LOSS, optax.sgd(0.1), (x, y), fused="yes", **kw)
