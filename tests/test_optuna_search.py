"""jnn.train.optuna_search: an Optuna study's sampler and pruner driving vectorized populations."""
import re

import jax
import numpy as np
import optax
import pytest

import jnn

optuna = pytest.importorskip("optuna")
LOSS = jnn.losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def digits():
    x, y = jnn.data.load_digits()
    return x[:600], y[:600]


def make_model(hp):
    return jnn.serial(jnn.flatten(), jnn.dense(hp["width"]), jnn.relu(), jnn.dense(10))


def make_adam(hp):
    return optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"])


SPACE = {"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
         "width": optuna.distributions.CategoricalDistribution([8, 16])}


def test_trials_train_with_the_asked_values_and_are_told_their_best_score(digits):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    done = jnn.train.optuna_search(make_model, LOSS, make_adam, digits, study=study, space=SPACE, trials=8,
                                   population_size=4, static=["width"], key=jax.random.key(0), epochs=3,
                                   batch_size=32, val_split=0.25)
    assert len(done) == len(study.trials) == 8
    for trial, result in done:
        assert result.hparams == trial.params
        np.testing.assert_allclose(result.history["lr"], trial.params["lr"], rtol=1e-6)  # trained with it
        assert result.train_state.params["dense_0"]["w"].shape == (64, trial.params["width"])
        frozen = study.trials[trial.number]
        assert frozen.value == pytest.approx(float(np.max(result.history["val_accuracy"])))
        assert frozen.intermediate_values == pytest.approx(dict(enumerate(result.history["val_accuracy"], 1)))
    assert study.best_value > 0.8  # chance is 0.1


def test_the_pruner_stops_members_as_early_stopping_does(digits):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1),
                                pruner=optuna.pruners.ThresholdPruner(lower=0.3))
    space = {"lr": optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True),
             "width": optuna.distributions.CategoricalDistribution([16])}
    done = jnn.train.optuna_search(make_model, LOSS, make_adam, digits, study=study, space=space, trials=6,
                                   population_size=6, static=["width"], key=jax.random.key(1), epochs=4,
                                   batch_size=16, val_split=0.25)
    states = [study.trials[t.number].state for t, _ in done]
    for (trial, result), state in zip(done, states):
        below = result.history["val_accuracy"] < 0.3
        if state == optuna.trial.TrialState.PRUNED:  # pruned at its first epoch below 0.3, trained no further
            assert below[-1] and not below[:-1].any() and result.stopped_early == (len(below) < 4)
        else:
            assert not below.any() and len(below) == 4
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states


def test_without_prune_no_trial_reports_or_is_pruned(digits):
    """A pruner that would prune every trial (accuracy is below 2) is not consulted with prune=False."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True),
             "width": optuna.distributions.CategoricalDistribution([8])}
    done = jnn.train.optuna_search(make_model, LOSS, make_adam, digits, study=study, space=space, trials=2,
                                   population_size=2, static=["width"], key=jax.random.key(2), epochs=2,
                                   batch_size=64, val_split=0.25, prune=False)
    assert [study.trials[t.number].state for t, _ in done] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(study.trials[t.number].intermediate_values == {} and len(r.history["val_accuracy"]) == 2
               for t, r in done)


def _search(digits, **kw):
    study = kw.pop("study", None) or optuna.create_study(direction="maximize")
    args = {"study": study, "space": SPACE, "trials": 2, "population_size": 2, "static": ["width"],
            "key": jax.random.key(0), "epochs": 1, "batch_size": 32, "val_split": 0.25, **kw}
    return study, jnn.train.optuna_search(make_model, LOSS, make_adam, digits, **args)


@pytest.mark.parametrize("kw,error,message", [
    ({"monitor": "val_acc"}, ValueError, "optuna_search: monitor 'val_acc' is not among the logged metrics "
     "['accuracy', 'loss', 'lr', 'val_accuracy', 'val_loss']"),
    ({"val_split": 0.0}, ValueError, "optuna_search: monitor 'val_accuracy' is not among the logged metrics "
     "['accuracy', 'loss', 'lr'] (val_* metrics need val_data or val_split)"),
    ({"metrics": {}, "monitor": "accuracy"}, ValueError, "optuna_search: monitor 'accuracy' is not among the "
     "logged metrics ['loss', 'lr', 'val_loss']"),
    ({"study": "tpe"}, TypeError, "optuna_search: study must be an optuna.Study (optuna.create_study(...)), got str"),
    ({"study": optuna.create_study(directions=["maximize", "minimize"])}, ValueError,
     "optuna_search: study must have one objective (the monitored metric), got 2 directions"),
    ({"space": {}}, ValueError, "optuna_search: space must be a non-empty dict {name: optuna.distributions.*}, "
     "got {}"),
    ({"space": {"lr": (1e-3, 1e-1), "width": SPACE["width"]}}, ValueError,
     "optuna_search: space['lr'] must be an optuna distribution (e.g. optuna.distributions.FloatDistribution("
     "1e-4, 1e-1, log=True)), got (0.001, 0.1)"),
    ({"trials": True}, ValueError, "optuna_search: trials must be a positive integer, got True"),
    ({"population_size": 0}, ValueError, "optuna_search: population_size must be a positive integer, got 0"),
])
def test_misuse_is_refused_before_any_trial_is_asked(digits, kw, error, message):
    study = kw.get("study") if isinstance(kw.get("study"), optuna.Study) else optuna.create_study()
    kw.setdefault("study", study)
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        _search(digits, **kw)
    assert study.trials == []


@pytest.mark.filterwarnings("ignore:Fixed parameter lr with value 1e\\+30 is out of range")
def test_a_trial_that_diverges_from_its_first_epoch_is_told_failed(digits):
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True),
             "width": optuna.distributions.CategoricalDistribution([8])}
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"lr": 1e-3, "width": 8})
    study.enqueue_trial({"lr": 1e30, "width": 8}, skip_if_exists=False)  # outside the space: Optuna allows it
    with pytest.warns(RuntimeWarning, match=r"epoch 1 produced non-finite metrics for member\(s\) \[1\]") as caught:
        study, done = _search(digits, study=study, space=space, monitor="val_loss", epochs=2)
    others = [str(w.message) for w in caught if "non-finite metrics" not in str(w.message)
              and "Fixed parameter lr" not in str(w.message)]
    assert others == []  # told as failed outright: no all-NaN reduction, no NaN value for Optuna to refuse
    states = [study.trials[t.number].state for t, _ in done]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert not np.isfinite(done[1][1].history["val_loss"]).any() and np.isfinite(done[0][1].history["val_loss"]).all()
