"""Tests written to kill mutants the suite used to miss (issue #21): each asserts a value that an
independent computation (NumPy, closed form, image moments) fixes, with the option in question
set to a value where the plausible bug gives a different answer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.data import augment
from jnn.layers.attention import multi_head_attention

RNG = np.random.default_rng(0)


def test_dense_adds_its_bias():
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    layer = jnn.dense(5, b_init=jax.nn.initializers.normal(1.0))
    params, state = layer.init(jax.random.key(0), x)
    assert np.abs(np.asarray(params["b"])).min() > 1e-3            # a non-zero bias to see
    y, _ = layer.apply(params, state, jnp.asarray(x))
    np.testing.assert_allclose(y, x @ np.asarray(params["w"]) + np.asarray(params["b"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge, reference", [("multiply", np.multiply), ("add", np.add)])
def test_fan_out_merge_matches_numpy(merge, reference):
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    block = jnn.fan_out(jnn.dense(3), jnn.dense(3), merge=merge)
    params, state = block.init(jax.random.key(0), x)
    branch = lambda p: x @ np.asarray(p["w"]) + np.asarray(p["b"])
    expected = reference(branch(params["dense_0"]), branch(params["dense_1"]))
    np.testing.assert_allclose(block.apply(params, state, jnp.asarray(x))[0], expected, rtol=1e-5, atol=1e-6)


def test_penalty_l1_is_the_sum_of_absolute_values():
    params = {"dense_0": {"w": jnp.array([[2.0, -3.0]]), "b": jnp.array([7.0])}}
    assert float(jnn.train.penalty(l1=0.5)(params)) == pytest.approx(0.5 * 5.0)     # L2 would give 6.5
    assert float(jnn.train.penalty(l2=0.5)(params)) == pytest.approx(0.5 * 13.0)
    assert float(jnn.train.penalty(l1=1.0, l2=1.0)(params)) == pytest.approx(18.0)


def test_attention_dropout_keeps_the_expected_value():
    # Inverted dropout scales kept weights by 1 / (1 - rate): averaged over masks, the output
    # equals the output without dropout. At rate 0.25 a 1/rate scaling would triple it.
    layer = multi_head_attention(1, dropout_rate=0.25)
    x = jnp.asarray(RNG.normal(size=(1, 8, 4)).astype(np.float32))
    params, state = layer.init(jax.random.key(0), x)
    clean, _ = layer.apply(params, state, x)
    keys = jax.random.split(jax.random.key(1), 4000)
    noisy = jax.vmap(lambda k: layer.apply(params, state, x, key=k, train=True)[0])(keys)
    bias = np.asarray(params["out"]["b"])
    mean_noisy = np.asarray(noisy.mean(axis=0)) - bias
    np.testing.assert_allclose(mean_noisy, np.asarray(clean) - bias, atol=0.05 * np.abs(np.asarray(clean) - bias).max())


# --- EarlyStopping: min_delta and mode, in fit and fit_population --------------------------

def _xor_run(early_stopping, population=False):
    x, y = jnn.data.xor()
    make = lambda hp=None: jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dense(1))
    kwargs = dict(key=jax.random.key(0), epochs=30, batch_size=4, val_data=(x, y), metrics={},
                  early_stopping=early_stopping)
    if population:
        r = jnn.train.fit_population(make, jnn.losses.binary_cross_entropy_with_logits,
                                     lambda hp: optax.adam(0.05), (x, y), hparams={"lr": jnp.zeros(1)}, **kwargs)
        m = r.member(0)
        return len(m.history["val_loss"]), m.best_epoch, list(m.history["val_loss"])
    r = jnn.train.fit(make(), jnn.losses.binary_cross_entropy_with_logits, optax.adam(0.05), (x, y),
                      verbose=0, **kwargs)
    return len(r.history["val_loss"]), r.best_epoch, r.history["val_loss"]


@pytest.mark.parametrize("population", [False, True], ids=["fit", "fit_population"])
def test_early_stopping_min_delta_and_mode(population):
    epochs, best, losses = _xor_run(jnn.train.EarlyStopping("val_loss", patience=2), population)
    assert epochs == 30 and all(b < a for a, b in zip(losses, losses[1:]))   # falls every epoch
    step = min(a - b for a, b in zip(losses, losses[1:]))
    # Every improvement is smaller than min_delta = 1.0: only epoch 1 counts as best.
    epochs, best, _ = _xor_run(jnn.train.EarlyStopping("val_loss", patience=2, min_delta=1.0), population)
    assert (epochs, best) == (3, 1)
    # A min_delta below the smallest improvement changes nothing.
    epochs, best, _ = _xor_run(jnn.train.EarlyStopping("val_loss", patience=2, min_delta=step / 2), population)
    assert (epochs, best) == (30, 30)
    # mode="max" on a falling loss: the first epoch is the best, training stops after patience.
    epochs, best, _ = _xor_run(jnn.train.EarlyStopping("val_loss", mode="max", patience=3), population)
    assert (epochs, best) == (4, 1)


# --- random_affine respects its limits (measured from image moments) ------------------------

def _bar_image(size=41, length=25):
    image = np.zeros((size, size, 1), np.float32)
    c = size // 2
    image[c, c - length // 2: c + length // 2 + 1, 0] = 1.0
    return image


def _orientation_and_spread(image):
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    w = np.clip(image[..., 0], 0, None)
    w = w / w.sum()
    mx, my = (w * xs).sum(), (w * ys).sum()
    cxx, cyy, cxy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum(), (w * (xs - mx) * (ys - my)).sum()
    angle = 0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))
    major = 0.5 * (cxx + cyy) + math.sqrt(0.25 * (cxx - cyy) ** 2 + cxy ** 2)
    return angle, math.sqrt(major)


def test_random_affine_rotation_and_scale_stay_within_their_limits():
    images = jnp.asarray(np.repeat(_bar_image()[None], 64, axis=0))
    _, spread0 = _orientation_and_spread(_bar_image())
    rotated = np.asarray(augment.random_affine(10.0)(jax.random.key(0), images))
    angles = np.array([abs(_orientation_and_spread(im)[0]) for im in rotated])
    assert angles.max() <= 10.5 and angles.max() > 7.0          # within the limit, and using it
    scaled = np.asarray(augment.random_affine(0.0, max_scale=0.2)(jax.random.key(1), images))
    ratios = np.array([_orientation_and_spread(im)[1] / spread0 for im in scaled])
    assert ratios.min() >= 0.78 and ratios.max() <= 1.22        # 1 +- 0.2, with interpolation slack
    assert ratios.max() - ratios.min() > 0.2                    # and actually varies
    angles_scaled = np.array([abs(_orientation_and_spread(im)[0]) for im in scaled])
    assert angles_scaled.max() < 0.5                            # no rotation asked, none made


# --- losses at the extremes, against closed forms ------------------------------------------

def test_softmax_cross_entropy_at_huge_logits():
    logits = jnp.array([[1e4, 0.0, -1e4]] * 3)
    losses = jnn.losses.softmax_cross_entropy(logits, jnp.array([0, 1, 2]), reduction="none")
    np.testing.assert_allclose(losses, [0.0, 1e4, 2e4], rtol=1e-6)


def test_binary_cross_entropy_with_logits_at_huge_logits():
    logits = jnp.array([1e4, 1e4, -1e4, -1e4])
    labels = jnp.array([1.0, 0.0, 1.0, 0.0])
    losses = jnn.losses.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    np.testing.assert_allclose(losses, [0.0, 1e4, 1e4, 0.0], rtol=1e-6)


def test_binary_cross_entropy_at_probabilities_zero_and_one():
    eps = float(np.finfo(np.float32).eps)          # the documented clip: [eps, 1 - eps]
    p = jnp.array([0.0, 1.0, 0.0, 1.0])
    labels = jnp.array([0.0, 1.0, 1.0, 0.0])
    losses = jnn.losses.binary_cross_entropy(p, labels, reduction="none")
    expected = [-math.log1p(-eps), -math.log1p(-eps), -math.log(eps), -math.log(eps)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-7)


# --- checkpoints keep the PRNG key type ------------------------------------------------------

def test_checkpoint_restores_the_stored_key_implementation(tmp_path):
    model, opt = jnn.dense(2), optax.sgd(0.1)
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), jnp.zeros((1, 3)))
    ts = ts._replace(key=jax.random.key(7, impl="rbg"))
    ckpt = jnn.train.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, ts)
    template = ts._replace(key=jax.random.key(0, impl="rbg"))
    restored, _ = ckpt.restore(template)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(ts.key)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(ts.key))
    np.testing.assert_array_equal(jax.random.uniform(restored.key, (4,)), jax.random.uniform(ts.key, (4,)))
