"""jnn.train.pbt: the exploit/explore step on a hand-built population, and fit_pbt against
fit_population (a member PBT never touches trains bit for bit as without PBT)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.pbt import PBT, _pbt_epoch, exploit_explore, explore_key, fit_pbt
from jnn.train.population import fit_population, init_population, make_population_epoch, member_keys

LOSS = jnn.losses.softmax_cross_entropy
BATCH, N_TRAIN = 32, 480
CALLS = []


@pytest.fixture(scope="module")
def digits():
    x, y = jnn.data.load_digits()
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:N_TRAIN + 200], y[N_TRAIN:N_TRAIN + 200])


def make_model(hp):
    CALLS.append(1)
    return jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dropout(hp["rate"]), jnn.dense(10))


def make_adamw(hp):
    return optax.inject_hyperparams(optax.adamw)(learning_rate=hp["lr"], weight_decay=hp["wd"])


def raw(tree):
    is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
    return jax.tree_util.tree_map(lambda a: jax.random.key_data(a) if is_key(a) else a, tree)


def hand_built(n=8):
    """Member i: params w = i, step = 10 i, lr = 0.01 (i + 1), its own key."""
    hparams = {"lr": 0.01 * jnp.arange(1, n + 1, dtype=jnp.float32), "wd": jnp.full(n, 1e-4)}
    opt = lambda hp: optax.inject_hyperparams(optax.adamw)(learning_rate=hp["lr"], weight_decay=hp["wd"])
    params = {"w": jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((n, 3))}
    opt_state = jax.vmap(lambda hp, p: opt(hp).init(p))(hparams, params)
    states = jnn.train.TrainState(params, {}, opt_state, 10 * jnp.arange(n, dtype=jnp.int32),
                                  member_keys(jax.random.key(0), n))
    return hparams, states, opt


SCORES = jnp.array([0.5, 0.9, jnp.nan, 0.1, 0.8, 0.3, 0.7, 0.2])  # best 1, 4; worst 2 (NaN), 3


def test_exploit_explore_copies_the_worst_from_the_best_and_perturbs_within_bounds():
    hparams, states, opt = hand_built()
    pbt = PBT(space={"lr": (1e-3, 0.06)}, fraction=0.25, monitor="val_accuracy")
    step = jax.jit(lambda k: exploit_explore(pbt, hparams, states, SCORES, k, make_optimizer=opt))
    donors_seen, factors_seen = set(), set()
    for seed in range(40):
        new_hp, new, source = step(jax.random.key(seed))
        source = np.asarray(source)
        untouched = [0, 1, 4, 5, 6, 7]
        np.testing.assert_array_equal(source[untouched], untouched)
        assert set(source[[2, 3]]) <= {1, 4}
        for i in (2, 3):
            j = source[i]
            donors_seen.add(int(j))
            np.testing.assert_array_equal(new.params["w"][i], np.full(3, float(j)))  # the donor's weights
            assert int(new.step[i]) == 10 * j
            lr = float(new_hp["lr"][i])
            donor_lr = 0.01 * (j + 1)
            factor = lr / donor_lr
            assert lr == pytest.approx(min(donor_lr * 1.2, 0.06)) or lr == pytest.approx(donor_lr * 0.8)
            factors_seen.add(round(factor, 3))
            # the optimizer will use the new learning rate: inject_hyperparams' copy was refreshed
            assert float(new.opt_state.hyperparams["learning_rate"][i]) == pytest.approx(lr)
            assert float(new_hp["wd"][i]) == pytest.approx(1e-4)
        # every untouched member, and every member's key, is returned bit for bit
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a)[untouched],
                                                                          np.asarray(b)[untouched]),
                               raw(new), raw(states))
        np.testing.assert_array_equal(jax.random.key_data(new.key), jax.random.key_data(states.key))
        np.testing.assert_array_equal(new_hp["lr"][np.asarray(untouched)], hparams["lr"][np.asarray(untouched)])
    assert donors_seen == {1, 4}
    assert {0.8, 1.2} <= factors_seen or {0.8, 1.2, round(0.06 / 0.05, 3)} >= factors_seen


def test_min_mode_and_resampling_stay_in_bounds():
    hparams, states, opt = hand_built()
    pbt = PBT(space={"lr": (1e-4, 1e-1, "log")}, fraction=0.5, monitor="loss", resample_probability=1.0)
    _, _, source = exploit_explore(pbt, hparams, states, SCORES, jax.random.key(0))
    # minimizing: the best half is 3, 7, 5, 0 (NaN still ranks last) and the worst 6, 4, 1, 2
    assert set(np.asarray(source)[[1, 2, 4, 6]]) <= {0, 3, 5, 7}
    np.testing.assert_array_equal(np.asarray(source)[[0, 3, 5, 7]], [0, 3, 5, 7])
    draws = jax.vmap(lambda k: exploit_explore(pbt, hparams, states, SCORES, k)[0]["lr"][jnp.array([1, 2, 4, 6])])(
        jax.random.split(jax.random.key(1), 500)).ravel()
    assert float(draws.min()) >= 1e-4 and float(draws.max()) <= 1e-1
    # log-uniform: about a third of the draws in each decade [1e-4, 1e-3), [1e-3, 1e-2), [1e-2, 1e-1]
    decades = np.histogram(np.log10(np.asarray(draws)), bins=[-4, -3, -2, -1])[0] / draws.size
    np.testing.assert_allclose(decades, [1 / 3] * 3, atol=0.06)


SPACE_MESSAGE = ("PBT: space['lr'] must be (low, high) or (low, high, 'log'): finite numbers with low <= high "
                 "(and low > 0 for 'log'), got ")


@pytest.mark.parametrize("kw,error,message", [
    ({"space": {}}, ValueError, "PBT: space is empty; give {name: (low, high)} for each explored hyperparameter"),
    ({"space": ["lr"]}, TypeError, "PBT: space must be a dict {name: (low, high)} or {name: (low, high, 'log')}, "
     "got list"),
    ({"space": None}, TypeError, "PBT: space must be a dict {name: (low, high)} or {name: (low, high, 'log')}, "
     "got NoneType"),
    ({"space": {1: (0.1, 1.0)}}, TypeError, "PBT: space names must be strings (hyperparameter names), got 1"),
    ({"space": {"lr": (0.0, 1.0, "log")}}, ValueError, SPACE_MESSAGE + "(0.0, 1.0, 'log')"),
    ({"space": {"lr": (1.0, 0.1)}}, ValueError, SPACE_MESSAGE + "(1.0, 0.1)"),
    ({"space": {"lr": (0.0, float("inf"))}}, ValueError, SPACE_MESSAGE + "(0.0, inf)"),
    ({"space": {"lr": (float("nan"), 1.0)}}, ValueError, SPACE_MESSAGE + "(nan, 1.0)"),
    ({"space": {"lr": ("a", "b")}}, ValueError, SPACE_MESSAGE + "('a', 'b')"),
    ({"space": {"lr": 0.1}}, ValueError, SPACE_MESSAGE + "(0.1,)"),
    ({"space": {"lr": (0.1, 1.0, "linear")}}, ValueError, SPACE_MESSAGE + "(0.1, 1.0, 'linear')"),
    ({"fraction": 0.7}, ValueError, "PBT: fraction must be a number in (0, 0.5], got 0.7"),
    ({"fraction": "0.2"}, ValueError, "PBT: fraction must be a number in (0, 0.5], got '0.2'"),
    ({"interval": 0}, ValueError, "PBT: interval must be a positive integer, got 0"),
    ({"interval": True}, ValueError, "PBT: interval must be a positive integer, got True"),
    ({"interval": 2.0}, ValueError, "PBT: interval must be a positive integer, got 2.0"),
    ({"monitor": 3}, ValueError, "PBT: monitor must be the name of a logged metric (a string), got 3"),
    ({"mode": "best"}, ValueError, "PBT: mode must be 'min', 'max' or 'auto', got 'best'"),
    ({"factors": 1.2}, ValueError, "PBT: factors must be a non-empty tuple of positive finite numbers, got 1.2"),
    ({"factors": ()}, ValueError, "PBT: factors must be a non-empty tuple of positive finite numbers, got ()"),
    ({"factors": (0.8, -1.0)}, ValueError,
     "PBT: factors must be a non-empty tuple of positive finite numbers, got (0.8, -1.0)"),
    ({"factors": ("a",)}, ValueError, "PBT: factors must be a non-empty tuple of positive finite numbers, got ('a',)"),
    ({"resample_probability": 1.5}, ValueError, "PBT: resample_probability must be a number in [0, 1], got 1.5"),
    ({"resample_probability": float("nan")}, ValueError,
     "PBT: resample_probability must be a number in [0, 1], got nan"),
])
def test_pbt_options_are_checked(kw, error, message):
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        PBT(**{"space": {"lr": (0.1, 1.0)}, **kw})


def test_pbt_options_normalized_survive_replace():
    pbt = PBT(space={"wd": [1e-6, 1e-2, "log"], "lr": (1, 2)}, factors=[0.5, 2])
    assert pbt.space == (("lr", (1.0, 2.0, False)), ("wd", (1e-6, 1e-2, True))) and pbt.factors == (0.5, 2.0)
    assert dataclasses.replace(pbt, interval=2) == PBT(space=pbt.space, interval=2, factors=(0.5, 2))


def test_exploit_explore_arguments_are_checked():
    hparams, states, _ = hand_built()
    with pytest.raises(ValueError, match=r"exploit_explore: PBT space names \['rate'\] are not hparams"):
        exploit_explore(PBT(space={"rate": (0.0, 0.5)}), hparams, states, SCORES, jax.random.key(0))
    message = "exploit_explore: scores must hold one value per member, shape (8,), got shape (7,)"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        exploit_explore(PBT(space={"lr": (1e-4, 1e-1)}), hparams, states, SCORES[:7], jax.random.key(0))
    message = "exploit_explore: states must be the members' stacked jnn.train.TrainState, got dict"
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
        exploit_explore(PBT(space={"lr": (1e-4, 1e-1)}), hparams, {}, SCORES, jax.random.key(0))


@pytest.mark.parametrize("kw,message", [
    ({"epochs": True}, "fit_pbt: epochs must be a positive integer, got True"),
    ({"hparams": {"lr": jnp.array([0.5, 1e-3])}},
     "fit_pbt: hparams['lr'] must lie within PBT space bounds [1e-05, 0.1]; member 0 has 0.5"),
    ({"hparams": {"lr": jnp.array([1e-3, jnp.inf])}},
     "fit_pbt: hparams['lr'] must lie within PBT space bounds [1e-05, 0.1]; member 1 has inf"),
    ({"chunk_size": 0}, "fit_pbt: chunk_size must be a positive integer or None, got 0"),
    ({"chunk_size": True}, "fit_pbt: chunk_size must be a positive integer or None, got True"),
    ({"shared_order": "yes"}, "fit_pbt: shared_order must be True or False, got 'yes'"),
])
def test_fit_pbt_arguments_are_checked_before_training(digits, kw, message):
    train, _ = digits
    lr = kw.pop("hparams", {"lr": jnp.array([1e-3, 1e-2])})["lr"]
    kwargs = {"hparams": {"lr": lr, "wd": jnp.full(2, 1e-4), "rate": jnp.zeros(2)}, "key": jax.random.key(0),
              "epochs": 2, "batch_size": BATCH, **kw}
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        fit_pbt(make_model, LOSS, make_adamw, train, pbt=PBT(space={"lr": (1e-5, 0.1, "log")}, monitor="loss"),
                **kwargs)


def test_a_member_with_a_nan_learning_rate_ranks_last_and_is_replaced(digits):
    """NaN is a fault, not a misuse: the member diverges, ranks last at the first exploit step,
    and continues from a donor's state and (perturbed) hyperparameters, finite from then on."""
    train, val = digits
    hparams = {"lr": jnp.array([3e-3, jnp.nan, 1e-2, 1e-3]), "wd": jnp.full(4, 1e-4), "rate": jnp.zeros(4)}
    pbt = PBT(space={"lr": (1e-5, 0.1, "log")}, interval=1, fraction=0.25, monitor="val_loss")
    result = fit_pbt(make_model, LOSS, make_adamw, train, hparams=hparams, key=jax.random.key(2), pbt=pbt,
                     epochs=2, batch_size=BATCH, val_data=val)
    assert np.isnan(result.history["val_loss"][0, 1]) and np.isfinite(result.history["val_loss"][0, [0, 2, 3]]).all()
    assert result.lineage[0, 1] != 1 and all(result.lineage[0, i] == i for i in (0, 2, 3))
    donor = result.lineage[0, 1]
    assert np.isfinite(result.hparams["lr"]).all()
    assert result.hparams["lr"][1] / hparams["lr"][donor] == pytest.approx(0.8, rel=1e-5) or \
        result.hparams["lr"][1] / hparams["lr"][donor] == pytest.approx(1.2, rel=1e-5)
    assert np.isfinite(result.history["loss"][1]).all()

