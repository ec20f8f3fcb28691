"""conv and conv_transpose: NumPy loop references, flax.linen with the same weights, errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.layers.conv import conv, conv_transpose

nn = pytest.importorskip("flax.linen")  # flax is a test extra, not a jnn dependency


def same_padding(n, k, s, d):
    """TensorFlow's SAME rule: output ceil(n / s), extra padding at the high end."""
    span = d * (k - 1) + 1
    total = max((-(-n // s) - 1) * s + span - n, 0)
    return total // 2, total - total // 2


def np_conv(x, w, b, strides, padding, dilation, groups):
    """Direct loop: y[b, o, f] = sum_{k, c} xpad[b, o*s + k*d, g(f)*cin + c] * w[k, c, f] + b[f]."""
    rank = w.ndim - 2
    spatial = x.shape[1:-1]
    if padding == "SAME":
        pads = [same_padding(n, k, s, d) for n, k, s, d in zip(spatial, w.shape, strides, dilation)]
    elif padding == "VALID":
        pads = [(0, 0)] * rank
    else:
        pads = list(padding)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    cin, features = w.shape[-2], w.shape[-1]
    per_group = features // groups
    out_sizes = [(xp.shape[1 + i] - (dilation[i] * (w.shape[i] - 1) + 1)) // strides[i] + 1
                 for i in range(rank)]
    y = np.zeros((x.shape[0], *out_sizes, features))
    for o in itertools.product(*[range(n) for n in out_sizes]):
        for k in itertools.product(*[range(n) for n in w.shape[:rank]]):
            pos = tuple(oi * s + ki * d for oi, ki, s, d in zip(o, k, strides, dilation))
            for f in range(features):
                g = f // per_group
                patch = xp[(slice(None), *pos, slice(g * cin, (g + 1) * cin))]  # [B, cin]
                y[(slice(None), *o, f)] += patch @ w[(*k, slice(None), f)]
    return y + (0 if b is None else b)


def _params(layer, x, seed=0):
    """Params of the shapes ``init`` gives (by eval_shape: nothing compiled), filled from NumPy;
    the bias is non-zero so that a missing or misplaced bias shows."""
    shapes, state = jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=v.shape).astype(v.dtype)) for k, v in shapes.items()}
    return params, state


def _flax_params(module, x, params):
    flax_params = {"kernel": params["w"], **({"bias": params["b"]} if "b" in params else {})}
    flax_shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    assert jax.tree_util.tree_map(jnp.shape, flax_shapes) == \
        jax.tree_util.tree_map(jnp.shape, flax_params)  # same layout, copied as is
    return {"params": flax_params}


CONV_CASES = [  # (features, kernel, input shape, kwargs)
    (3, (3,), (2, 7, 2), dict()),
    (3, (3,), (2, 7, 2), dict(padding="VALID", strides=2)),
    (2, (2,), (2, 8, 3), dict(padding=[(2, 1)], dilation=3)),
    (4, (3, 3), (2, 5, 6, 2), dict()),
    (4, (3, 2), (2, 6, 5, 2), dict(strides=(2, 1), padding="SAME")),
    (2, (3, 3), (2, 7, 7, 2), dict(strides=2, padding="VALID", dilation=(1, 2))),
    (3, (2, 3), (1, 4, 5, 2), dict(padding=[(0, 2), (1, 1)], use_bias=False)),
    (4, (3, 3), (2, 5, 5, 4), dict(feature_group_count=4)),  # depthwise
    (6, (2, 2), (2, 4, 4, 4), dict(feature_group_count=2, strides=2)),
    (2, (2, 2, 2), (2, 3, 4, 3, 2), dict()),
    (3, (2, 3, 2), (1, 4, 5, 4, 2), dict(strides=(1, 2, 2), padding="VALID")),
    (2, (3, 2, 2), (1, 4, 4, 4, 2), dict(dilation=(2, 1, 1), padding="SAME")),
]
IDS = [f"{len(k)}d-{'-'.join(f'{a}={b}' for a, b in kw.items()) or 'default'}"
       for _, k, _, kw in CONV_CASES]


