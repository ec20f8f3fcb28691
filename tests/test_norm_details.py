"""jnn.layers.norm in detail: tests written against the mutants of norm.py that the suite missed
(issue #21, tests/MUTATION.md): kinds and names, every option's error labelled, the boundaries
of the shape checks, the dtypes statistics are computed in, and cross-replica batch norm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

KEY = jax.random.key(0)
NORMS = {"batch_norm": jnn.batch_norm, "layer_norm": jnn.layer_norm, "rms_norm": jnn.rms_norm,
         "group_norm": lambda **kw: jnn.group_norm(2, **kw)}


def _x(shape, dtype=np.float32, scale=1.0, seed=0):
    return np.asarray(np.random.default_rng(seed).normal(0.5, scale, shape), dtype)


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_kinds_names_and_labelled_errors(kind):
    make = NORMS[kind]
    assert (make().kind, make().name, make(name="mine").name) == (kind, None, "mine")
    for label, layer in ((kind, make()), ("mine", make(name="mine"))):
        with pytest.raises(ValueError, match=rf"^{label}: expected a floating-point input, got int32"):
            layer.init(KEY, jnp.zeros((4, 6), jnp.int32))
        params, state = layer.init(KEY, jnp.zeros((4, 6)))
        with pytest.raises(ValueError, match=rf"^{label}: expected a floating-point input, got int32"):
            layer.apply(params, state, jnp.zeros((4, 6), jnp.int32))
    with pytest.raises(ValueError, match=rf"^{kind}: epsilon must be a positive number, got 0"):
        make(epsilon=0)
    flags = ("use_scale",) if kind == "rms_norm" else ("use_scale", "use_offset")
    for flag in flags:
        with pytest.raises(ValueError, match=rf"^mine: {flag} must be True or False, got 1$"):
            make(name="mine", **{flag: 1})


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_last_axis_norms_take_one_vector_and_reject_scalars(kind):
    layer = NORMS[kind]()
    x = _x(6)
    params, _ = layer.init(KEY, x)
    y, _ = layer.apply(params, {}, x)                       # [F]: one example without a batch axis
    centred = x - x.mean() if kind == "layer_norm" else x
    eps = 1e-5 if kind == "layer_norm" else 1e-6             # the defaults
    np.testing.assert_allclose(y, centred / np.sqrt(np.mean(centred ** 2) + eps), rtol=1e-5)
    with pytest.raises(ValueError, match=rf"^{kind}: expected an input \[\.\.\., F\] with at least one axis, "
                                         r"got shape \(\)$"):
        layer.init(KEY, jnp.float32(1.0))
    with pytest.raises(ValueError, match=rf"^{kind}: expected input of shape \[\.\.\., 6\] \(features on the "
                                         r"last axis; the size it was initialized with\), got \(\)$"):
        layer.apply(params, {}, jnp.float32(1.0))
    bare = NORMS[kind](use_scale=False, **({} if kind == "rms_norm" else {"use_offset": False}))
    with pytest.raises(ValueError, match=rf"^{kind}: expected input of shape \[\.\.\., F\] "):
        bare.apply({}, {}, jnp.float32(1.0))


def test_rms_norm_adds_epsilon_to_the_mean_square():
    x = _x((3, 8), scale=1e-3, seed=1) - 0.5               # values ~1e-3: epsilon 1e-5 matters
    for eps in (1e-5, 1e-3):
        layer = jnn.rms_norm(epsilon=eps, use_scale=False)
        y, _ = layer.apply({}, {}, x)
        np.testing.assert_allclose(y, x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + eps), rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_statistics_and_params_in_float32_or_float64_as_the_input(kind):
    """Under x64, a float32 input gets float32 params and state and no float64 anywhere in its
    computation; a float64 input gets float64 throughout and matches NumPy to 1e-12."""
    with jax.enable_x64(True):
        layer = NORMS[kind]()
        for dtype in (jnp.float32, jnp.float64, jnp.bfloat16):
            params, state = layer.init(KEY, jnp.zeros((4, 6), dtype))
            expected = jnp.float64 if dtype == jnp.float64 else jnp.float32
            assert {a.dtype for a in jax.tree_util.tree_leaves((params, state))} == {jnp.dtype(expected)}
            jaxpr = jax.make_jaxpr(lambda x: layer.apply(params, state, x, train=True))(jnp.zeros((4, 6), dtype))
            dtypes = {v.aval.dtype for eqn in jaxpr.eqns for v in eqn.outvars}
            assert (jnp.dtype(jnp.float64) in dtypes) == (dtype == jnp.float64), (dtype, dtypes)
        x = _x((4, 6), np.float64)
        params, state = layer.init(KEY, x)
        y, _ = layer.apply(params, state, x, train=True)
        axes = {"batch_norm": 0, "layer_norm": -1, "rms_norm": -1}.get(kind)
        if kind == "group_norm":
            g = x.reshape(4, 2, 3)
            ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(4, 6)
        elif kind == "rms_norm":
            ref = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6)      # rms_norm's default epsilon
        else:
            ref = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_batch_norm_needs_two_values_per_feature_unless_averaged_over_a_named_axis():
    layer = jnn.batch_norm()
    params, state = layer.init(KEY, jnp.zeros((2, 3)))
    x = _x((4, 3))
    layer.apply(params, state, x[:2], train=True)          # two values per feature: allowed
    with pytest.raises(ValueError, match=r"^batch_norm: training mode needs more than one value per feature to "
                                         r"normalize over, got input shape \(1, 3\); use a larger batch, or "
                                         r"train=False$"):
        layer.apply(params, state, x[:1], train=True)
    # one example per replica, statistics averaged over the vmapped axis: the whole batch's
    shared = jnn.batch_norm(axis_name="replicas")
    y = jax.vmap(lambda xb: shared.apply(params, state, xb, train=True)[0], axis_name="replicas")(x[:, None, :])
    whole = layer.apply(params, state, x, train=True)[0]
    np.testing.assert_allclose(y[:, 0, :], whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("axis", [(), (True,), (0, 1.5), "0", 2.0])
def test_batch_norm_rejects_bad_axes_when_built(axis):
    with pytest.raises(ValueError, match=r"^batch_norm: axis must be None, an int or a non-empty tuple of ints, got "):
        jnn.batch_norm(axis=axis)


def test_batch_norm_with_the_features_on_a_middle_axis_matches_numpy():
    """axis=(0, 2) on [B, C, L]: statistics per channel C (the broadcast must keep the reduced
    axes, or a [C] mean meets the L axis)."""
    x = _x((4, 3, 5), seed=2)
    layer = jnn.batch_norm(axis=(0, 2), momentum=0.5)
    params, state = layer.init(KEY, x)
    y, new_state = layer.apply(params, state, x, train=True)
    mean, var = x.mean((0, 2), keepdims=True), x.var((0, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_state["mean"], 0.5 * mean.ravel(), rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.5 + 0.5 * var.ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"^batch_norm: axis_name='replicas' is not bound here"):
        jnn.batch_norm(axis=(0, 2), axis_name="replicas").apply(params, state, x, train=True)


def test_batch_norm_keeps_its_running_statistics_when_only_the_variance_overflows():
    """[1e20, -1e20]: a finite mean (0) and an infinite float32 variance; the running statistics
    must not take either."""
    layer = jnn.batch_norm(momentum=0.5)
    params, state = layer.init(KEY, jnp.zeros((2, 1)))
    _, new_state = layer.apply(params, state, jnp.array([[1e20], [-1e20]], jnp.float32), train=True)
    np.testing.assert_array_equal(new_state["mean"], state["mean"])
    np.testing.assert_array_equal(new_state["var"], state["var"])
