"""jnn.train.crossval: each fold's member equals fit on that fold alone; the intervals and the
paired test agree with scipy.stats."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jnn

LOSS = jnn.losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.key(1), (62, 5))
    return x, jnp.argmax(x[:, :3] @ jnp.ones((3, 3)) + x[:, :3], axis=1)


def make_model(hp):
    return jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dropout(hp["rate"]), jnn.dense(3))


def make_opt(hp):
    return optax.adam(hp["lr"])


HPARAMS = {"lr": jnp.array([0.01, 0.05]), "rate": jnp.array([0.0, 0.2])}


@pytest.fixture(scope="module")
def cv(data):
    return jnn.train.cross_validate(make_model, LOSS, make_opt, data, key=jax.random.key(0), folds=3, seeds=2,
                                    hparams=HPARAMS, epochs=3, batch_size=8)


def test_folds_partition_the_data(cv, data):
    assert cv.folds.shape == (3, 20)
    assert len(np.unique(cv.folds)) == 60 and cv.folds.max() < 62
    (tx, ty), (vx, vy) = cv.fold(1, data)
    assert tx.shape == (40, 5) and vy.shape == (20,)
    np.testing.assert_array_equal(vx, data[0][cv.folds[1]])


@pytest.mark.parametrize("c, f, s", [(0, 0, 0), (1, 2, 1), (1, 1, 0)])
def test_each_member_equals_fit_on_its_fold_alone(cv, data, c, f, s):
    hp = {k: float(v[c]) for k, v in HPARAMS.items()}
    train, held_out = cv.fold(f, data)
    alone = jnn.train.fit(make_model(hp), LOSS, make_opt(hp), train, key=cv.keys[s], val_data=held_out, epochs=3,
                          batch_size=8, verbose=0)
    member = jax.tree_util.tree_map(lambda a: a[(c * 3 + f) * 2 + s], cv.train_states.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           member, alone.train_state.params)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(cv.history[name][:, c, f, s], alone.history[name], rtol=1e-5, atol=1e-6)
        assert cv.scores[name][c, f, s] == cv.history[name][-1, c, f, s]


def test_members_one_after_another_equal_the_vmapped_members(cv, data):
    looped = jnn.train.cross_validate(make_model, LOSS, make_opt, data, key=jax.random.key(0), folds=3, seeds=2,
                                      hparams=HPARAMS, epochs=3, batch_size=8, members="loop")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           looped.train_states.params, cv.train_states.params)
    assert sorted(looped.history) == sorted(cv.history)
    for name, values in cv.history.items():
        np.testing.assert_allclose(looped.history[name], values, rtol=1e-5, atol=1e-6)


def test_intervals_match_scipy(cv):
    scores = cv.scores["val_loss"][1].ravel()
    mean, sem = scores.mean(), stats.sem(scores)
    low, high = stats.t.interval(0.9, len(scores) - 1, loc=mean, scale=sem)
    np.testing.assert_allclose(cv.interval("val_loss", config=1, confidence=0.9)[:3], (mean, low, high), rtol=1e-9)
    wide = cv.interval("val_loss", config=1, confidence=0.9, corrected=True)   # Nadeau-Bengio: 1/n + 1/(k-1)
    np.testing.assert_allclose(wide.high - wide.mean, (high - mean) * np.sqrt((1 / 6 + 1 / 2) / (1 / 6)), rtol=1e-9)
    paired = cv.compare("val_accuracy", a=0, b=1)
    a, b = cv.scores["val_accuracy"][0].ravel(), cv.scores["val_accuracy"][1].ravel()
    reference = stats.ttest_rel(b, a)
    np.testing.assert_allclose(paired.p_value, reference.pvalue, rtol=1e-9)
    np.testing.assert_allclose(paired[:3], (np.mean(b - a), *stats.t.interval(0.95, 5, np.mean(b - a),
                                                                              stats.sem(b - a))), rtol=1e-9)


def test_paired_test_and_interval_on_arrays():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3))
    b = a + 0.3 + 0.1 * rng.normal(size=(4, 3))
    result = jnn.train.paired_test(a, b)
    assert result.n == 12 and result.low > 0
    assert result.p_value == pytest.approx(stats.ttest_rel(b.ravel(), a.ravel()).pvalue, rel=1e-9)
    assert jnn.train.paired_test(np.arange(6.0), np.arange(6.0) + 1).p_value == 0.0   # no spread
    d = (b - a).ravel()
    se = d.std(ddof=1) * np.sqrt(1 / 12 + 0.25)                 # Nadeau-Bengio variance factor 1/n + test_ratio
    corrected = jnn.train.paired_test(a, b, test_ratio=0.25)
    np.testing.assert_allclose(corrected.p_value, 2 * stats.t.sf(abs(d.mean()) / se, 11), rtol=1e-9)
    np.testing.assert_allclose(jnn.train.mean_interval(d, 0.9, test_ratio=0.25)[1:3],
                               stats.t.interval(0.9, 11, loc=d.mean(), scale=se), rtol=1e-9)
    with pytest.raises(ValueError, match="paired_test: a and b must pair up"):
        jnn.train.paired_test(a, b[:2])
    with pytest.raises(ValueError, match="mean_interval: needs at least 2 values, got 1"):
        jnn.train.mean_interval([1.0])
    with pytest.raises(ValueError, match=r"mean_interval: confidence must be in \(0, 1\)"):
        jnn.train.mean_interval([1.0, 2.0], 1.5)


def test_cross_validate_rejects_too_few_examples(data):
    with pytest.raises(ValueError, match="cross_validate: the fold size"):
        jnn.train.cross_validate(make_model, LOSS, make_opt, (data[0][:3], data[1][:3]), key=jax.random.key(0),
                                 folds=5, hparams=HPARAMS)
    with pytest.raises(ValueError, match="cross_validate: folds must be an integer >= 2"):
        jnn.train.cross_validate(make_model, LOSS, make_opt, data, key=jax.random.key(0), folds=1, hparams=HPARAMS)
    with pytest.raises(ValueError, match="cross_validate: members must be one of") as error:
        jnn.train.cross_validate(make_model, LOSS, make_opt, data, key=jax.random.key(0), hparams=HPARAMS, members="map")
    assert "'map'" in str(error.value)