@pytest.mark.parametrize("features,kernel,shape,kwargs", CONV_CASES, ids=IDS)
def test_conv_matches_numpy_loop_and_flax(features, kernel, shape, kwargs):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape).astype(np.float32))
    layer = conv(features, kernel, **kwargs)
    params, state = _params(layer, x)
    y, new_state = layer.apply(params, state, x)
    assert new_state == {} and sorted(params) == (["b", "w"] if kwargs.get("use_bias", True) else ["w"])
    rank = len(kernel)
    per_axis = lambda v: (v,) * rank if isinstance(v, int) else v
    expected = np_conv(np.asarray(x, np.float64), np.asarray(params["w"], np.float64),
                       None if "b" not in params else np.asarray(params["b"], np.float64),
                       per_axis(kwargs.get("strides", 1)), kwargs.get("padding", "SAME"),
                       per_axis(kwargs.get("dilation", 1)), kwargs.get("feature_group_count", 1))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)
    module = nn.Conv(features, kernel, strides=kwargs.get("strides", 1),
                     padding=kwargs.get("padding", "SAME"), kernel_dilation=kwargs.get("dilation", 1),
                     feature_group_count=kwargs.get("feature_group_count", 1),
                     use_bias=kwargs.get("use_bias", True))
    np.testing.assert_allclose(y, module.apply(_flax_params(module, x, params), x), rtol=1e-5, atol=1e-4)


