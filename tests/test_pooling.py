"""Pooling: NumPy loop references, flax.linen.max_pool/avg_pool, global pools, errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool

nn = pytest.importorskip("flax.linen")  # flax is a test extra, not a jnn dependency


def np_pool(x, window, strides, padding, op, count_include_pad=True):
    """Direct loop over output positions; padded entries are excluded from max (and, unless
    count_include_pad, from the mean's denominator)."""
    rank = len(window)
    if padding == "SAME":
        pads = []
        for n, k, s in zip(x.shape[1:-1], window, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
    elif padding == "VALID":
        pads = [(0, 0)] * rank
    else:
        pads = list(padding)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=np.nan)  # nan marks padding
    out = [(xp.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(rank)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in itertools.product(*[range(n) for n in out]):
        idx = tuple(slice(oi * s, oi * s + k) for oi, s, k in zip(o, strides, window))
        patch = xp[(slice(None), *idx, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
        if op == "max":
            y[(slice(None), *o)] = np.nanmax(patch, axis=1)
        elif count_include_pad:
            y[(slice(None), *o)] = np.nansum(patch, axis=1) / int(np.prod(window))
        else:
            y[(slice(None), *o)] = np.nanmean(patch, axis=1)
    return y


CASES = [  # (window, strides (None: = window), padding, input shape)
    ((2,), None, "VALID", (2, 7, 3)),
    ((3,), 1, "SAME", (2, 6, 2)),
    ((2, 2), None, "VALID", (2, 6, 5, 2)),
    ((3, 3), 2, "SAME", (2, 5, 6, 2)),
    ((3, 2), (1, 2), "SAME", (1, 4, 5, 3)),
    ((2, 3), (2, 1), [(1, 0), (1, 1)], (2, 5, 4, 1)),
    ((2, 2, 2), None, "VALID", (1, 4, 5, 4, 2)),
    ((2, 3, 2), 1, "SAME", (1, 3, 4, 3, 2)),
]
IDS = [f"{len(w)}d-{p if isinstance(p, str) else 'explicit'}-s{s}" for w, s, p, _ in CASES]


@pytest.mark.parametrize("window,strides,padding,shape", CASES, ids=IDS)
@pytest.mark.parametrize("op", ["max", "avg", "avg_exclude_pad"])
def test_pool_matches_numpy_loop_and_flax(window, strides, padding, shape, op):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    rank = len(window)
    s = window if strides is None else ((strides,) * rank if isinstance(strides, int) else strides)
    if op == "max":
        layer, flax_fn = max_pool(window, strides=strides, padding=padding), nn.max_pool
    else:
        include = op == "avg"
        layer = avg_pool(window, strides=strides, padding=padding, count_include_pad=include)
        flax_fn = lambda *a, **k: nn.avg_pool(*a, **k, count_include_pad=include)
    params, state = layer.init(jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert params == {} and state == {}
    y, _ = layer.apply(params, state, x)  # eager: shares compiled primitives with flax's call
    expected = np_pool(np.asarray(x, np.float64), window, s, padding, op[:3], op == "avg")
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    # flax defaults to stride 1, so pass the strides explicitly
    np.testing.assert_allclose(y, flax_fn(x, window, strides=s, padding=padding), rtol=1e-6, atol=1e-6)


def test_default_strides_equal_window():
    x = jnp.arange(36.0).reshape(1, 6, 6, 1)
    y, _ = max_pool((3, 2)).apply({}, {}, x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[13, 15, 17], [31, 33, 35]])
    y, _ = avg_pool((3, 2)).apply({}, {}, x)
    np.testing.assert_allclose(y[0, :, :, 0], [[6.5, 8.5, 10.5], [24.5, 26.5, 28.5]])


def test_max_pool_same_never_picks_padding_and_keeps_dtype():
    x = -jnp.ones((1, 3, 3, 1), jnp.bfloat16)  # all negative: a zero pad would win the max
    y, _ = max_pool((2, 2), strides=1, padding="SAME").apply({}, {}, x)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(y == -1))


def test_global_pools_match_numpy():
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
    for layer, fn in [(global_avg_pool(), np.mean), (global_max_pool(), np.max)]:
        y, _ = layer.apply({}, {}, jnp.asarray(x))
        assert y.shape == (2, 3)
        np.testing.assert_allclose(y, fn(x, axis=(1, 2, 3)), rtol=1e-6)
        y1, _ = layer.apply({}, {}, jnp.asarray(x[:, :, 0, 0]))  # 1-D spatial
        np.testing.assert_allclose(y1, fn(x[:, :, 0, 0], axis=1), rtol=1e-6)


def test_in_a_model():
    model = jnn.serial(max_pool((2, 2)), global_avg_pool(), jnn.dense(2))
    x = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    assert sorted(params) == ["dense_0"] and params["dense_0"]["w"].shape == (3, 2)
    assert jnn.output_shape(model, params, state, x).shape == (4, 2)


@pytest.mark.parametrize("make,match", [
    (lambda: max_pool(2), r"max_pool: window must be a tuple .* \(2, 2\) for 2-D, got the int 2"),
    (lambda: max_pool((2, 0)), r"max_pool: window must be a non-empty tuple of positive integers"),
    (lambda: avg_pool((2, 2), strides=0), r"avg_pool: strides must be a positive integer or a tuple of 2"),
    (lambda: avg_pool((2, 2), strides=(1, 1, 1)), r"avg_pool: strides must be"),
    (lambda: max_pool((2, 2), padding="same-ish"), r"max_pool: padding must be 'SAME', 'VALID'"),
    (lambda: max_pool((2,), padding=[(1, 1), (1, 1)]), r"padding must .* 1 \(lo, hi\) pairs"),
])
def test_bad_hyperparameters_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer,shape,match", [
    (max_pool((2, 2)), (2, 8, 8), r"max_pool: a 2-D window of size \(2, 2\) expects inputs of rank 4 "
                                  r"\[B, H, W, C\], got shape \(2, 8, 8\)"),
    (avg_pool((2, 2, 2, 2), name="p"), (2, 8, 8, 8, 1), r"p: a 4-D window .* rank 6"),
    (avg_pool((3, 3)), (1, 8, 2, 1), r"avg_pool: window of size \(3, 3\) \(span 3 with dilation 1\) "
                                     r"is larger than the padded input along spatial axis 1"),
    (global_avg_pool(), (2, 8), r"global_avg_pool: expected inputs \[B, \*spatial, C\] with at least "
                                r"one spatial axis, got shape \(2, 8\)"),
    (global_max_pool(name="g"), (8,), r"g: expected inputs .* got shape \(8,\)"),
])
def test_bad_input_raises_at_init_and_apply(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    with pytest.raises(ValueError, match=match):
        jax.jit(layer.apply)({}, {}, jnp.zeros(shape))


@pytest.mark.parametrize("pool", [
    lambda: max_pool((2, 2)), lambda: max_pool((3, 3), strides=1, padding="SAME"), lambda: avg_pool((2, 2)),
    lambda: avg_pool((3, 3), strides=1, padding="SAME", count_include_pad=False)])
def test_pooling_differentiates_under_jit_inside_a_network(pool):
    """Regression: an init value built with jnp.array broke reverse-mode under jit(grad)."""
    model = jnn.serial(jnn.conv(2, (3, 3)), pool(), jnn.flatten(), jnn.dense(1))
    x = jnp.linspace(-1, 1, 2 * 6 * 6).reshape(2, 6, 6, 1)
    params, state = model.init(jax.random.key(0), x)
    loss = lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2)
    jitted = jax.jit(jax.grad(loss))(params)
    eager = jax.grad(loss)(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), jitted, eager)
