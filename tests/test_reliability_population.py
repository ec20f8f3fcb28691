"""Reliability for fit_population: a member that goes non-finite stops alone (named, with its epoch
and step), the others train on unchanged; arguments are checked before the first step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import population
from jnn.train.population import fit_population, init_population, member_keys

N, BATCH = 64, 8        # 8 steps per epoch
BLOWUP_STEP = 16        # the member given a NaN learning rate gets it from step 16: epoch 3


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([[1.0], [2.0], [-1.0]], np.float32)


def make_model(hp):
    return jnn.dense(1)


def make_sgd(hp):   # lr 0.05 until BLOWUP_STEP, then hp["late_lr"] (NaN for the failing member)
    schedule = lambda count: jnp.where(count >= BLOWUP_STEP, hp["late_lr"], 0.05)
    return optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)


def _run(late_lr, keys, epochs=4, **kwargs):
    return fit_population(make_model, jnn.losses.mse, make_sgd, _data(), hparams={"late_lr": jnp.array(late_lr)},
                          key=keys, epochs=epochs, batch_size=BATCH, chunk_size=None, **kwargs)


KEYS = member_keys(jax.random.key(0), 3)


def test_a_nan_member_is_named_stopped_at_its_epoch_and_the_others_equal_a_run_without_it():
    with pytest.warns(RuntimeWarning, match=r"fit_population: epoch 3 produced non-finite metrics for member\(s\) "
                                            r"\[1\]: member 1: loss=nan, lr=nan; they stopped there"):
        result = _run([0.05, np.nan, 0.02], KEYS)
    np.testing.assert_array_equal(result.nonfinite_epoch, [0, 3, 0])
    np.testing.assert_array_equal(result.epochs_trained, [4, 3, 4])
    assert result.nonfinite_epoch.dtype.kind == result.epochs_trained.dtype.kind == "i"   # epochs index arrays
    assert not result.stopped_early.any()
    member = result.member(1)
    assert member.nonfinite_epoch == 3 and result.member(0).nonfinite_epoch is None
    assert np.isnan(member.history["loss"][2]) and np.isfinite(member.history["loss"][:2]).all()
    assert np.isnan(result.history["loss"][3, 1])                  # not trained at epoch 4
    # member 1 keeps its state after epoch 2 (step 16), which a 2-epoch run reaches too
    np.testing.assert_array_equal(result.train_states.step, [32, 16, 32])
    two = _run([0.05, np.nan, 0.02], KEYS, epochs=2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, member.train_state.params, two.member(1).train_state.params)
    assert np.isfinite(member.train_state.params["w"]).all()
    # members 0 and 2 are exactly what a population without member 1 gives them
    without = _run([0.05, 0.02], KEYS[jnp.array([0, 2])])
    for i, j in ((0, 0), (2, 1)):
        np.testing.assert_allclose(result.member(i).train_state.params["w"],
                                   without.member(j).train_state.params["w"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(result.member(i).history["loss"], without.member(j).history["loss"], rtol=1e-6)
    assert not np.isnan(without.history["loss"]).any() and without.nonfinite_epoch.tolist() == [0, 0]


def test_stop_mode_with_debug_returns_each_failing_members_report():
    with pytest.warns(RuntimeWarning, match=r"fit_population: epoch 3 produced non-finite metrics for member\(s\) \[1\]"):
        result = _run([0.05, np.nan, 0.02], KEYS, epochs=3, debug_nonfinite=True)
    assert set(result.nonfinite_reports) == {1}
    report = result.member(1).nonfinite_report
    assert report is result.nonfinite_reports[1]
    assert (report.step, report.batch, report.layer, report.kind) == (BLOWUP_STEP, 0, None, "update")
    assert result.member(0).nonfinite_report is None


def test_prune_stops_the_members_it_names_after_the_epoch_it_saw():
    seen = []

    def prune(epoch, history):
        seen.append((epoch, np.array(history["loss"][epoch - 1])))   # this epoch's row, as the history will hold it
        return np.array([epoch == 2, False, False])   # member 0, after its second epoch
    result = _run([0.05, 0.05, 0.02], KEYS, prune=prune)
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4]
    for epoch, row in seen:
        np.testing.assert_array_equal(row, result.history["loss"][epoch - 1])
    np.testing.assert_array_equal(result.epochs_trained, [2, 4, 4])
    np.testing.assert_array_equal(result.stopped_early, [True, False, False])
    assert np.isnan(result.history["loss"][2:, 0]).all() and np.isfinite(result.history["loss"][:, 1:]).all()
    two = _run([0.05, 0.05, 0.02], KEYS, epochs=2)
    np.testing.assert_array_equal(result.member(0).train_state.params["w"], two.member(0).train_state.params["w"])


def test_raise_mode_names_the_member_and_keeps_every_state_and_debug_names_the_step():
    with pytest.raises(jnn.train.NonFiniteError,
                       match=r"epoch 3 produced non-finite metrics for member\(s\) \[1\]: member 1: loss=nan, lr=nan; "
                             r"first non-finite value at step 16 \(batch 0 of the epoch\): update of the optimizer "
                             r"update.*training stopped") as caught:
        _run([0.05, np.nan, 0.02], KEYS, on_nonfinite="raise", debug_nonfinite=True)
    e = caught.value
    assert e.epoch == 3 and e.members == [1] and set(e.report) == {1}
    report = e.report[1]
    assert (report.step, report.batch, report.layer, report.kind) == (BLOWUP_STEP, 0, None, "update")
    # the failing member is back at step 16; the others hold their epoch-3 states (step 24)
    np.testing.assert_array_equal(e.train_state.step, [24, 16, 24])
    assert np.isfinite(e.train_state.params["w"]).all()
    assert np.isnan(e.history["loss"][2, 1]) and np.isfinite(e.history["loss"][2, [0, 2]]).all()


def test_every_argument_is_checked_before_the_first_step(monkeypatch):
    epochs_run = []
    real_epoch = population.population_epoch_jit
    monkeypatch.setattr(population, "population_epoch_jit", lambda *a: epochs_run.append(1) or real_epoch(*a))
    x, y = _data()
    run = lambda **kw: fit_population(make_model, jnn.losses.mse, make_sgd, kw.pop("data", (x, y)),
                                      hparams={"late_lr": jnp.array([0.1, 0.2])}, key=jax.random.key(0),
                                      epochs=2, chunk_size=None, **{"batch_size": BATCH, **kw})
    cases = [
        ({"batch_size": -1}, ValueError, r"fit_population: batch_size must be a positive integer, got -1"),
        ({"batch_size": 8.0}, ValueError, r"fit_population: batch_size must be a positive integer, got 8.0"),
        ({"eval_batch_size": 0}, ValueError, r"fit_population: eval_batch_size must be a positive integer, got 0"),
        ({"val_split": 0.001}, ValueError, r"fit_population: val_split=0.001 of 64 examples leaves no examples"),
        ({"data": (x[:0], y[:0])}, ValueError, r"fit_population: train_data is empty \(0 examples\)"),
        ({"val_data": (np.zeros((5, 4), np.float32), np.zeros((5, 1), np.float32))}, ValueError,
         r"fit_population: val_data x has examples of shape \(4,\) but train_data x has \(3,\)"),
        ({"data": (np.where(np.arange(N)[:, None] == 9, np.nan, x).astype(np.float32), y)}, ValueError,
         r"fit_population: train_data x has non-finite values \(NaN or Inf\) in 1 example\(s\), first at index 9"),
        ({"on_nonfinite": "ignore"}, ValueError, r"fit_population: on_nonfinite must be one of 'raise', 'stop', got 'ignore'"),
        ({"debug_nonfinite": True, "shared_order": True}, ValueError,
         r"fit_population: debug_nonfinite replays a member with its own shuffle; it needs shared_order=False"),
        ({"callbacks": [lambda epoch, ts, logs: None]}, TypeError,
         r"fit_population: each callback needs an on_population_epoch_end\(epoch, states, logs, trained\) method, "
         r"got function"),
        ({"callbacks": [jnn.train.EarlyStopping("loss")], "early_stopping": jnn.train.EarlyStopping("loss")},
         ValueError, r"fit_population: at most one EarlyStopping per run, got 2"),
        ({"callbacks": [jnn.train.EarlyStopping("val_loss")]}, ValueError,
         r"fit_population: early_stopping monitors 'val_loss', which is not among the logged metrics \['loss', 'lr'\]"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            run(**kwargs)
    assert epochs_run == []      # no case got as far as a training epoch
    labels = np.full((N,), 3, np.int32)   # class 3 of a 1-output model: rejected by the loss, before training
    with pytest.raises(ValueError, match=r"fit_population: train_data y does not suit the loss"):
        fit_population(lambda hp: jnn.dense(2), jnn.losses.softmax_cross_entropy, make_sgd, (x, labels),
                       hparams={"late_lr": jnp.array([0.1])}, key=jax.random.key(0), epochs=1, batch_size=BATCH)
    assert epochs_run == []


def test_regression_populations_log_no_accuracy_by_default():
    result = _run([0.05, 0.05], KEYS[:2], epochs=1)
    assert sorted(result.history) == ["loss", "lr"]


def test_check_data_false_skips_the_value_check_and_the_nan_then_stops_that_member():
    x, y = _data()
    x[9] = np.nan   # every member sees it: each goes non-finite in epoch 1 and keeps its initial state
    with pytest.warns(RuntimeWarning, match=r"fit_population: epoch 1 produced non-finite metrics for member\(s\) "
                                            r"\[0, 1\]: member 0: loss=nan"):
        result = fit_population(make_model, jnn.losses.mse, make_sgd, (x, y), hparams={"late_lr": jnp.array([0.1, 0.2])},
                                key=KEYS[:2], epochs=3, batch_size=BATCH, chunk_size=None, check_data=False)
    np.testing.assert_array_equal(result.nonfinite_epoch, [1, 1])
    np.testing.assert_array_equal(result.epochs_trained, [1, 1])       # nothing left to train: it ended there
    initial = init_population(make_model, make_sgd, {"late_lr": jnp.array([0.1, 0.2])}, KEYS[:2],
                              jax.ShapeDtypeStruct((BATCH, 3), jnp.float32))
    np.testing.assert_array_equal(result.train_states.params["w"], initial.params["w"])
    np.testing.assert_array_equal(result.train_states.step, [0, 0])


def test_fit_pbt_checks_its_arguments_before_the_first_step():
    from jnn.train.pbt import PBT, fit_pbt
    x, y = _data()
    pbt = PBT(space={"late_lr": (1e-3, 1.0)}, interval=1, monitor="loss")
    run = lambda **kw: fit_pbt(make_model, jnn.losses.mse, make_sgd, (x, y), hparams={"late_lr": jnp.array([0.1, 0.2])},
                               key=jax.random.key(0), pbt=pbt, epochs=2, metrics={}, **{"batch_size": BATCH, **kw})
    with pytest.raises(ValueError, match=r"fit_pbt: batch_size must be a positive integer, got 0"):
        run(batch_size=0)
    with pytest.raises(ValueError, match=r"fit_pbt: val_split=0.001 of 64 examples leaves no examples"):
        run(val_split=0.001)
    with pytest.raises(ValueError, match=r"fit_pbt: val_data x has examples of shape \(4,\) but train_data x has \(3,\)"):
        run(val_data=(np.zeros((5, 4), np.float32), np.zeros((5, 1), np.float32)))


def test_the_nonfinite_warning_points_at_the_callers_line():
    with pytest.warns(RuntimeWarning, match=r"^fit_population: epoch 3 produced non-finite") as record:
        fit_population(make_model, jnn.losses.mse, make_sgd, _data(), hparams={"late_lr": jnp.array([np.nan])},
                       key=KEYS[:1], epochs=3, batch_size=BATCH, chunk_size=None)
    assert [w.filename for w in record] == [__file__]
