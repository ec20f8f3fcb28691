"""Tests for jnn.layers.norm against NumPy references and the flax.linen layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.layers.norm import batch_norm, group_norm, layer_norm, rms_norm

nn = pytest.importorskip("flax.linen")  # flax is a test extra, not a jnn dependency

KEY = jax.random.key(0)


def _rand(shape, seed=0, loc=0.0, scale=1.0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, shape).astype(dtype))


def _random_params(params, seed=1):
    """The layer's params with random values (so scale/offset are actually exercised)."""
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)) if k == "scale"
            else jnp.asarray(rng.normal(size=v.shape).astype(v.dtype)) for k, v in params.items()}


# ---- NumPy references (float64) --------------------------------------------------------------

def np_batch_norm(x, scale, offset, mean, var, *, train, momentum, eps, axes=None):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1)) if axes is None else axes
    shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    if train:
        bm, bv = x.mean(axis=axes), x.var(axis=axes)            # np.var is the biased variance
        new_mean, new_var = momentum * mean + (1 - momentum) * bm, momentum * var + (1 - momentum) * bv
        mean, var = bm, bv
    else:
        new_mean, new_var = mean, var
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    y = y * np.reshape(scale, shape) + np.reshape(offset, shape)
    return y, new_mean, new_var


def np_layer_norm(x, scale, offset, eps):
    x = np.asarray(x, np.float64)
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y * scale + offset


def np_rms_norm(x, scale, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + eps) * scale


def np_group_norm(x, groups, scale, offset, eps):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    size = x.shape[-1] // groups
    for b in range(x.shape[0]):
        for g in range(groups):
            part = x[b, ..., g * size:(g + 1) * size]
            out[b, ..., g * size:(g + 1) * size] = (part - part.mean()) / np.sqrt(part.var() + eps)
    return out * scale + offset


def _close(a, b, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol, rtol=rtol)


# ---- batch_norm -------------------------------------------------------------------------------

def test_batch_norm_init():
    params, state = batch_norm().init(KEY, jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.float32))
    np.testing.assert_array_equal(params["scale"], np.ones(3))
    np.testing.assert_array_equal(params["offset"], np.zeros(3))
    np.testing.assert_array_equal(state["mean"], np.zeros(3))
    np.testing.assert_array_equal(state["var"], np.ones(3))
    params, _ = batch_norm(use_scale=False, use_offset=False).init(KEY, jnp.zeros((2, 3)))
    assert params == {}


@pytest.mark.parametrize("shape", [(64, 5), (8, 6, 6, 4)])
def test_batch_norm_train_output_has_zero_mean_unit_variance(shape):
    x = _rand(shape, loc=3.0, scale=2.5)
    layer = batch_norm()
    params, state = layer.init(KEY, x)
    y, _ = layer.apply(params, state, x, train=True)
    axes = tuple(range(len(shape) - 1))
    _close(np.mean(y, axis=axes), 0.0, atol=1e-5)
    _close(np.var(np.asarray(y, np.float64), axis=axes), 1.0, atol=1e-3)   # var / (var + eps)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(32, 5), (4, 5, 5, 3)])
def test_batch_norm_matches_numpy_and_flax(train, shape):
    momentum, eps = 0.9, 1e-3
    x = _rand(shape, loc=-1.0, scale=2.0)
    layer = batch_norm(momentum=momentum, epsilon=eps)
    params, state = layer.init(KEY, x)
    params = _random_params(params)
    c = shape[-1]
    state = {"mean": jnp.linspace(-1.0, 1.0, c, dtype=jnp.float32),
             "var": jnp.linspace(0.5, 3.0, c, dtype=jnp.float32)}
    y, new_state = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=train))(params, state, x)
    ref_y, ref_mean, ref_var = np_batch_norm(x, params["scale"], params["offset"], state["mean"],
                                             state["var"], train=train, momentum=momentum, eps=eps)
    _close(y, ref_y)
    _close(new_state["mean"], ref_mean)
    _close(new_state["var"], ref_var)

    flax_bn = nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps)
    variables = {"params": {"scale": params["scale"], "bias": params["offset"]},
                 "batch_stats": {"mean": state["mean"], "var": state["var"]}}
    flax_y, updates = flax_bn.apply(variables, x, mutable=["batch_stats"])
    _close(y, flax_y)
    _close(new_state["mean"], updates["batch_stats"]["mean"])
    _close(new_state["var"], updates["batch_stats"]["var"])


