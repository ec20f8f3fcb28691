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
                         epochs=epochs, batch_size=16, val_data=_data(32, 1), verbose=0, **kwargs)


def test_user_callback_sees_metrics_and_stops_training(tmp_path):
    seen = []

    class StopAtThree(jnn.train.callbacks.Callback):
        def on_epoch_end(self, epoch, train_state, logs):
            seen.append((epoch, int(train_state.step), dict(logs)))
            with open(tmp_path / "h.csv") as f:   # the history file already holds this epoch
                assert len(list(csv.DictReader(f))) == epoch
            return epoch == 3

    plain = []
    result = _fit(50, callbacks=[jnn.train.callbacks.HistoryFile(tmp_path / "h.csv"), StopAtThree(),
                                 lambda e, ts, logs: plain.append(e)])
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


# --- EarlyStopping is a callback; fit(early_stopping=...) goes through the same one ---------

SCORES = [5.0, 4.0, 3.95, 3.0, 3.05, 2.95, 3.5, 1.0]   # the monitored value of epochs 1..8


def _scored_loss(out, y, step):
    """softmax cross-entropy, plus a log "score" that is SCORES[epoch - 1] at every step of an
    epoch (4 steps per epoch here), so its epoch mean is exactly that number."""
    return LOSS(out, y), {"score": jnp.asarray(SCORES)[step // 4]}


def _fit_scored(epochs, **kwargs):
    return jnn.train.fit(_model(), _scored_loss, optax.adam(1e-2), _data(), key=jax.random.key(0), epochs=epochs,
                         batch_size=16, metrics={}, verbose=0, **kwargs)


@pytest.mark.parametrize("route", ["callbacks", "early_stopping"])
def test_early_stopping_callback_stops_where_a_hand_computation_says_and_restores_the_best(route):
    # By hand, mode min, min_delta 0.1, patience 2: epoch 1 best (5.0); 2 improves (4.0 < 4.9);
    # 3 does not (3.95 >= 3.9), wait 1; 4 improves (3.0 < 3.9); 5 and 6 do not (3.05, 2.95 >= 2.9):
    # wait 2 = patience, so training stops after epoch 6, best epoch 4. (Without min_delta, epochs
    # 3, 4, 6 and 8 would improve and all 8 epochs would run.)
    es = jnn.train.EarlyStopping(monitor="score", mode="min", patience=2, min_delta=0.1)
    kwargs = {"callbacks": [es]} if route == "callbacks" else {"early_stopping": es}
    result = _fit_scored(8, **kwargs)
    assert result.history["score"] == pytest.approx(SCORES[:6], rel=1e-6)
    assert result.history["epoch"] == [1, 2, 3, 4, 5, 6] and result.stopped_early and result.best_epoch == 4
    assert es.best_epoch == 4 and float(es.best) == pytest.approx(3.0)
    # the returned state is epoch 4's: the same params as a plain 4-epoch run with the same key
    plain = _fit_scored(4)
    assert int(result.train_state.step) == 16
    jax.tree_util.tree_map(np.testing.assert_array_equal, result.train_state.params, plain.train_state.params)
    if route == "early_stopping":
        return
    # restore_best=False returns the last epoch's state; the instance is reset at every run
    last = _fit_scored(8, callbacks=[jnn.train.EarlyStopping("score", patience=2, min_delta=0.1,
                                                             restore_best=False)])
    assert int(last.train_state.step) == 24 and last.best_epoch == 4
    again = _fit_scored(8, **kwargs)
    assert again.history["epoch"] == result.history["epoch"] and again.best_epoch == 4


def test_early_stopping_arguments_are_checked_before_training():
    with pytest.raises(ValueError, match=r"fit: early_stopping monitors 'val_f1', which is not among the logged "
                                         r"metrics \['loss', 'score', 'time'\] \(checked before training\)"):
        _fit_scored(3, callbacks=[jnn.train.EarlyStopping(monitor="val_f1")])
    with pytest.raises(ValueError, match=r"fit: at most one EarlyStopping per run, got 2"):
        _fit_scored(3, callbacks=[jnn.train.EarlyStopping("score")], early_stopping=jnn.train.EarlyStopping("loss"))
    with pytest.raises(TypeError, match=r"fit: early_stopping must be a jnn.train.EarlyStopping, got str"):
        _fit_scored(3, early_stopping="val_loss")
    with pytest.raises(ValueError, match=r"EarlyStopping: min_delta must be a finite number >= 0, got -0.5"):
        jnn.train.EarlyStopping(min_delta=-0.5)
    with pytest.raises(ValueError, match=r"EarlyStopping: min_delta must be a finite number >= 0, got '0.1'"):
        jnn.train.EarlyStopping(min_delta="0.1")
    with pytest.raises(ValueError, match=r"EarlyStopping: restore_best must be True or False, got 'yes'"):
        jnn.train.EarlyStopping(restore_best="yes")
    with pytest.raises(ValueError, match=r"EarlyStopping: mode must be 'min', 'max' or 'auto', got 'up'"):
        jnn.train.EarlyStopping(mode="up")
    assert jnn.train.EarlyStopping is jnn.train.callbacks.EarlyStopping   # one implementation


def test_early_stopping_judges_each_population_member_on_its_own():
    # The population hook, driven by hand: member 0 improves every epoch; member 1 never after
    # epoch 1, so with patience 2 it is asked to stop after epoch 3; member 2 did not train at
    # epoch 2 (already stopped), so that epoch does not count against it.
    es = jnn.train.EarlyStopping(monitor="val_loss", patience=2, restore_best=False)
    es.on_train_begin(None)
    values = [[3.0, 1.0, 2.0], [2.0, 1.5, np.nan], [1.0, 1.2, 2.5], [0.5, 1.1, 2.6]]
    trained = [[True, True, True], [True, True, False], [True, True, True], [True, True, True]]
    asked = [es.on_population_epoch_end(e + 1, None, {"val_loss": np.array(v)}, np.array(t)).tolist()
             for e, (v, t) in enumerate(zip(values, trained))]
    assert asked == [[False, False, False], [False, False, False], [False, True, False], [False, True, True]]
    assert es.best_epoch.tolist() == [4, 1, 1] and es.best.tolist() == [0.5, 1.0, 2.0]


def test_a_population_callback_sees_each_members_metrics_and_stops_members():
    seen = []

    class StopMemberZeroAfterEpochOne:
        def on_population_epoch_end(self, epoch, states, logs, trained):
            seen.append((epoch, logs["loss"].copy(), np.asarray(trained).tolist(), np.asarray(states.step).tolist()))
            return np.array([epoch == 1, False])

    x, y = jnn.data.xor()
    result = jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: optax.sgd(hp["lr"]), (x, y),
                                      hparams={"lr": jnp.array([0.1, 0.2])}, key=jax.random.key(0), epochs=3,
                                      batch_size=4, chunk_size=None, callbacks=[StopMemberZeroAfterEpochOne()])
    assert [s[0] for s in seen] == [1, 2, 3] and [s[2] for s in seen] == [[True, True], [False, True], [False, True]]
    assert [s[3] for s in seen] == [[1, 1], [1, 2], [1, 3]]   # member 0 frozen after its stop (one step per epoch)
    for epoch, losses, _, _ in seen:
        np.testing.assert_array_equal(losses, result.history["loss"][epoch - 1])
    np.testing.assert_array_equal(result.epochs_trained, [1, 3])
    np.testing.assert_array_equal(result.stopped_early, [True, False])
