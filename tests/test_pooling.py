"""Pooling: NumPy loop references, flax.linen.max_pool/avg_pool, global pools, errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

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
        np.testing.assert_allclose(y, fn(x, axis=(1, 2, 3)), rtol=1e-6, atol=1e-7)  # float32 sums
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


# --- the tiled fast path and the max-pool gradient rule -----------------------------------------

def np_max_pool_grad(x, window, strides, padding, g):
    """Gradient of sum(max_pool(x) * g): each window's g goes to its first maximal element in
    row-major window order (np.nanargmax returns the first occurrence; padding is nan)."""
    rank = len(window)
    if padding == "SAME":
        pads = []
        for n, k, s in zip(x.shape[1:-1], window, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = [(0, 0)] * rank if padding == "VALID" else list(padding)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    grad = np.zeros_like(xp)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for o in itertools.product(*[range(n) for n in g.shape[1:-1]]):
            starts = [oi * s for oi, s in zip(o, strides)]
            patch = xp[(b, *(slice(a, a + k) for a, k in zip(starts, window)), c)]
            first = np.unravel_index(np.nanargmax(patch), window)
            grad[(b, *(a + f for a, f in zip(starts, first)), c)] += g[(b, *o, c)]
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1]))
    return grad[(slice(None), *inner, slice(None))]


def reduce_window_max(x, window, strides, padding):
    pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), pad)


TILED = [  # (window, padding, shape): strides == window and nothing padded
    ((2,), "VALID", (2, 8, 3)),
    ((2, 2), "VALID", (2, 6, 4, 2)),
    ((2, 2), "VALID", (2, 7, 5, 2)),  # remainder row/column cropped
    ((3, 2), "SAME", (1, 6, 4, 2)),  # SAME pads nothing: sizes divisible
    ((2, 3), [(0, 0), (0, 0)], (2, 4, 6, 1)),
    ((2, 2, 2), "VALID", (1, 4, 4, 6, 2)),
]


def _has_reduce_window(fn, x):
    return "reduce_window" in str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(fn(v))))(x))


@pytest.mark.parametrize("window,padding,shape", TILED)
def test_tiled_path_is_taken_and_max_grad_matches_reference(window, padding, shape):
    """Tie-free input: value and gradient equal reduce_window's and the NumPy reference; with
    ties (a coarse grid, half the windows tied), the gradient follows the first-element rule."""
    rng = np.random.default_rng(0)
    pool = lambda v: max_pool(window, padding=padding).apply({}, {}, v)[0]
    assert not _has_reduce_window(pool, jnp.zeros(shape))
    g = rng.normal(size=pool(jnp.zeros(shape)).shape).astype(np.float32)
    loss = lambda fn: jax.jit(jax.grad(lambda v: jnp.sum(fn(v) * g)))
    reference = lambda v: reduce_window_max(v, window, window, padding)
    for x in [rng.permutation(np.prod(shape)).reshape(shape) / 7.0,  # all distinct
              rng.integers(0, 3, size=shape).astype(np.float64)]:  # many ties
        x32 = jnp.asarray(x, jnp.float32)
        np.testing.assert_array_equal(pool(x32), reference(x32))
        expected = np_max_pool_grad(x, window, window, padding, g)
        np.testing.assert_allclose(loss(pool)(x32), expected, rtol=1e-6)
        np.testing.assert_allclose(loss(reference)(x32), expected, rtol=1e-6)  # same rule


@pytest.mark.parametrize("window,strides,padding,shape", [c for c in CASES if c[1] is not None],
                         ids=[i for c, i in zip(CASES, IDS) if c[1] is not None])
def test_reduce_window_path_max_grad_follows_the_same_rule(window, strides, padding, shape):
    rank = len(window)
    s = (strides,) * rank if isinstance(strides, int) else strides
    pool = lambda v: max_pool(window, strides=strides, padding=padding).apply({}, {}, v)[0]
    x = np.random.default_rng(1).integers(0, 3, size=shape).astype(np.float64)
    assert _has_reduce_window(pool, jnp.zeros(shape))
    g = np.random.default_rng(2).normal(size=pool(jnp.zeros(shape)).shape).astype(np.float32)
    grad = jax.grad(lambda v: jnp.sum(pool(v) * g))(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(grad, np_max_pool_grad(x, window, s, padding, g), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_tiled_avg_pool_grad_matches_reduce_window(count_include_pad):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 5, 3)), jnp.float32)
    pool = avg_pool((2, 2), count_include_pad=count_include_pad)
    fast = lambda v: pool.apply({}, {}, v)[0]
    assert not _has_reduce_window(fast, x)
    slow = lambda v: jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    g = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 2, 3)), jnp.float32)
    np.testing.assert_allclose(fast(x), slow(x), rtol=1e-6)
    grads = [jax.grad(lambda v: jnp.sum(f(v) * g))(x) for f in (fast, slow)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_tiled_max_pool_forward_mode_and_second_order_match_finite_differences():
    """custom_jvp keeps jvp, jacfwd and grad-of-grad working on the fast path."""
    x = jnp.asarray(np.random.default_rng(5).permutation(16).reshape(1, 4, 4, 1) / 5.0)
    pool = jax.jit(lambda v: jnp.sum(jnp.sin(max_pool((2, 2)).apply({}, {}, v)[0])))
    check_grads(pool, (x,), order=2, modes=["fwd", "rev"], eps=1e-3)


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool", "global_max_pool", "global_avg_pool"])
def test_pool_kinds_names_and_labels(kind):
    """Built inside the test (not in a parametrize list), so mutation testing attributes the
    construction to it: the kind, the name, and the label of a bad input's error."""
    make = {"max_pool": lambda **kw: max_pool((2, 2), **kw), "avg_pool": lambda **kw: avg_pool((2, 2), **kw),
            "global_max_pool": global_max_pool, "global_avg_pool": global_avg_pool}[kind]
    assert (make().kind, make().name, make(name="mine").name) == (kind, None, "mine")
    for label, layer in ((kind, make()), ("mine", make(name="mine"))):
        with pytest.raises(ValueError, match=rf"^{label}: "):
            layer.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 8), jnp.float32))
        with pytest.raises(ValueError, match=rf"^{label}: "):
            layer.apply({}, {}, jnp.zeros((2, 8)))
    if kind.startswith("global"):
        with pytest.raises(ValueError, match=rf"^{kind}: expected inputs \[B, \*spatial, C\] with at least one "
                                             r"spatial axis, got shape \(2, 8\)$"):
            make().apply({}, {}, jnp.zeros((2, 8)))


