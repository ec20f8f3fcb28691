"""fit's callback list (stopping, seeing metrics, history file) and TensorBoard event files read back."""
import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.callbacks import TensorBoard

LOSS = jnn.losses.softmax_cross_entropy


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


def _model():
    return jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(2))


def _fit(epochs, **kwargs):
    return jnn.train.fit(_model(), LOSS, kwargs.pop("opt", optax.adam(1e-2)), _data(), key=jax.random.key(0),
                         epochs=epochs, batch_size=16, val_data=_data(32, 1), progress=False, verbose=False, **kwargs)


def test_user_callback_sees_metrics_and_stops_training(tmp_path):
    seen = []

    class StopAtThree(jnn.train.callbacks.Callback):
        def on_epoch_end(self, epoch, train_state, logs):
            seen.append((epoch, int(train_state.step), dict(logs)))
            with open(tmp_path / "h.csv") as f:   # the history file already holds this epoch
                assert len(list(csv.DictReader(f))) == epoch
            return epoch == 3

    plain = []
    result = _fit(50, history_file=tmp_path / "h.csv", callbacks=[StopAtThree()],
                  on_epoch_end=lambda e, ts, logs: plain.append(e))
    assert result.stopped_early and result.history["epoch"] == [1, 2, 3] and plain == [1, 2, 3]
    assert [s[1] for s in seen] == [4, 8, 12]   # 64 examples / batch 16 = 4 steps per epoch
    for epoch, _, logs in seen:
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert logs[name] == result.history[name][epoch - 1]
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(result.history["val_loss"], rel=1e-12)


def test_every_callback_runs_even_when_the_first_asks_to_stop():
    calls = []
    result = _fit(5, callbacks=[lambda e, ts, logs: True, lambda e, ts, logs: calls.append(e)])
    assert calls == [1] and result.history["epoch"] == [1] and result.stopped_early


def test_a_non_callable_callback_is_refused():
    with pytest.raises(TypeError, match="each callback must be a function"):
        _fit(1, callbacks=["not a callback"])


def _events(directory):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_lr_histograms_and_gradient_norms(tmp_path):
    pytest.importorskip("tensorboardX")
    schedule = optax.exponential_decay(1e-2, transition_steps=4, decay_rate=0.5)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
    probe = tuple(map(jnp.asarray, _data(16, 2)))
    tb = TensorBoard(tmp_path / "run", histograms_every=2, model=_model(), loss=LOSS, probe=probe)
    result = _fit(4, opt=opt, callbacks=[tb])
    acc = _events(tmp_path / "run")
    tags = acc.Tags()
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "grad_norm/global"} <= set(tags["scalars"])
    assert {"weights/dense_0/w", "weights/dense_1/b", "grads/dense_0/w"} <= set(tags["histograms"])
    for name in ("loss", "val_accuracy"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2, 3, 4]
        np.testing.assert_allclose([e.value for e in events], result.history[name], rtol=1e-6)
    # lr at the end of epoch e: step 4e of the schedule (halves every 4 steps); the epoch's last step used 4e - 1
    np.testing.assert_allclose([e.value for e in acc.Scalars("lr")], [1e-2 * 0.5 ** ((4 * e - 1) / 4) for e in
                                                                      range(1, 5)], rtol=1e-5)
    hist = acc.Histograms("weights/dense_0/w")
    assert [h.step for h in hist] == [2, 4]
    w = np.asarray(result.train_state.params["dense_0"]["w"])
    assert hist[-1].histogram_value.num == w.size
    np.testing.assert_allclose(hist[-1].histogram_value.sum, w.sum(), rtol=1e-5, atol=1e-6)
    # gradient norm: an independent NumPy forward/backward of the 2-layer MLP on the probe batch
    p = jax.tree.map(np.asarray, result.train_state.params)
    x, y = map(np.asarray, probe)
    h_pre = x @ p["dense_0"]["w"] + p["dense_0"]["b"]
    h = np.maximum(h_pre, 0)
    logits = h @ p["dense_1"]["w"] + p["dense_1"]["b"]
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    d_logits = (prob - np.eye(2)[y]) / len(x)
    d_h = (d_logits @ p["dense_1"]["w"].T) * (h_pre > 0)
    grads = [d_logits.sum(0), h.T @ d_logits, d_h.sum(0), x.T @ d_h]
    expected = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    np.testing.assert_allclose(acc.Scalars("grad_norm/global")[-1].value, expected, rtol=1e-4)


def test_tensorboard_population_writes_one_run_per_member(tmp_path):
    pytest.importorskip("tensorboardX")
    make_model = lambda hp: _model()
    make_opt = lambda hp: optax.adam(hp["lr"])
    result = jnn.train.fit_population(make_model, LOSS, make_opt, _data(), hparams={"lr": jnp.array([1e-2, 1e-3])},
                                      key=jax.random.key(0), epochs=3, batch_size=16,
                                      callbacks=[TensorBoard(tmp_path / "pop", histograms_every=3)])
    for i in range(2):
        acc = _events(tmp_path / "pop" / f"member_{i}")
        np.testing.assert_allclose([e.value for e in acc.Scalars("loss")], result.history["loss"][:, i], rtol=1e-6)
        hist = acc.Histograms("weights/dense_1/w")[-1].histogram_value
        w = np.asarray(result.train_states.params["dense_1"]["w"][i])
        np.testing.assert_allclose(hist.sum, w.sum(), rtol=1e-5, atol=1e-6)