def test_hparams_at_the_float32_bounds_are_accepted(digits):
    train, _ = digits
    hparams = {"lr": jnp.array([0.1, 1e-3], jnp.float32), "wd": jnp.full(2, 1e-4), "rate": jnp.array([0.0, 0.6])}
    pbt = PBT(space={"lr": (1e-5, 0.1, "log"), "rate": (0.0, 0.6)}, monitor="loss")
    result = fit_pbt(make_model, LOSS, make_adamw, train, hparams=hparams, key=jax.random.key(0), pbt=pbt, epochs=1,
                     batch_size=BATCH)
    assert result.history["loss"].shape == (1, 2)


def population(n=4):
    return {"lr": jnp.array([3e-3, 1e-4, 1e-2, 3e-5][:n]), "wd": jnp.full(n, 1e-4),
            "rate": jnp.array([0.0, 0.1, 0.2, 0.3][:n])}


@pytest.mark.parametrize("shared_order", [False, True])
def test_members_pbt_never_touches_equal_the_population_without_pbt_bit_for_bit(digits, shared_order):
    train, val = digits
    hparams, keys = population(), member_keys(jax.random.key(3), 4)
    pbt = PBT(space={"lr": (1e-5, 0.1, "log"), "rate": (0.0, 0.5)}, interval=1, fraction=0.25)
    kwargs = dict(key=keys, epochs=3, batch_size=BATCH, val_data=val, shared_order=shared_order)
    result = fit_pbt(make_model, LOSS, make_adamw, train, hparams=hparams, pbt=pbt, **kwargs)
    plain = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, **kwargs)
    assert result.lineage.shape == (2, 4) and list(result.lineage_epochs) == [1, 2]
    untouched = [i for i in range(4) if (result.lineage[:, i] == i).all()]
    exploited = [i for i in range(4) if i not in untouched]
    assert untouched and exploited  # with these learning rates the lr=3e-5 member is copied over
    for i in untouched:
        for part in ("params", "opt_state"):
            jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[i], b[i]),
                                   getattr(result.train_states, part), getattr(plain.train_states, part))
        np.testing.assert_array_equal(result.history["val_loss"][:, i], plain.history["val_loss"][:, i])
    # the schedules: an exploited member trains on with its donor's values times 0.8 or 1.2
    for s, epoch in enumerate(result.lineage_epochs):
        for i in np.flatnonzero(result.lineage[s] != np.arange(4)):
            j = result.lineage[s, i]
            ratio = result.hparam_history["lr"][epoch, i] / result.hparam_history["lr"][epoch - 1, j]
            assert ratio == pytest.approx(0.8, rel=1e-5) or ratio == pytest.approx(1.2, rel=1e-5)
    # the learning rate the optimizer used (logged from its state) is the schedule's
    np.testing.assert_allclose(result.history["lr"], result.hparam_history["lr"], rtol=1e-6)


