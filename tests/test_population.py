"""jnn.train.population: each member equals the same model trained alone with jnn.train.fit.

The population tests share make_model/make_adamw/hparams structure and shapes, so they share
compiled programs (fit_population caches them across calls); each fit_alone compiles its own.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.population import fit_population, member_keys, shared_order_key
from jnn.train.tuning import search

LOSS = jnn.losses.softmax_cross_entropy
BATCH, N_TRAIN = 32, 480
STEPS = N_TRAIN // BATCH
CALLS = []  # make_model calls: inside fit_population they happen only while tracing


@pytest.fixture(scope="module")
def digits():
    x, y = jnn.data.load_digits()
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:N_TRAIN + 200], y[N_TRAIN:N_TRAIN + 200])


def make_model(hp):
    CALLS.append(1)
    return jnn.serial(jnn.flatten(), jnn.dense(hp.get("width", 16)), jnn.relu(),
                      jnn.dropout(hp.get("rate", 0.0)), jnn.dense(10))


def make_adamw(hp):
    return optax.inject_hyperparams(optax.adamw)(learning_rate=hp["lr"], weight_decay=hp.get("wd", 1e-4))


def make_sgd(hp):
    return optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])


def population(lr, wd=(1e-4, 1e-4, 1e-4), rate=(0.0, 0.0, 0.0)):
    return {"lr": jnp.array(lr), "wd": jnp.array(wd), "rate": jnp.array(rate)}


def scalars(hparams, i):
    return {k: float(v[i]) for k, v in hparams.items()}


def raw(tree):
    """Typed PRNG keys as their uint32 data, so a whole TrainState compares with NumPy."""
    is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
    return jax.tree_util.tree_map(lambda a: jax.random.key_data(a) if is_key(a) else a, tree)


def assert_trees_close(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


def fit_alone(hp, key, train, val, **kwargs):
    return jnn.train.fit(make_model(hp), LOSS, make_adamw(hp), train, key=key, batch_size=BATCH,
                         val_data=val, verbose=0, **kwargs)


def test_members_equal_fit_alone_over_seeds_learning_rates_and_dropout_rates(digits):
    train, val = digits
    hparams = population(lr=[1e-2, 3e-3, 1e-2], wd=[1e-4, 1e-2, 0.0], rate=[0.0, 0.2, 0.5])
    keys = jax.vmap(jax.random.key)(jnp.array([7, 8, 9]))  # init seeds 7, 8, 9
    result = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, epochs=3,
                            batch_size=BATCH, val_data=val)
    assert result.history["loss"].shape == result.history["val_accuracy"].shape == (3, 3)
    np.testing.assert_array_equal(result.epochs_trained, [3, 3, 3])
    assert result.best_epoch is None and not result.stopped_early.any()
    w = result.train_states.params["dense_0"]["w"]
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[0], w[2])  # the members really differ
    for i in (1, 2):  # (a member with rate 0.0 is compared with fit in the restore-best test)
        alone = fit_alone(scalars(hparams, i), keys[i], train, val, epochs=3)
        member = result.member(i)
        assert_trees_close(member.train_state.params, alone.train_state.params)
        assert_trees_close(member.train_state.opt_state, alone.train_state.opt_state)
        assert int(member.train_state.step) == int(alone.train_state.step) == 3 * STEPS
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            np.testing.assert_allclose(member.history[name], alone.history[name], rtol=1e-5, atol=1e-6)
        assert member.hparams == pytest.approx(scalars(hparams, i))
    # chunk_size=1: the members one after another in a lax.map, unbatched: the same members, all 3
    chunked = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, epochs=3,
                             batch_size=BATCH, val_data=val, chunk_size=1)
    assert_trees_close(chunked.train_states.params, result.train_states.params)
    np.testing.assert_allclose(chunked.history["val_loss"], result.history["val_loss"], rtol=1e-5)
    # members="loop": the members one after another, each stepwise: the same members and logs
    looped = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, epochs=3,
                            batch_size=BATCH, val_data=val, members="loop")
    assert_trees_close(raw(looped.train_states), raw(result.train_states))
    assert sorted(looped.history) == sorted(result.history)
    for name, values in result.history.items():
        np.testing.assert_allclose(looped.history[name], values, rtol=1e-5, atol=1e-6)


def test_shared_order_members_equal_a_member_trained_alone_on_that_order(digits):
    """shared_order=True: every member trains on epoch_order(shared_order_key(keys, e)) batches;
    member i equals its own model and optimizer stepped alone through those batches."""
    train, _ = digits
    hparams = population(lr=[1e-2, 3e-3, 1e-2], wd=[1e-4, 1e-2, 0.0], rate=[0.0, 0.2, 0.5])
    keys = member_keys(jax.random.key(6), 3)
    result = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, epochs=2,
                            batch_size=BATCH, shared_order=True, metrics={})
    x, y = map(jnp.asarray, train)
    for i in range(3):
        hp = scalars(hparams, i)
        step = jnn.train.make_train_step(make_model(hp), LOSS, make_adamw(hp), metrics={})
        epoch = jax.jit(jnn.train.make_train_epoch(step, N_TRAIN, BATCH))
        ts = jnn.train.init_train_state(make_model(hp), make_adamw(hp), jax.random.split(keys[i])[0],
                                        jax.ShapeDtypeStruct((BATCH, *x.shape[1:]), x.dtype))
        for e in (1, 2):
            order = jnn.train.epoch_order(shared_order_key(keys, e), N_TRAIN, BATCH)
            ts, _ = epoch(ts, (x, y), order)
        assert_trees_close(result.member(i).train_state.params, ts.params)
    # and the shared order is not any member's own shuffle: member 1 differs from its unshared self
    own = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=keys, epochs=2,
                         batch_size=BATCH, metrics={})
    assert not np.allclose(own.member(1).train_state.params["dense_1"]["w"],
                           result.member(1).train_state.params["dense_1"]["w"])


def test_early_stopping_freezes_a_diverging_member_while_the_others_train_on(digits):
    train, val = digits
    # member 1 does gradient ascent: val_loss rises after epoch 1, so with patience 2 it stops at epoch 3
    hparams = population(lr=[3e-3, -3e-3, 1e-2], rate=[0.0, 0.1, 0.2])
    stopping = jnn.train.EarlyStopping(monitor="val_loss", patience=2, restore_best=False)
    run = lambda epochs, members="auto": fit_population(make_model, LOSS, make_adamw, train, hparams=hparams,
                                                        key=jax.random.key(1), epochs=epochs, batch_size=BATCH,
                                                        val_data=val, early_stopping=stopping, members=members)
    short = run(3)
    calls = len(CALLS)
    result = run(7)
    assert len(CALLS) == calls  # nothing traced again: not per epoch, not when a member stops
    np.testing.assert_array_equal(result.stopped_early, [False, True, False])
    np.testing.assert_array_equal(result.epochs_trained, [7, 3, 7])
    np.testing.assert_array_equal(result.best_epoch, [7, 1, 7])
    assert np.isnan(result.history["val_loss"][3:, 1]).all() and np.isfinite(result.history["val_loss"][:, [0, 2]]).all()
    # after its stop epoch the member's state (params, optimizer state, step, key) never changed again
    np.testing.assert_array_equal(result.train_states.step, [7 * STEPS, 3 * STEPS, 7 * STEPS])
    jax.tree_util.tree_map(np.testing.assert_array_equal, raw(result.member(1).train_state),
                           raw(short.member(1).train_state))
    alone = fit_alone(scalars(hparams, 1), member_keys(jax.random.key(1), 3)[1], train, val, epochs=7,
                      early_stopping=stopping)
    assert (alone.best_epoch, alone.stopped_early, len(alone.history["loss"])) == (1, True, 3)
    assert_trees_close(result.member(1).train_state.params, alone.train_state.params)
    np.testing.assert_allclose(result.member(1).history["val_loss"], alone.history["val_loss"], rtol=1e-5)
    looped = run(7, "loop")   # a stopped member is skipped, its state kept
    np.testing.assert_array_equal(looped.epochs_trained, result.epochs_trained)
    np.testing.assert_array_equal(looped.train_states.step, result.train_states.step)
    assert_trees_close(looped.train_states.params, result.train_states.params)
    np.testing.assert_allclose(looped.history["val_loss"], result.history["val_loss"], rtol=1e-5, atol=1e-6)


def test_restore_best_returns_each_members_best_state(digits):
    train, val = digits
    hparams = population(lr=[-3e-3, 3e-3, 3e-2])
    stopping = jnn.train.EarlyStopping(monitor="val_accuracy", patience=1)
    result = fit_population(make_model, LOSS, make_adamw, train, hparams=hparams, key=jax.random.key(2),
                            epochs=5, batch_size=BATCH, val_data=val, early_stopping=stopping)
    assert result.best_epoch[0] < result.best_epoch[1]
    np.testing.assert_array_equal(result.train_states.step, result.best_epoch * STEPS)  # the best epoch's state
    alone = fit_alone(scalars(hparams, 0), result.keys[0], train, val, epochs=5, early_stopping=stopping)
    assert result.member(0).best_epoch == alone.best_epoch
    assert_trees_close(result.member(0).train_state.params, alone.train_state.params)


def test_search_groups_by_width_and_returns_results_in_input_order(digits):
    train, _ = digits
    configs = [{"width": 12, "lr": 0.1}, {"width": 8, "lr": 0.03}, {"width": 12, "lr": 0.03},
               {"width": 8, "lr": 0.1}]
    results = search(make_model, LOSS, make_sgd, train, configs=configs, static=["width"],
                     key=jax.random.key(4), epochs=2, batch_size=BATCH, val_split=0.25, metrics={})
    assert [r.hparams for r in results] == configs
    assert [r.train_state.params["dense_0"]["w"].shape for r in results] == [(64, c["width"]) for c in configs]
    keys = member_keys(jax.random.key(4), len(configs))
    # config 0 alone: fit with val_split makes the same split (from config 0's key) that search shares
    alone = jnn.train.fit(make_model(configs[0]), LOSS, make_sgd(configs[0]), train, key=keys[0], epochs=2,
                          batch_size=BATCH, val_split=0.25, metrics={}, verbose=0)
    assert_trees_close(results[0].train_state.params, alone.train_state.params)
    np.testing.assert_allclose(results[0].history["val_loss"], alone.history["val_loss"], rtol=1e-5)
    # within each group too, every result belongs to its config: its own learning rate and key
    for config, result, key in zip(configs, results, keys):
        np.testing.assert_allclose(result.history["lr"], [config["lr"]] * 2, rtol=1e-6)
        np.testing.assert_array_equal(jax.random.key_data(result.key), jax.random.key_data(key))


def test_search_batch_size_field_sets_each_groups_batch_size(digits):
    """A static batch_size field: each config trains as fit alone with that batch size."""
    train, val = digits
    configs = [{"batch_size": 48, "lr": 0.05}, {"batch_size": 96, "lr": 0.05}]
    results = search(make_model, LOSS, make_sgd, train, configs=configs, static=["batch_size"],
                     key=jax.random.key(5), epochs=2, val_data=val, metrics={})
    keys = member_keys(jax.random.key(5), 2)
    for config, result, key in zip(configs, results, keys):
        alone = jnn.train.fit(make_model(config), LOSS, make_sgd(config), train, key=key, epochs=2,
                              batch_size=config["batch_size"], val_data=val, metrics={}, verbose=0)
        assert_trees_close(result.train_state.params, alone.train_state.params)
        assert int(result.train_state.step) == 2 * (N_TRAIN // config["batch_size"])
    with pytest.raises(ValueError, match="search: batch_size changes array shapes, so it must be listed in static"):
        search(make_model, LOSS, make_sgd, train, configs=configs, key=jax.random.key(5), epochs=1)
    with pytest.raises(ValueError, match="search: batch_size is a config field; do not also pass batch_size="):
        search(make_model, LOSS, make_sgd, train, configs=configs, static=["batch_size"], key=jax.random.key(5),
               epochs=1, batch_size=32)


def test_errors_name_the_function_and_the_problem(digits):
    train, val = digits
    kwargs = dict(key=jax.random.key(0), epochs=1)
    with pytest.raises(ValueError, match=r"fit_population: every hparams array needs one value per member"):
        fit_population(make_model, LOSS, make_adamw, train, hparams={"lr": jnp.ones(2), "wd": jnp.ones(3)}, **kwargs)
    with pytest.raises(ValueError, match=r"fit_population: hparams\['lr'\] must be a 1-D numeric array"):
        fit_population(make_model, LOSS, make_adamw, train, hparams={"lr": jnp.ones((2, 2))}, **kwargs)
    with pytest.raises(ValueError, match=r"expected one key or a batch of 2 keys, got keys of shape \(3,\)"):
        fit_population(make_model, LOSS, make_adamw, train, hparams={"lr": jnp.ones(2)},
                       key=jax.random.split(jax.random.key(0), 3), epochs=1)
    with pytest.raises(ValueError, match=r"fit_population: with no hparams, pass one key per member"):
        fit_population(make_model, LOSS, make_adamw, train, **kwargs)
    with pytest.raises(ValueError, match=r"monitors 'val_loss', which is not among the logged metrics "
                                         r"\['accuracy', 'loss', 'lr'\]"):
        fit_population(make_model, LOSS, make_adamw, train, hparams={"lr": jnp.ones(2)},
                       early_stopping=jnn.train.EarlyStopping(), **kwargs)
    with pytest.raises(ValueError, match=r"fit_population: chunk_size must be a positive integer, None or 'auto', got 0"):
        fit_population(make_model, LOSS, make_adamw, train, hparams={"lr": jnp.ones(2)}, chunk_size=0, **kwargs)
    with pytest.raises(ValueError, match=r"search: every config needs the same fields"):
        search(make_model, LOSS, make_adamw, train, configs=[{"lr": 1.0}, {"lr": 1.0, "width": 3}], **kwargs)
    with pytest.raises(ValueError, match=r"search: static fields \['depth'\] are not config fields"):
        search(make_model, LOSS, make_adamw, train, configs=[{"lr": 1.0}], static=["depth"], **kwargs)
    with pytest.raises(ValueError, match=r"search: static field 'width' must be hashable"):
        search(make_model, LOSS, make_adamw, train, configs=[{"lr": 1.0, "width": {}}], static=["width"], **kwargs)



@pytest.mark.parametrize("call,error,message", [
    (lambda run, srch: run(hparams=[0.1, 0.2]), TypeError,
     "fit_population: hparams must be a dict {name: array [N]}, got list"),
    (lambda run, srch: run(shared_order=1), ValueError, "fit_population: shared_order must be one of True, False, "
     "'auto', got 1"),
    (lambda run, srch: run(callbacks=3), TypeError, "fit_population: callbacks must be a list of callbacks, got int"),
    (lambda run, srch: run(make_model=jnn.dense(3)), TypeError,
     "fit_population: make_model must be a function of the hyperparameters, got Layer"),
    (lambda run, srch: run(make_optimizer=optax.adam(1e-3)), TypeError,
     "fit_population: make_optimizer must be a function of the hyperparameters, got GradientTransformationExtraArgs"),
    (lambda run, srch: run(metrics={"acc": 1}), TypeError, "fit_population: metrics must map names to functions "
     "(predictions, targets) -> scalar; 'acc' maps to int"),
    (lambda run, srch: run(verbose="yes"), ValueError, "fit_population: verbose must be True or False, got 'yes'"),
    (lambda run, srch: run(prune="median"), TypeError, "fit_population: prune must be a function (epoch, history) "
     "-> bool [N], got str"),
    (lambda run, srch: srch(configs={"lr": 0.1}), TypeError,
     "search: configs must be a list of dicts (one per member), got dict"),
    (lambda run, srch: srch(configs=[0.1, 0.2]), TypeError,
     "search: configs must be a list of dicts (one per member); config 0 is a float"),
    (lambda run, srch: srch(configs=[{"lr": 0.1}, {"lr": "fast"}]), ValueError,
     "search: config 1's 'lr' must be a number (or list 'lr' in static for shape-changing or non-numeric values), "
     "got 'fast'"),
    (lambda run, srch: srch(configs=[{"lr": None}]), ValueError,
     "search: config 0's 'lr' must be a number (or list 'lr' in static for shape-changing or non-numeric values), "
     "got None"),
    (lambda run, srch: srch(configs=[{"lr": [0.1, 0.2]}]), ValueError,
     "search: config 0's 'lr' must be a number (or list 'lr' in static for shape-changing or non-numeric values), "
     "got [0.1, 0.2]"),
])
def test_misuse_of_populations_and_search_is_refused_before_training(digits, call, error, message):
    train, _ = digits
    common = dict(key=jax.random.key(0), epochs=1, batch_size=BATCH, metrics={})
    run = lambda make_model=make_model, make_optimizer=make_adamw, **kw: fit_population(
        make_model, LOSS, make_optimizer, train, **{
            "hparams": {"lr": jnp.full(2, 1e-3), "wd": jnp.full(2, 1e-4), "rate": jnp.zeros(2)}, **common, **kw})
    srch = lambda configs: search(make_model, LOSS, make_adamw, train, configs=[
        {"wd": 1e-4, "rate": 0.0, **c} if isinstance(c, dict) else c for c in configs]
        if not isinstance(configs, dict) else configs, **common)
    calls = len(CALLS)
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        call(run, srch)
    assert len(CALLS) == calls  # refused before any model was built

def test_auto_execution_measures_each_candidate_twice_then_keeps_the_fastest(digits):
    """chunk_size="auto" (the default) with 10 members and shared_order="auto": epochs 1-12 each
    run one candidate (all members, chunks of 8 or one at a time; own or shared order) in two
    rounds, timed; then the fastest by its quicker epoch is kept, and a second run with the same
    program reuses it and compiles nothing. A run shorter than the measurement resumes it."""
    from jnn.train import autoexec
    train, _ = digits
    n = 10
    hparams = {"lr": jnp.linspace(1e-3, 1e-2, n), "wd": jnp.full(n, 1e-4), "rate": jnp.full(n, 0.1)}
    run = lambda epochs=6, **kw: fit_population(make_model, LOSS, make_adamw, train, hparams=hparams,
                                                key=jax.random.key(8), epochs=epochs, batch_size=BATCH,
                                                metrics={}, **kw)
    before = set(autoexec.CHOICES)
    run(shared_order="auto")                       # 6 of the 12 measuring epochs
    assert not [k for k in autoexec.CHOICES if k not in before]
    pending = [timings for timings, _ in autoexec._MEASURING.values()]
    assert [1] * 6 in [sorted(len(seconds) for seconds in t.values()) for t in pending]   # each once so far
    run(shared_order="auto")                       # the other 6
    new = [k for k in autoexec.CHOICES if k not in before]
    assert len(new) == 1
    choice, _, timings = autoexec.CHOICES[new[0]]
    assert set(timings) == {autoexec.Execution(c, s) for c in (None, 8, 1) for s in (False, True)}
    assert choice == min(timings, key=timings.get)
    calls = len(CALLS)
    kept = run(epochs=2, shared_order="auto")
    assert len(CALLS) == calls  # the kept executable: nothing traced or compiled again
    explicit = run(epochs=2, chunk_size=choice.chunk_size, shared_order=choice.shared_order)
    np.testing.assert_allclose(kept.history["loss"], explicit.history["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="fit_population: shared_order must be one of True, False, 'auto', got 'yes'"):
        run(shared_order="yes")
