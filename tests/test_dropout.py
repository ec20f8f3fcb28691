"""Tests for jnn.layers.dropout: statistics of the mask, exact scaling, modes, keys and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.dropout import dropout, spatial_dropout

N = 1_000_000


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(1.0, 1.0, shape).astype(np.float32))


def _train(layer, x, key=0):
    return layer.apply({}, {}, x, key=jax.random.key(key), train=True)[0]


def _six_sigma(count, n, p):
    """``count`` successes out of ``n`` is within 6 binomial standard deviations of ``n * p``."""
    return abs(count - n * p) <= 6 * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_keep_fraction_matches_one_minus_rate(rate):
    x = _x((1000, 1000))
    y = np.asarray(_train(dropout(rate), x))
    kept = np.count_nonzero(y)                       # x is never exactly 0 here
    assert np.count_nonzero(np.asarray(x)) == N
    assert _six_sigma(kept, N, 1 - rate), (kept, N * (1 - rate))


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_kept_values_are_exactly_x_over_keep(rate):
    # keep = 0.5 or 0.25: dividing by a power of two is exact, so NumPy must agree bit for bit
    x = _x((1000, 1000))
    for run in (lambda x: _train(dropout(rate), x), jax.jit(lambda x: _train(dropout(rate), x))):
        y, xs = np.asarray(run(x)), np.asarray(x)
        kept = y != 0
        np.testing.assert_array_equal(y[kept], xs[kept] / np.float32(1 - rate))
        assert np.all(y[~kept] == 0)


def test_kept_values_for_an_inexact_keep():
    rate, x = 0.3, _x((1000, 1000))
    y, xs = np.asarray(_train(dropout(rate), x)), np.asarray(x)
    kept = y != 0
    # the same division in JAX, bit for bit; NumPy's (correctly rounded) to within 1 ulp
    np.testing.assert_array_equal(y[kept], np.asarray(x / jnp.float32(1 - rate))[kept])
    np.testing.assert_array_max_ulp(y[kept], xs[kept] / np.float32(1 - rate), maxulp=1)


@pytest.mark.parametrize("rate", [0.2, 0.6])
def test_mean_activation_is_preserved(rate):
    x = _x((1000, 1000), seed=1)
    xs = np.asarray(x, np.float64)
    y = np.asarray(_train(dropout(rate), x), np.float64)
    # given x, y_i = x_i * m_i / keep with m_i ~ Bernoulli(keep): E[y_i] = x_i, Var[y_i] = x_i^2 rate/keep
    sd = np.sqrt(np.sum(xs ** 2) * rate / (1 - rate)) / N
    assert abs(y.mean() - xs.mean()) <= 6 * sd
    # without the 1/keep scaling the mean would shrink by keep, far outside the bound
    assert abs(y.mean() * (1 - rate) - xs.mean()) > 6 * sd


def test_eval_mode_is_exactly_the_identity_and_needs_no_key():
    x = _x((7, 5))
    layer = dropout(0.5)
    params, state = layer.init(jax.random.key(0), x)
    y, new_state = layer.apply(params, state, x)
    np.testing.assert_array_equal(y, x)
    assert new_state == {}
    y, _ = layer.apply(params, state, x, key=jax.random.key(3), train=False)
    np.testing.assert_array_equal(y, x)


def test_rate_zero_is_the_identity_even_in_training():
    x = _x((7, 5))
    np.testing.assert_array_equal(dropout(0.0).apply({}, {}, x, train=True)[0], x)
    np.testing.assert_array_equal(dropout(0).apply({}, {}, x, key=jax.random.key(0), train=True)[0], x)


def test_same_key_same_mask_different_key_different_mask():
    x = _x((64, 64))
    a, b, c = _train(dropout(0.5), x, 0), _train(dropout(0.5), x, 0), _train(dropout(0.5), x, 1)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a != 0) != np.asarray(c != 0)) > 0.3   # ~0.5 for independent masks


def test_gradient_is_the_mask_over_keep():
    x, key = _x((50, 40)), jax.random.key(2)
    f = lambda x: jnp.sum(dropout(0.4).apply({}, {}, x, key=key, train=True)[0])
    grad = np.asarray(jax.grad(f)(x))
    mask = np.asarray(_train(dropout(0.4), x, 2)) != 0
    np.testing.assert_array_equal(grad, np.where(mask, np.float32(1) / np.float32(0.6), 0))


def test_missing_key_in_training_raises_with_how_to_call():
    x = _x((3, 4))
    with pytest.raises(ValueError, match=r"dropout: train=True needs a PRNG key: call "
                                         r"apply\(\.\.\., key=jax\.random\.key\(0\), train=True\)"):
        dropout(0.5).apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match=r"my_drop: train=True needs a PRNG key"):
        dropout(0.5, name="my_drop").apply({}, {}, x, train=True)
    model = jnn.serial(jnn.dense(4), dropout(0.5))
    params, state = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"\[dropout_0\] dropout: train=True needs a PRNG key"):
        model.apply(params, state, x, train=True)
    assert model.apply(params, state, x, key=jax.random.key(1), train=True)[0].shape == (3, 4)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_rate_outside_zero_one_is_rejected_when_built(rate):
    with pytest.raises(ValueError, match=r"dropout: rate is the probability of dropping a unit "
                                         r"and must be in \[0, 1\), got"):
        dropout(rate)
    with pytest.raises(ValueError, match=r"spatial_dropout: rate .* must be in \[0, 1\)"):
        spatial_dropout(rate)


@pytest.mark.parametrize("rate", [True, "0.5", None, [0.5], jnp.array([0.1, 0.2])])
def test_rate_that_is_not_a_number_is_rejected(rate):
    with pytest.raises(ValueError, match=r"dropout: rate must be a number in \[0, 1\), got"):
        dropout(rate)


def test_concrete_array_rate_is_validated_and_works():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got 1.0"):
        dropout(jnp.float32(1.0))
    x = _x((1000, 1000))
    assert _six_sigma(np.count_nonzero(_train(dropout(jnp.float32(0.25)), x)), N, 0.75)


def test_traced_rate_under_vmap():
    # one layer per rate, built inside the mapped function
    x, rates = _x((1000, 1000)), jnp.array([0.1, 0.5, 0.9], jnp.float32)
    kept = jax.vmap(lambda r: jnp.count_nonzero(_train(dropout(r), x)))(rates)
    for rate, k in zip(np.asarray(rates, np.float64), np.asarray(kept)):
        assert _six_sigma(int(k), N, 1 - rate), (rate, k)
    with pytest.raises(ValueError, match=r"a traced rate must be a float scalar"):
        jax.vmap(lambda r: dropout(r))(jnp.ones((3, 2)))


def test_dtype_is_kept_and_integer_input_rejected():
    x = _x((8, 8)).astype(jnp.bfloat16)
    y = _train(dropout(0.5), x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y[y != 0], np.float32),
                                  2 * np.asarray(x[y != 0], np.float32))
    with pytest.raises(ValueError, match=r"dropout: expected a floating-point input, got int32"):
        dropout(0.5).init(jax.random.key(0), jax.ShapeDtypeStruct((2, 3), jnp.int32))


@pytest.mark.parametrize("shape", [(8, 50, 16), (8, 10, 10, 16), (4, 3, 4, 5, 16)])
def test_spatial_dropout_drops_whole_channels(shape):
    rate = 0.5
    x = _x(shape)
    y, xs = np.asarray(_train(spatial_dropout(rate), x, 4)), np.asarray(x)
    kept = y != 0
    spatial = tuple(range(1, len(shape) - 1))
    # each (example, channel) is kept everywhere or nowhere
    np.testing.assert_array_equal(kept.all(axis=spatial), kept.any(axis=spatial))
    np.testing.assert_array_equal(y[kept], xs[kept] / np.float32(1 - rate))
    channels = kept.all(axis=spatial)                     # [B, C]
    assert _six_sigma(channels.sum(), channels.size, 1 - rate)
    assert 0 < channels.sum() < channels.size             # some dropped, some kept
    # masks differ between examples (not one mask shared by the batch)
    assert any(not np.array_equal(channels[0], channels[i]) for i in range(1, shape[0]))


def test_spatial_dropout_keep_fraction_on_many_channels():
    x = _x((100, 2, 10_000))
    channels = np.asarray(_train(spatial_dropout(0.3), x)).all(axis=1) != 0
    assert _six_sigma(channels.sum(), channels.size, 0.7)


def test_spatial_dropout_modes_and_errors():
    x = _x((2, 3, 4))
    np.testing.assert_array_equal(spatial_dropout(0.5).apply({}, {}, x)[0], x)
    with pytest.raises(ValueError, match=r"spatial_dropout: train=True needs a PRNG key"):
        spatial_dropout(0.5).apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match=r"spatial_dropout: expected a channels-last input "
                                         r"\[B, \*spatial, C\] with at least one spatial axis, "
                                         r"got shape \(2, 3\)"):
        spatial_dropout(0.5).init(jax.random.key(0), jax.ShapeDtypeStruct((2, 3), jnp.float32))


def test_traced_rate_keeps_a_low_precision_dtype():
    """A rate traced under vmap is a float32 array, not a Python float: the scale must still be
    cast to the input's dtype, or a bfloat16 input comes out float32."""
    x = _x((4, 8)).astype(jnp.bfloat16)
    rates = jnp.array([0.25, 0.5], jnp.float32)
    ys = jax.vmap(lambda r: dropout(r).apply({}, {}, x, key=jax.random.key(0), train=True)[0])(rates)
    assert ys.dtype == jnp.bfloat16
    for y, rate in zip(np.asarray(ys, np.float32), [0.25, 0.5]):
        kept = y != 0
        expected = np.asarray(x, np.float32)[kept] / np.float32(jnp.bfloat16(1 - rate))
        np.testing.assert_allclose(y[kept], np.asarray(jnp.asarray(expected, jnp.bfloat16), np.float32))


