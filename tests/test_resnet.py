"""The residual block (fan_out of conv-bn-relu-conv-bn and a skip) and the small ResNet."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from test_conv import np_conv
from test_norm import np_batch_norm
from test_registry import _random_like


# NumPy references (float64, no jnn), from test_conv.py and test_norm.py.
def _np_conv_same(x, w, stride=1):
    return np_conv(x, w, None, (stride, stride), "SAME", (1, 1), 1)


def _np_batch_norm(x, params, state, train, momentum=0.99, epsilon=1e-5):
    """Returns (y, new_state)."""
    y, mean, var = np_batch_norm(x, params["scale"], params["offset"], state["mean"], state["var"], train=train,
                                 momentum=momentum, eps=epsilon)
    return y, {"mean": mean, "var": var}


def _np_residual_block(x, params, state, strides, train):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); returns (y, new_state)."""
    p, s = params["sum"]["main"], state["sum"]["main"]
    h, bn0 = _np_batch_norm(_np_conv_same(x, p["conv_0"]["w"], strides), p["batch_norm_0"], s["batch_norm_0"], train)
    h, bn1 = _np_batch_norm(_np_conv_same(np.maximum(h, 0), p["conv_1"]["w"]), p["batch_norm_1"], s["batch_norm_1"],
                            train)
    new_state = {"sum": {"main": {"batch_norm_0": bn0, "batch_norm_1": bn1}}}
    if "shortcut" in params["sum"]:
        q, t = params["sum"]["shortcut"], state["sum"]["shortcut"]
        skip, bn = _np_batch_norm(_np_conv_same(x, q["conv_0"]["w"], strides), q["batch_norm_0"], t["batch_norm_0"],
                                  train)
        new_state["sum"]["shortcut"] = {"batch_norm_0": bn}
    else:
        skip = x
    return np.maximum(h + skip, 0), new_state


def _float64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("train", [False, True], ids=["running_statistics", "batch_statistics"])
@pytest.mark.parametrize("strides, project", [(1, False), (2, True)], ids=["identity", "projected"])
def test_residual_block_matches_numpy(strides, project, train):
    block = jnn.residual_block(4, strides=strides, project=project)
    x = jax.random.normal(jax.random.key(1), (3, 7, 7, 2 if project else 4))
    params, state = block.init(jax.random.key(0), x)
    params, state = _random_like(params, 2), _random_like(state, 3)
    y, new_state = jax.jit(lambda p, s, x: block.apply(p, s, x, train=train))(params, state, x)
    y_ref, state_ref = _np_residual_block(_float64(x), _float64(params), _float64(state), strides, train)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), new_state, state_ref)


def test_resnet_matches_numpy():
    """The whole net: stem conv-bn-relu, an identity block, a strided projected block, global
    average pooling and the dense classifier, against NumPy with every parameter random."""
    model = jnn.resnet(5, stage_features=(4, 6))
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 2))
    params, state = model.init(jax.random.key(0), x)
    params, state = _random_like(params, 4), _random_like(state, 5)
    p, s, h = _float64(params), _float64(state), _float64(x)
    h = np.maximum(_np_batch_norm(_np_conv_same(h, p["conv_0"]["w"]), p["batch_norm_0"], s["batch_norm_0"],
                                  False)[0], 0)
    h = _np_residual_block(h, p["residual_block_0"], s["residual_block_0"], 1, False)[0]
    h = _np_residual_block(h, p["residual_block_1"], s["residual_block_1"], 2, False)[0]
    logits = h.mean((1, 2)) @ p["dense_0"]["w"] + p["dense_0"]["b"]
    np.testing.assert_allclose(jax.jit(model.apply)(params, state, x)[0], logits, rtol=1e-4, atol=1e-4)


def test_residual_block_without_projection_reports_shape_mismatch_at_init():
    with pytest.raises(ValueError, match=r"fan_out: merge='add' needs branch outputs of one shape"):
        jnn.residual_block(8).init(jax.random.key(0), jnp.zeros((1, 6, 6, 4)))


def test_small_resnet_trains_on_digits():
    x, y = jnn.data.load_digits()
    model = jnn.resnet(10, stage_features=(8, 16))
    # stepwise, as fit's docstring advises for conv nets on CPU (10 s here; fused, 3-4x that)
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(3e-3), (x, y),
                           key=jax.random.key(0), epochs=8, batch_size=32, val_split=0.2, fused=False,
                           verbose=0)
    assert result.history["loss"][-1] < 0.1 * result.history["loss"][0]
    # evaluation uses batch norm's running statistics (momentum 0.99), which lag training a little
    assert max(result.history["val_accuracy"][-3:]) > 0.9