def test_fit_pbt_is_the_population_epoch_then_exploit_explore(digits):
    """Replicates 2 epochs of fit_pbt (interval 1) from the public pieces."""
    train, val = digits
    hparams, keys = population(), member_keys(jax.random.key(4), 4)
    pbt = PBT(space={"lr": (1e-5, 0.1, "log")}, interval=1, monitor="val_loss")
    result = fit_pbt(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, pbt=pbt, epochs=2,
                     batch_size=BATCH, val_data=val)
    x, y = map(jnp.asarray, train)
    epoch = jax.jit(make_population_epoch(make_model, LOSS, make_adamw, N_TRAIN, BATCH))
    states = init_population(make_model, make_adamw, hparams, keys,
                             jax.ShapeDtypeStruct((BATCH, *x.shape[1:]), x.dtype))
    states, _ = epoch(hparams, states, jnp.ones(4, bool), (x, y))
    val_loss = jnp.array([jnn.train.make_eval_fn(make_model({k: v[i] for k, v in hparams.items()}), LOSS)(
        jax.tree_util.tree_map(lambda a: a[i], states.params), {}, tuple(map(jnp.asarray, val)))["loss"]
        for i in range(4)])
    hp, states, source = exploit_explore(pbt, hparams, states, val_loss, explore_key(keys, 1),
                                         make_optimizer=make_adamw)
    np.testing.assert_array_equal(source, result.lineage[0])
    np.testing.assert_allclose(hp["lr"], result.hparam_history["lr"][1], rtol=1e-6)
    states, _ = epoch(hp, states, jnp.ones(4, bool), (x, y))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           states.params, result.train_states.params)