def np_conv_transpose_valid(x, w, b, strides):
    """Scatter definition: every input pixel adds x[i] * w (spatially flipped) at i * stride."""
    rank = w.ndim - 2
    k = w.shape[:rank]
    out = [(n - 1) * s + kk for n, s, kk in zip(x.shape[1:-1], strides, k)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    flipped = w[tuple(slice(None, None, -1) for _ in range(rank))]
    for i in itertools.product(*[range(n) for n in x.shape[1:-1]]):
        for j in itertools.product(*[range(n) for n in k]):
            pos = tuple(ii * s + jj for ii, s, jj in zip(i, strides, j))
            y[(slice(None), *pos, slice(None))] += x[(slice(None), *i, slice(None))] @ flipped[j]
    return y + b


@pytest.mark.parametrize("kernel,strides,shape", [((3,), (2,), (2, 4, 2)), ((2, 3), (2, 1), (2, 3, 4, 2)),
                                                  ((3, 3), (1, 1), (1, 3, 3, 3))])
def test_conv_transpose_valid_matches_numpy_scatter(kernel, strides, shape):
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape).astype(np.float32))
    layer = conv_transpose(3, kernel, strides=strides, padding="VALID")
    params, state = _params(layer, x)
    y, _ = layer.apply(params, state, x)
    expected = np_conv_transpose_valid(np.asarray(x, np.float64), np.asarray(params["w"], np.float64),
                                       np.asarray(params["b"], np.float64), strides)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("features,kernel,shape,kwargs", [
    (3, (3,), (2, 5, 2), dict(strides=2)),
    (2, (3, 3), (2, 4, 4, 3), dict(strides=2)),
    (2, (4, 4), (2, 3, 5, 2), dict(strides=(2, 3), padding="VALID")),
    (3, (3, 2), (1, 4, 4, 2), dict(padding=[(1, 2), (0, 1)], strides=2, dilation=(1, 2))),
    (2, (2, 2, 2), (1, 2, 3, 2, 2), dict(strides=2, use_bias=False)),
])
def test_conv_transpose_matches_flax_with_same_weights(features, kernel, shape, kwargs):
    x = jnp.asarray(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    layer = conv_transpose(features, kernel, **kwargs)
    params, state = _params(layer, x)
    module = nn.ConvTranspose(features, kernel, strides=kwargs.get("strides", 1),
                              padding=kwargs.get("padding", "SAME"),
                              kernel_dilation=kwargs.get("dilation", 1),
                              use_bias=kwargs.get("use_bias", True))
    expected = module.apply(_flax_params(module, x, params), x)
    np.testing.assert_allclose(layer.apply(params, state, x)[0], expected, rtol=1e-5, atol=1e-4)


def test_default_init_layout_dtype_and_mixed_precision():
    layer = conv(256, (3, 3), feature_group_count=2)
    params, state = jax.jit(layer.init)(jax.random.key(0), jnp.zeros((1, 5, 5, 4), jnp.bfloat16))
    assert params["w"].shape == (3, 3, 2, 256) and params["b"].shape == (256,) and state == {}
    assert params["w"].dtype == jnp.float32  # params stay float32; compute in the input's dtype
    # lecun_normal over fan_in = 3 * 3 * (4 // 2) = 18: std sqrt(1 / 18); bias zeros
    assert abs(float(jnp.std(params["w"])) - (1 / 18) ** 0.5) < 0.02
    assert not jnp.any(params["b"])
    y, _ = layer.apply(params, state, jnp.ones((2, 5, 5, 4), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 5, 5, 256)


def test_in_a_model_with_pooling():
    from jnn.layers.pooling import max_pool
    model = jnn.serial(conv(4, (3, 3)), jnn.relu(), max_pool((2, 2)), conv(8, (3, 3), strides=2),
                       jnn.flatten(), jnn.dense(10))
    x = jax.ShapeDtypeStruct((3, 12, 12, 1), jnp.float32)
    params, state = jax.eval_shape(model.init, jax.random.key(0), x)
    assert sorted(params) == ["conv_0", "conv_1", "dense_0"]
    assert params["conv_1"]["w"].shape == (3, 3, 4, 8) and params["dense_0"]["w"].shape == (72, 10)
    assert jnn.output_shape(model, params, state, x).shape == (3, 10)


@pytest.mark.parametrize("make,match", [
    (lambda: conv(0, (3, 3)), r"conv: features must be a positive integer, got 0"),
    (lambda: conv(4, 3), r"conv: kernel_size must be a tuple .* \(3, 3\) for 2-D, got the int 3"),
    (lambda: conv(4, (3, 0)), r"conv: kernel_size must be a non-empty tuple of positive integers"),
    (lambda: conv(4, ()), r"conv: kernel_size must be a non-empty tuple"),
    (lambda: conv(4, (1, 1, 1, 1)), r"conv: kernel_size must have 1, 2 or 3 entries"),
    (lambda: conv(4, (3, 3), strides=0), r"conv: strides must be a positive integer or a tuple of 2"),
    (lambda: conv(4, (3, 3), strides=(1, 2, 1)), r"strides must be .* tuple of 2 .*got \(1, 2, 1\)"),
    (lambda: conv(4, (3, 3), dilation=-1), r"conv: dilation must be a positive integer"),
    (lambda: conv(4, (3, 3), padding="FULL"), r"conv: padding must be 'SAME', 'VALID' or .*'FULL'"),
    (lambda: conv(4, (3, 3), padding=1), r"conv: padding must .*\[\(1, 1\), \(1, 1\)\]"),
    (lambda: conv(4, (3, 3), padding=[(1, 1)]), r"conv: padding must .* 2 \(lo, hi\) pairs"),
    (lambda: conv(4, (3, 3), padding=[(1, 1), (-1, 0)]), r"non-negative integers"),
    (lambda: conv(4, (3, 3), feature_group_count=0), r"conv: feature_group_count must be a positive"),
    (lambda: conv(5, (3, 3), feature_group_count=2),
     r"conv: features \(5\) must be divisible by feature_group_count \(2\)"),
    (lambda: conv(4, (3, 3), w_init="nope"), r"conv w_init: unknown initializer 'nope'"),
    (lambda: conv_transpose(0, (3, 3)), r"conv_transpose: features must be a positive integer"),
    (lambda: conv_transpose(2, (3, 3), strides=(2,)), r"conv_transpose: strides must be"),
])
def test_bad_hyperparameters_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer,shape,match", [
    (conv(4, (3, 3)), (2, 8, 8),
     r"conv: a 2-D kernel of size \(3, 3\) expects inputs of rank 4 \[B, H, W, C\], got shape \(2, 8, 8\)"),
    (conv(4, (3,)), (2, 8, 8, 1), r"conv: a 1-D kernel .* rank 3 \[B, W, C\], got shape \(2, 8, 8, 1\)"),
    (conv(4, (3, 3), padding="VALID"), (1, 2, 8, 1),
     r"conv: kernel of size \(3, 3\) \(span 3 with dilation 1\) is larger than the padded input "
     r"along spatial axis 0 \(size 2 \+ padding 0\)"),
    (conv(4, (3, 3), padding="VALID", dilation=3), (1, 8, 6, 1), r"span 7 with dilation 3.*axis 1"),
    (conv(4, (3, 3), padding=[(0, 0), (1, 0)]), (1, 4, 1, 1), r"axis 1 \(size 1 \+ padding 1\)"),
    (conv(4, (3, 3), feature_group_count=2), (1, 4, 4, 3),
     r"conv: input channels \(3\) must be divisible by feature_group_count \(2\)"),
    (conv_transpose(4, (3, 3), name="up"), (2, 8, 8), r"up: a 2-D kernel .* got shape \(2, 8, 8\)"),
])
def test_bad_input_raises_at_init(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("layer", [conv(4, (3, 3), name="c1"), conv_transpose(4, (3, 3), name="c1")])
def test_wrong_channels_or_rank_at_apply(layer):
    params, state = _params(layer, jnp.zeros((1, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"c1: expected input of shape \[\.\.\., 3\] \(channels last; the size it "
                                         r"was initialized with\), got \(1, 6, 6, 2\)"):
        layer.apply(params, state, jnp.zeros((1, 6, 6, 2)))
    with pytest.raises(ValueError, match=r"c1: a 2-D kernel .* got shape \(6, 6, 3\)"):
        jax.jit(layer.apply)(params, state, jnp.zeros((6, 6, 3)))


def test_valid_input_too_small_at_apply_names_layer_in_model():
    model = jnn.serial(conv(2, (5, 5), padding="VALID"))
    params, state = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"\[conv_0\] conv: kernel of size \(5, 5\).*size 4 \+ padding 0"):
        model.apply(params, state, jnp.zeros((1, 4, 8, 1)))


def test_conv_transpose_defaults_and_explicit_padding_boundary():
    """Defaults: stride 1, SAME (the output keeps the spatial size). With explicit padding the
    input dilated by the strides ((n - 1) * s + 1 positions) plus the padding must hold the
    kernel: 2 positions at stride 2 dilate to 3, which holds a kernel of 3 but not of 4."""
    x = jnp.ones((2, 5, 5, 3))
    layer = conv_transpose(4, (3, 3))
    params, _ = layer.init(jax.random.key(0), x)
    assert layer.apply(params, {}, x)[0].shape == (2, 5, 5, 4)
    small = jnp.ones((1, 2, 7, 1))                       # spatial axis 0: 2 positions
    pads = [(0, 0), (1, 1)]
    fits = conv_transpose(1, (3, 3), strides=2, padding=pads)
    params, _ = fits.init(jax.random.key(0), small)
    out = fits.apply(params, {}, small)[0]
    assert out.shape == (1, 1, 13 + 2 - 2, 1)            # 3 - 3 + 1 rows; 13 + 2 - 3 + 1 columns
    with pytest.raises(ValueError, match=r"^big: kernel of size \(4, 3\) \(span 4 with dilation 1\) is larger than "
                                         r"the padded input along spatial axis 0 \(size 3 \+ padding 0\)"):
        conv_transpose(1, (4, 3), strides=2, padding=pads, name="big").init(jax.random.key(0), small)
    with pytest.raises(ValueError, match=r"^conv_transpose: a 2-D kernel of size \(3, 3\) expects inputs of rank 4 "
                                         r"\[B, H, W, C\], got shape \(2, 5, 3\)$"):
        conv_transpose(4, (3, 3)).init(jax.random.key(0), jnp.ones((2, 5, 3)))
