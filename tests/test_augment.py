"""Augmentation: deterministic helpers against NumPy, per-example randomness, jit/vmap, layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.data.augment import (affine, augment_layer, horizontal_flip, pipeline, random_affine,
                              random_crop, random_erasing, random_translate, translate)

KEY = jax.random.key(0)


def _images(shape=(6, 8, 8, 2), seed=0):
    # values in (0.1, 1]: no natural zeros, so zeroed pixels are the augmentation's
    return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32))


def np_shift(image, dy, dx):
    out = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = 0
    elif dy < 0:
        out[dy:] = 0
    if dx > 0:
        out[:, :dx] = 0
    elif dx < 0:
        out[:, dx:] = 0
    return out


@pytest.mark.parametrize("shift", [(0, 0), (1, 2), (-2, 1), (3, -3), (-1, -4), (9, 0)])
def test_translate_equals_roll_with_zeroed_borders(shift):
    image = np.asarray(_images((1, 7, 8, 2))[0])
    got = jax.jit(translate)(jnp.asarray(image), jnp.asarray(shift))  # traced shift
    np.testing.assert_array_equal(got, np_shift(image, *shift))


def test_random_translate_shifts_each_example_within_range():
    x = _images((16, 9, 9, 1))
    y = np.asarray(jax.jit(random_translate((2, 1)))(KEY, x))
    shifts = []
    for xi, yi in zip(np.asarray(x), y):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-1, 2)
                 if np.array_equal(yi, np_shift(xi, dy, dx))]
        assert len(found) == 1  # every output is exactly one allowed shift of its own input
        shifts.append(found[0])
    assert len(set(shifts)) > 3  # per-example randomness


def test_random_crop_is_a_window_of_the_padded_input():
    x = _images((8, 6, 7, 2))
    size, pad = (5, 6), (2, 1)
    y = np.asarray(jax.jit(random_crop(size, pad))(KEY, x))
    assert y.shape == (8, 5, 6, 2)
    offsets = []
    for xi, yi in zip(np.asarray(x), y):
        padded = np.pad(xi, ((2, 2), (1, 1), (0, 0)))
        found = [(t, l) for t in range(padded.shape[0] - 4) for l in range(padded.shape[1] - 5)
                 if np.array_equal(padded[t:t + 5, l:l + 6], yi)]
        assert found
        offsets.append(found[0])
    assert len(set(offsets)) > 2
    assert jax.eval_shape(random_crop((6, 7), 3), KEY, x).shape == x.shape


def test_affine_identity_rot90_and_zoom():
    image = _images((1, 9, 9, 3))[0]
    f = jax.jit(affine)  # one compile: the angle, scale and shear are traced
    np.testing.assert_allclose(f(image, 0.0, 1.0, 0.0), image, atol=1e-6)
    interior = (slice(1, -1), slice(1, -1))
    for angle, k in [(90.0, 1), (-90.0, -1)]:
        expected = np.rot90(np.asarray(image), k, axes=(0, 1))
        np.testing.assert_allclose(f(image, angle, 1.0, 0.0)[interior], expected[interior], atol=1e-5)
    # scale 2 about the centre of a 9x9 image: output (4 + d) samples input (4 + d / 2)
    zoomed = np.asarray(f(image, 0.0, 2.0, 0.0))
    np.testing.assert_allclose(zoomed[4, 6], image[4, 5], atol=1e-6)
    np.testing.assert_allclose(zoomed[4, 5], (image[4, 4] + image[4, 5]) / 2, atol=1e-6)
    # shear: row offset y moves the sampled column by tan(shear) * y
    sheared = np.asarray(f(image, 0.0, 1.0, 45.0))
    np.testing.assert_allclose(sheared[5, 3], image[5, 4], atol=1e-5)


def test_random_affine_is_per_example():
    x = jnp.broadcast_to(_images((1, 8, 8, 1)), (4, 8, 8, 1))
    y = jax.jit(random_affine(30.0, max_scale=0.1, max_shear=10.0))(KEY, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(not np.allclose(y[0], y[i]) for i in range(1, 4))
    assert not np.allclose(y[0], x[0])


def test_horizontal_flip():
    x = _images((32, 4, 5, 1))
    y = np.asarray(jax.jit(horizontal_flip(0.5))(KEY, x))
    flipped = [np.array_equal(yi, xi[:, ::-1]) for xi, yi in zip(np.asarray(x), y)]
    kept = [np.array_equal(yi, xi) for xi, yi in zip(np.asarray(x), y)]
    assert all(f != k for f, k in zip(flipped, kept))  # each is exactly one of the two
    assert 4 < sum(flipped) < 28


def _erased_box(image):
    zero = np.all(image == 0, axis=-1)
    rows, cols = np.nonzero(zero)
    box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all() and zero.sum() == box.size  # one filled rectangle, nothing else zeroed
    assert np.all(image[~zero] != 0)
    return box.shape


def test_random_erasing_zeroes_one_rectangle_of_the_expected_area():
    x = _images((32, 20, 20, 2))
    y = np.asarray(jax.jit(random_erasing(1.0, scale=(0.05, 0.2)))(KEY, x))
    areas = [np.prod(_erased_box(yi)) / 400 for yi in y]
    # sides are rounded to whole pixels, so allow a pixel's worth either way
    assert min(areas) >= 0.05 * 0.6 and max(areas) <= 0.2 * 1.4
    assert len(set(areas)) > 5
    exact = np.asarray(jax.jit(random_erasing(1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0)))(KEY, x))
    assert {_erased_box(yi) for yi in exact} == {(10, 10)}


def test_pipeline_jit_vmap_and_key_dependence():
    x = _images((4, 8, 8, 1))
    augment = pipeline(random_translate(2), random_erasing(1.0))
    jitted = jax.jit(augment)
    a = jitted(KEY, x)
    assert not np.array_equal(a, jitted(jax.random.key(1), x))
    # vmap over a population: each member with its own key equals the unbatched call
    keys = jax.random.split(KEY, 3)
    xs = jnp.stack([x, x * 0.5, x * 0.25])
    batched = jax.jit(jax.vmap(augment))(keys, xs)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], jitted(keys[i], xs[i]))
    # identical inputs within a batch get different augmentations
    same = jitted(KEY, jnp.broadcast_to(x[:1], x.shape))
    assert len({np.asarray(s).tobytes() for s in same}) == 4


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_dtype_kept_under_strict_promotion(dtype):
    everything = pipeline(random_translate(1), random_crop((6, 6), 1), random_affine(20.0),
                          random_erasing(1.0))
    with jax.enable_x64(dtype == "float64"):
        x = _images((2, 6, 6, 1)).astype(dtype)
        y = jax.jit(everything)(KEY, x)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert float(jnp.sum(y == 0)) > 0  # erased pixels


def test_augment_layer_identity_at_eval_and_pipeline_at_train():
    layer = augment_layer(horizontal_flip(1.0), name="aug")
    x = _images((4, 6, 6, 1))
    params, state = layer.init(KEY, jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert params == {} and state == {}
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], x)
    y, _ = jax.jit(lambda x, k: layer.apply(params, state, x, key=k, train=True))(x, KEY)
    np.testing.assert_array_equal(y, x[:, :, ::-1])
    model = jnn.serial(layer, jnn.flatten())
    params, state = model.init(KEY, x)
    np.testing.assert_array_equal(model.apply(params, state, x)[0], x.reshape(4, -1))
    with pytest.raises(ValueError, match=r"aug: train=True needs randomness: pass "
                                         r"key=jax.random.key\(...\) to apply"):
        layer.apply({}, {}, x, train=True)


@pytest.mark.parametrize("make,match", [
    (lambda: random_translate(-1), r"random_translate: max_shift must be an int >= 0 or a pair"),
    (lambda: random_translate((1, 2, 3)), r"random_translate: max_shift must be"),
    (lambda: random_crop((0, 5)), r"random_crop: size must be an int >= 1 or a pair"),
    (lambda: random_crop((5, 5), padding=-2), r"random_crop: padding must be an int >= 0"),
    (lambda: random_affine(200.0), r"random_affine: max_rotation_degrees must be a number in \[0, 180\]"),
    (lambda: random_affine(10.0, max_scale=1.5), r"random_affine: max_scale must be a number in"),
    (lambda: horizontal_flip(1.5), r"horizontal_flip: p must be a number in \[0, 1\], got 1.5"),
    (lambda: random_erasing(0.5, scale=(0.3, 0.1)), r"random_erasing: scale\[1\] must be a number in"),
    (lambda: random_erasing(0.5, ratio=(0.0, 2.0)), r"random_erasing: ratio must be \(lo, hi\)"),
    (lambda: pipeline(), r"pipeline: expected at least one augmentation"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"pipeline: expected augmentations .* got int"):
        pipeline(3)
    with pytest.raises(ValueError, match=r"random_translate: expected images of shape \[B, H, W, C\], "
                                         r"got \(8, 8, 1\)"):
        random_translate(1)(KEY, jnp.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match=r"random_crop: size \(9, 9\) is larger than the padded image "
                                         r"\(7, 7\)"):
        random_crop((9, 9), 1)(KEY, jnp.zeros((2, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"horizontal_flip: needs a key"):
        horizontal_flip()(None, jnp.zeros((2, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"augment: expected images of shape \[B, H, W, C\]"):
        augment_layer(horizontal_flip()).init(KEY, jnp.zeros((2, 5, 5)))