def test_batch_norm_explicit_axis():
    x = _rand((6, 4, 3), loc=1.0)
    default = batch_norm()
    params, state = default.init(KEY, x)
    same = batch_norm(axis=(0, 1))
    _close(same.apply(params, state, x, train=True)[0], default.apply(params, state, x, train=True)[0])
    _close(batch_norm(axis=(-3, -2)).apply(params, state, x, train=True)[0],
           default.apply(params, state, x, train=True)[0])
    # reducing over the batch axis only: per-position statistics, params of shape [4, 3]
    layer = batch_norm(axis=0, momentum=0.8)
    params, state = layer.init(KEY, x)
    assert params["scale"].shape == state["mean"].shape == (4, 3)
    params = _random_params(params)
    y, new_state = layer.apply(params, state, x, train=True)
    ref_y, ref_mean, ref_var = np_batch_norm(x, params["scale"], params["offset"], state["mean"],
                                             state["var"], train=True, momentum=0.8, eps=1e-5,
                                             axes=(0,))
    _close(y, ref_y)
    _close(new_state["mean"], ref_mean)
    _close(new_state["var"], ref_var)
    # flax names the feature axes instead
    flax_y, _ = nn.BatchNorm(use_running_average=False, axis=(1, 2), momentum=0.8).apply(
        {"params": {"scale": params["scale"], "bias": params["offset"]},
         "batch_stats": state}, x, mutable=["batch_stats"])
    _close(y, flax_y)


def test_batch_norm_running_statistics_converge_through_jit_and_scan():
    mu = jnp.array([2.0, -1.0, 0.5], jnp.float32)
    sigma = jnp.array([0.5, 2.0, 1.0], jnp.float32)
    batch = 256
    layer = batch_norm(momentum=0.99)
    params, state = layer.init(KEY, jax.ShapeDtypeStruct((batch, 3), jnp.float32))

    @jax.jit
    def run(state):
        def step(state, key):
            x = mu + sigma * jax.random.normal(key, (batch, 3), jnp.float32)
            _, state = layer.apply(params, state, x, train=True)
            return state, None
        return jax.lax.scan(step, state, jax.random.split(jax.random.key(7), 500))[0]

    state = run(state)
    # bias from the init: 0.99 ** 500 < 0.7%; noise of the running mean: ~0.01 sigma
    _close(state["mean"], mu, atol=0.05 * float(sigma.max()), rtol=0)
    _close(state["var"], sigma ** 2 * (batch - 1) / batch, rtol=0.05, atol=0)
    # then evaluation standardizes fresh data from the same distribution
    x = mu + sigma * jax.random.normal(jax.random.key(8), (4096, 3), jnp.float32)
    y, _ = layer.apply(params, state, x)
    _close(np.mean(y, 0), 0.0, atol=0.08)
    _close(np.std(y, 0), 1.0, atol=0.08)


def test_batch_norm_eval_uses_only_running_statistics():
    layer = batch_norm()
    x = _rand((16, 4), loc=5.0, scale=3.0)
    params, _ = layer.init(KEY, x)
    params = _random_params(params)
    state = {"mean": jnp.array([1.0, 2.0, 3.0, 4.0]), "var": jnp.array([1.0, 4.0, 0.25, 2.0])}
    other = x.at[1:].set(_rand((15, 4), seed=9, loc=-7.0, scale=0.1))
    y, new_state = layer.apply(params, state, x)
    y_other, _ = layer.apply(params, state, other)
    np.testing.assert_array_equal(y[0], y_other[0])                 # independent of the batch
    _close(layer.apply(params, state, x[:1])[0][0], y[0])
    assert new_state is state
    ref, _, _ = np_batch_norm(x, params["scale"], params["offset"], state["mean"], state["var"],
                              train=False, momentum=0.99, eps=1e-5)
    _close(y, ref)
    # whereas in training the first example's output does depend on the rest of the batch
    y_train, _ = layer.apply(params, state, x, train=True)
    y_train_other, _ = layer.apply(params, state, other, train=True)
    assert np.abs(np.asarray(y_train[0]) - np.asarray(y_train_other[0])).max() > 0.1