def test_avg_pool_defaults_count_the_padding_and_every_path_keeps_the_input_dtype():
    x = jnp.ones((1, 3, 3, 1))
    corner = avg_pool((3, 3), strides=1, padding="SAME").apply({}, {}, x)[0][0, 0, 0, 0]
    np.testing.assert_allclose(corner, 4 / 9, rtol=1e-6)          # default: padded zeros count
    exact = avg_pool((3, 3), strides=1, padding="SAME", count_include_pad=False).apply({}, {}, x)[0]
    np.testing.assert_allclose(exact, np.ones((1, 3, 3, 1)), rtol=1e-6)
    for include in (True, False):
        layer = avg_pool((3, 3), strides=1, padding="SAME", count_include_pad=include)
        assert layer.apply({}, {}, x.astype(jnp.bfloat16))[0].dtype == jnp.bfloat16
        with jax.enable_x64(True):
            assert layer.apply({}, {}, jnp.ones((1, 3, 3, 1), jnp.float32))[0].dtype == jnp.float32


def test_same_padding_tiles_only_when_every_spatial_size_divides():
    """SAME over a width that the window does not divide pads, so the tiled path must not be
    taken there even when the height divides (built in the test: mutation testing credits it)."""
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 3)).astype(np.float32)
    for pool, op in ((max_pool((2, 2), padding="SAME"), "max"), (avg_pool((2, 2), padding="SAME"), "avg")):
        np.testing.assert_allclose(pool.apply({}, {}, jnp.asarray(x))[0],
                                   np_pool(x, (2, 2), (2, 2), "SAME", op), rtol=1e-6, atol=1e-6)


def test_a_window_larger_than_its_input_is_named_a_window():
    with pytest.raises(ValueError, match=r"^p: window of size \(3, 3\) \(span 3 with dilation 1\) is larger than the "
                                         r"padded input along spatial axis 0 \(size 2 \+ padding 0\)"):
        max_pool((3, 3), name="p").init(jax.random.key(0), jnp.zeros((1, 2, 4, 1)))
