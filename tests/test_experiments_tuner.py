"""The hyperparameter tuner on a tiny grid (the real search is recorded in benchmarks/RESULTS.md)."""
import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from experiments_path import load

tuner = load("hyperparameter_tuner")


def test_tuner_ranks_trials_by_validation_and_tests_the_best_once(tmp_path, capsys):
    config = tuner.Config(method="grid", learning_rates=(3e-3, 3e-2), dropouts=(0.0,), batch_sizes=(100,),
                          depths=(1,), widths=(16, 32), epochs=3, patience=2, train_limit=2000,
                          out=str(tmp_path))
    result = tuner.main(config)
    rows = result["rows"]
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)
    assert {(r["learning_rate"], r["width"]) for r in rows} == {(a, b) for a in (3e-3, 3e-2) for b in (16, 32)}
    assert result["test_accuracy"] > 0.6  # chance is 0.1

    # The reported validation accuracy of the best trial is its restored state's accuracy on the
    # held-out split, recomputed here independently of the search: its population (the trials of
    # its width, sharing one batch order) retrained for its best epoch count, then predicted.
    x, y, _, _ = tuner.load_mnist_standardized(2000)
    keys = jax.random.split(jax.random.key(config.seed), 4)
    train, (x_val, y_val) = jnn.train.split_validation(x, y, config.val_split, jax.random.split(keys[0])[1])
    best = rows[0]
    group = sorted(r["trial"] for r in rows if r["width"] == best["width"])
    by_trial = {r["trial"]: r for r in rows}
    rerun = jnn.train.search(tuner.make_model, jnn.losses.softmax_cross_entropy, tuner.make_optimizer, train,
                             configs=[{f: by_trial[t][f] for f in tuner.FIELDS} for t in group],
                             static=tuner.STATIC, key=keys[jnp.asarray(group)], val_data=(x_val, y_val),
                             epochs=best["best_epoch"], shared_order=True)[group.index(best["trial"])]
    logits = jnn.train.predict(tuner.make_model(best), rerun.train_state.params, rerun.train_state.state, x_val)
    np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == y_val), best["val_accuracy"], atol=1e-6)

    with open(tmp_path / "hyperparameter_tuner" / "trials.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in saved] == [r["trial"] for r in rows]
    assert [float(r["val_accuracy"]) for r in saved] == pytest.approx([r["val_accuracy"] for r in rows])
    out = capsys.readouterr().out
    assert "2 populations" in out and "test set used once" in out


def test_random_search_draws_within_the_ranges():
    configs = tuner.configurations(tuner.Config(trials=50, lr_min=1e-4, lr_max=1e-2, dropout_max=0.4,
                                                batch_sizes=(64, 128), depths=(1, 3), widths=(32,)))
    assert len(configs) == 50
    assert all(1e-4 <= c["learning_rate"] <= 1e-2 and 0 <= c["dropout"] <= 0.4 for c in configs)
    assert {c["batch_size"] for c in configs} == {64, 128} and {c["depth"] for c in configs} == {1, 3}
    assert configs == tuner.configurations(tuner.Config(trials=50, lr_min=1e-4, lr_max=1e-2, dropout_max=0.4,
                                                        batch_sizes=(64, 128), depths=(1, 3), widths=(32,)))


def test_tuner_rejects_bad_options():
    with pytest.raises(ValueError, match="--method must be random or grid, got 'bayes'"):
        tuner.configurations(tuner.Config(method="bayes"))
    with pytest.raises(ValueError, match="--depths must be positive integers"):
        tuner.configurations(tuner.Config(depths=(0,)))
    with pytest.raises(ValueError, match="dropout rates must be in"):
        tuner.configurations(tuner.Config(method="grid", dropouts=(1.0,)))


def test_tpe_sampler_smoke_trials_within_ranges_and_the_best_learns(tmp_path):
    pytest.importorskip("optuna")
    config = tuner.Config(sampler="tpe", trials=4, population=2, lr_min=1e-3, lr_max=3e-2, dropout_max=0.2,
                          batch_sizes=(100,), depths=(1,), widths=(16,), epochs=2, patience=0, train_limit=1000,
                          out=str(tmp_path))
    result = tuner.main(config)
    rows = result["rows"]
    assert len(rows) == 4 and all(1e-3 <= r["learning_rate"] <= 3e-2 and 0 <= r["dropout"] <= 0.2 for r in rows)
    assert len({r["learning_rate"] for r in rows}) == 4  # four different proposals
    assert result["test_accuracy"] > 0.5  # chance is 0.1
    with pytest.raises(ValueError, match="--sampler must be tpe"):
        tuner.main(tuner.Config(sampler="cmaes"))