def test_batch_norm_axis_name_averages_statistics_across_vmapped_shards():
    x = _rand((16, 5), loc=2.0, scale=3.0)
    layer, plain = batch_norm(axis_name="batch", momentum=0.9), batch_norm(momentum=0.9)
    params, state = layer.init(KEY, x)
    params = _random_params(params)
    y, new_state = plain.apply(params, state, x, train=True)
    shards = x.reshape(4, 4, 5)
    run = lambda m: jax.jit(jax.vmap(lambda xs: m.apply(params, state, xs, train=True),
                                     axis_name="batch"))(shards)
    sharded_y, sharded_state = run(layer)
    _close(sharded_y.reshape(16, 5), y)
    for k in ("mean", "var"):
        for i in range(4):
            _close(sharded_state[k][i], new_state[k])
    # without axis_name each shard would use its own statistics
    local_y, _ = run(plain)
    assert np.abs(np.asarray(local_y.reshape(16, 5)) - np.asarray(y)).max() > 1e-2
    # eval mode needs no bound axis; train mode outside a mapped axis says what to do
    _close(layer.apply(params, state, x)[0], plain.apply(params, state, x)[0])
    with pytest.raises(ValueError, match=r"batch_norm: axis_name='batch' is not bound here .*"
                                         r"apply the layer inside jax\.vmap"):
        layer.apply(params, state, x, train=True)


def test_batch_norm_bfloat16_input_uses_float32_statistics():
    # values near 256: bfloat16 has 8 significant bits, so a bfloat16 mean would be off by ~1
    x = (256.0 + _rand((512, 3), scale=2.0)).astype(jnp.bfloat16)
    layer = batch_norm(momentum=0.0)
    params, state = layer.init(KEY, x)
    assert state["mean"].dtype == params["scale"].dtype == jnp.float32
    y, new_state = layer.apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16 and new_state["mean"].dtype == jnp.float32
    xs = np.asarray(x, np.float64)
    _close(new_state["mean"], xs.mean(0), rtol=1e-6)
    _close(new_state["var"], xs.var(0), rtol=1e-4)
    _close(y, (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5), atol=0.02, rtol=0.01)


def test_batch_norm_running_statistics_get_no_gradient():
    layer = batch_norm(momentum=0.5)
    x = _rand((8, 3))
    params, state = layer.init(KEY, x)
    g = jax.grad(lambda x: jnp.sum(layer.apply(params, state, x, train=True)[1]["mean"]))(x)
    np.testing.assert_array_equal(g, np.zeros((8, 3)))


def test_batch_norm_errors():
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be a number in \[0, 1\], got 1.5"):
        batch_norm(momentum=1.5)
    with pytest.raises(ValueError, match=r"bn: epsilon must be a positive number, got 0"):
        batch_norm(epsilon=0, name="bn")
    with pytest.raises(ValueError, match=r"batch_norm: axis must be None, an int or a non-empty "
                                         r"tuple of ints, got 'a'"):
        batch_norm(axis="a")
    with pytest.raises(ValueError, match=r"batch_norm: use_scale must be True or False, got 'yes'"):
        batch_norm(use_scale="yes")
    shape = jax.ShapeDtypeStruct((4, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"batch_norm: axis must name distinct axes including the "
                                         r"batch axis 0, got \(1,\)"):
        batch_norm(axis=1).init(KEY, shape)
    with pytest.raises(ValueError, match=r"batch_norm: axis \(0, 2\) out of range for an input "
                                         r"with 2 axes"):
        batch_norm(axis=(0, 2)).init(KEY, shape)
    with pytest.raises(ValueError, match=r"batch_norm: expected an input \[B, \.\.\., F\] with at "
                                         r"least 2 axes, got shape \(4,\)"):
        batch_norm().init(KEY, jax.ShapeDtypeStruct((4,), jnp.float32))
    with pytest.raises(ValueError, match=r"batch_norm: expected a floating-point input, got int32"):
        batch_norm().init(KEY, jax.ShapeDtypeStruct((4, 3), jnp.int32))
    layer = batch_norm()
    params, state = layer.init(KEY, shape)
    with pytest.raises(ValueError, match=r"batch_norm: expected the axes not reduced over to have "
                                         r"shape \(3,\) \(as initialized\), got \(5,\) for input "
                                         r"shape \(4, 5\)"):
        layer.apply(params, state, jnp.zeros((4, 5)))


# ---- layer_norm, rms_norm, group_norm -----------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)])
def test_layer_norm_matches_numpy_and_flax(shape):
    x = _rand(shape, loc=1.0, scale=3.0)
    layer = layer_norm(epsilon=1e-3)
    params, state = layer.init(KEY, x)
    assert params["scale"].shape == params["offset"].shape == (shape[-1],) and state == {}
    params = _random_params(params)
    y, _ = layer.apply(params, state, x)
    _close(y, np_layer_norm(x, params["scale"], params["offset"], 1e-3))
    flax_y = nn.LayerNorm(epsilon=1e-3, use_fast_variance=False).apply(
        {"params": {"scale": params["scale"], "bias": params["offset"]}}, x)
    _close(y, flax_y)
    bare = layer_norm(use_scale=False, use_offset=False)
    assert bare.init(KEY, x)[0] == {}
    _close(bare.apply({}, {}, x)[0], np_layer_norm(x, 1.0, 0.0, 1e-5))


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)])
def test_rms_norm_matches_numpy_and_flax(shape):
    x = _rand(shape, loc=1.0, scale=3.0)
    layer = rms_norm()
    params, state = layer.init(KEY, x)
    assert list(params) == ["scale"] and state == {}
    params = _random_params(params)
    y, _ = layer.apply(params, state, x)
    _close(y, np_rms_norm(x, params["scale"], 1e-6))
    _close(y, nn.RMSNorm().apply({"params": {"scale": params["scale"]}}, x))
    _close(rms_norm(use_scale=False).apply({}, {}, x)[0], np_rms_norm(x, 1.0, 1e-6))