def test_nothing_recompiles_across_intervals_and_runs(digits):
    train, val = digits
    pbt = PBT(space={"lr": (1e-5, 0.1, "log")}, interval=2, monitor="val_accuracy")
    run = lambda epochs: fit_pbt(make_model, LOSS, make_adamw, train, hparams=population(), key=jax.random.key(5),
                                 pbt=pbt, epochs=epochs, batch_size=BATCH, val_data=val)
    run(3)
    calls, programs = len(CALLS), _pbt_epoch._cache_size()
    result = run(7)
    assert len(CALLS) == calls and _pbt_epoch._cache_size() == programs  # nothing traced again
    assert list(result.lineage_epochs) == [2, 4, 6]


def test_pbt_rescues_members_with_a_useless_learning_rate(digits):
    """Members at lr 3e-5 barely learn in 6 epochs; PBT replaces them with copies of good ones."""
    train, val = digits
    hparams = {"lr": jnp.array([1e-2, 3e-5, 3e-5, 3e-5]), "wd": jnp.full(4, 1e-4), "rate": jnp.zeros(4)}
    kwargs = dict(key=jax.random.key(6), epochs=6, batch_size=BATCH, val_data=val)
    pbt = PBT(space={"lr": (1e-5, 0.1, "log")}, interval=2, fraction=0.5)
    with_pbt = fit_pbt(make_model, LOSS, make_adamw, train, hparams=hparams, pbt=pbt, **kwargs)
    without = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, **kwargs)
    assert without.history["val_accuracy"][-1, 1:].max() < 0.6
    assert with_pbt.history["val_accuracy"][-1].min() > 0.75
    assert (with_pbt.lineage[0, 1:] == 0).sum() >= 1  # copied from the one good member


def test_fit_pbt_errors_name_the_problem(digits):
    train, val = digits
    pbt = PBT(space={"lr": (1e-5, 0.1)})
    kwargs = dict(key=jax.random.key(0), epochs=1, batch_size=BATCH)
    with pytest.raises(ValueError, match=r"fit_pbt: PBT monitors 'val_accuracy', which is not among the logged"):
        fit_pbt(make_model, LOSS, make_adamw, train, hparams=population(), pbt=pbt, **kwargs)
    with pytest.raises(ValueError, match=r"fit_pbt: PBT explores 'lr', so hparams needs a float array"):
        fit_pbt(make_model, LOSS, make_adamw, train, hparams={"wd": jnp.ones(2)}, pbt=pbt, val_data=val, **kwargs)
    with pytest.raises(TypeError, match="fit_pbt: pbt must be a jnn.train.pbt.PBT, got dict"):
        fit_pbt(make_model, LOSS, make_adamw, train, hparams=population(), pbt={}, **kwargs)