def test_apply_checks_the_dtype_of_what_it_is_given_and_a_scalar_is_allowed():
    layer = dropout(0.5)
    layer.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^dropout: expected a floating-point input, got int32"):
        layer.apply({}, {}, jnp.ones((2, 3), jnp.int32), key=jax.random.key(0), train=True)
    y = layer.apply({}, {}, jnp.float32(3.0), key=jax.random.key(0), train=True)[0]   # any ndim, even 0
    assert y.shape == () and float(y) in (0.0, 6.0)


def test_names_are_kept_and_label_the_errors():
    for make, kind in ((dropout, "dropout"), (spatial_dropout, "spatial_dropout")):
        assert make(0.5).name is None and make(0.5, name="drop").name == "drop"
        with pytest.raises(ValueError, match=r"^drop: train=True needs a PRNG key"):
            make(0.5, name="drop").apply({}, {}, _x((2, 3, 4)), train=True)
        with pytest.raises(ValueError, match=rf"^{kind}: train=True needs a PRNG key"):
            make(0.5).apply({}, {}, _x((2, 3, 4)), train=True)


def test_a_train_flag_that_is_not_a_bool_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^dropout: train must be True or False, got 'yes'$"):
        dropout(0.5).apply({}, {}, _x((2, 3)), key=jax.random.key(0), train="yes")