@pytest.mark.parametrize("shape,groups", [((2, 5, 5, 6), 3), ((3, 7, 4), 4), ((4, 6), 2)])
def test_group_norm_matches_numpy_and_flax(shape, groups):
    x = _rand(shape, loc=1.0, scale=2.0)
    layer = group_norm(groups)
    params, state = layer.init(KEY, x)
    assert params["scale"].shape == (shape[-1],) and state == {}
    params = _random_params(params)
    y, _ = layer.apply(params, state, x)
    _close(y, np_group_norm(x, groups, params["scale"], params["offset"], 1e-5))
    flax_y = nn.GroupNorm(num_groups=groups, use_fast_variance=False).apply(
        {"params": {"scale": params["scale"], "bias": params["offset"]}}, x)
    # flax is itself up to ~7e-5 off the float64 reference on small groups (3 values), ours ~3e-7
    _close(y, flax_y, atol=2e-4, rtol=1e-4)


def test_norms_keep_the_input_dtype_and_compute_in_float32():
    x = (100.0 + _rand((4, 3, 3, 8))).astype(jnp.bfloat16)
    xs = np.asarray(x, np.float64)
    for layer, ref in [(layer_norm(), np_layer_norm(xs, 1.0, 0.0, 1e-5)),
                       (rms_norm(), np_rms_norm(xs, 1.0, 1e-6)),
                       (group_norm(2), np_group_norm(xs, 2, 1.0, 0.0, 1e-5))]:
        params, state = layer.init(KEY, x)
        assert all(p.dtype == jnp.float32 for p in params.values())
        y, _ = layer.apply(params, state, x)
        assert y.dtype == jnp.bfloat16
        _close(y, ref, atol=0.02, rtol=0.01)


def test_norm_errors():
    with pytest.raises(ValueError, match=r"layer_norm: epsilon must be a positive number, got -1"):
        layer_norm(epsilon=-1)
    with pytest.raises(ValueError, match=r"rms_norm: use_scale must be True or False, got 1"):
        rms_norm(use_scale=1)
    with pytest.raises(ValueError, match=r"group_norm: num_groups must be a positive integer, got 0"):
        group_norm(0)
    with pytest.raises(ValueError, match=r"gn: the number of channels \(6\) must be divisible by "
                                         r"num_groups \(4\)"):
        group_norm(4, name="gn").init(KEY, jax.ShapeDtypeStruct((2, 5, 5, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"group_norm: expected a channels-last input \[B, \.\.\., C\], "
                                         r"got shape \(6,\)"):
        group_norm(2).init(KEY, jax.ShapeDtypeStruct((6,), jnp.float32))
    ln = layer_norm()
    params, state = ln.init(KEY, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"layer_norm: expected input of shape \[\.\.\., 4\] "
                                         r"\(features on the last axis; the size it was initialized "
                                         r"with\), got \(2, 5\)"):
        ln.apply(params, state, jnp.zeros((2, 5)))
    gn = group_norm(2)
    params, state = gn.init(KEY, jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"group_norm: expected input of shape \[\.\.\., 4\] "
                                         r"\(channels last; .*got \(2, 3, 6\)"):
        gn.apply(params, state, jnp.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match=r"rms_norm: expected a floating-point input, got int32"):
        rms_norm().init(KEY, jax.ShapeDtypeStruct((2, 3), jnp.int32))
