"""Flax Linen and PyTorch weights loaded through jnn.convert give the source framework's outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def _jnn_cnn():
    return jnn.serial(jnn.conv(4, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.conv(6, (3, 3), padding="VALID"),
                      jnn.batch_norm(), jnn.relu(), jnn.flatten(), jnn.dense(5))


def test_flax_mlp_and_cnn_outputs_match():
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.tanh(nn.Dense(8)(x))   # Linen numbers modules in construction order
            return nn.Dense(3)(h)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), strides=(2, 2))
            x = nn.relu(nn.BatchNorm(use_running_average=True, momentum=0.99, epsilon=1e-5)(
                nn.Conv(6, (3, 3), padding="VALID")(x)))
            return nn.Dense(5)(x.reshape(x.shape[0], -1))

    cases = [(MLP(), jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dense(3)), (4, 6)),
             (CNN(), _jnn_cnn(), (4, 10, 10, 3))]
    for flax_model, model, shape in cases:
        x = jax.random.normal(jax.random.key(1), shape)
        variables = flax_model.init(jax.random.key(2), x)
        if "batch_stats" in variables:   # non-trivial statistics, so a mapping mistake shows
            variables = {**variables, "batch_stats": jax.tree.map(
                lambda a: a + jax.random.uniform(jax.random.key(3), a.shape), variables["batch_stats"])}
        like = jax.eval_shape(model.init, jax.random.key(0), x)
        params, state = jnn.convert.from_flax(variables, like=like)
        ours, _ = model.apply(params, state, x)
        np.testing.assert_allclose(ours, flax_model.apply(variables, x), atol=1e-5, rtol=1e-5)
        back = jnn.convert.to_flax(params, state)
        assert jax.tree.structure(back) == jax.tree.structure(jax.tree.map(np.asarray, dict(variables)))
        np.testing.assert_allclose(flax_model.apply(back, x), ours, atol=1e-6)


def test_flax_norm_bias_maps_to_offset():
    params, state = jnn.convert.from_flax({"params": {"LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                                                      "block": {"Dense_1": {"kernel": jnp.ones((2, 2))}}}})
    assert sorted(jnn.io.flatten(params)) == ["block/dense_1/w", "layer_norm_0/offset", "layer_norm_0/scale"]


def _torch_and_jnn():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch, torch.nn


def test_torch_mlp_matches():
    torch, tnn = _torch_and_jnn()
    net = tnn.Sequential(tnn.Linear(6, 8), tnn.Tanh(), tnn.Linear(8, 3))
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    model = jnn.serial(jnn.dense(8), jnn.tanh(), jnn.dense(3))
    like = jax.eval_shape(model.init, jax.random.key(0), x)[0]
    params = jnn.convert.from_torch(net.state_dict(), {"dense_0": "0", "dense_1": "2"}, like=like)
    ours, _ = model.apply(params, {}, x)
    np.testing.assert_allclose(ours, net(torch.from_numpy(x)).detach().numpy(), atol=1e-5, rtol=1e-5)


def test_torch_cnn_matches_with_nchw_flatten_reordered():
    torch, tnn = _torch_and_jnn()
    net = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(4, 6, 3), tnn.ReLU(), tnn.Flatten(), tnn.Linear(6 * 3 * 3, 5))
    x = np.random.default_rng(0).normal(size=(4, 10, 10, 3)).astype(np.float32)    # NHWC for jnn
    model = jnn.serial(jnn.conv(4, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.conv(6, (3, 3), padding="VALID"),
                       jnn.relu(), jnn.flatten(), jnn.dense(5))
    like = jax.eval_shape(model.init, jax.random.key(0), x)[0]
    mapping = {"conv_0": "0", "conv_1": "3", "dense_0": {"module": "6", "flattened_chw": (6, 3, 3)}}
    params = jnn.convert.from_torch(net.state_dict(), mapping, like=like)
    ours, _ = model.apply(params, {}, x)
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    # without the row reordering the outputs differ: the option is needed, not decorative
    plain = jnn.convert.from_torch(net.state_dict(), {**mapping, "dense_0": "6"}, like=like)
    assert np.abs(np.asarray(model.apply(plain, {}, x)[0]) - theirs).max() > 1e-2


def test_torch_lstm_matches_gate_order_and_summed_biases():
    torch, tnn = _torch_and_jnn()
    lstm = tnn.LSTM(3, 5, batch_first=True)
    head = tnn.Linear(5, 2)
    with torch.no_grad():   # distinct biases so that dropping one of the two would show
        for b in (lstm.bias_ih_l0, lstm.bias_hh_l0):
            b.uniform_(-1, 1)
    x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
    model = jnn.serial(jnn.recurrent(jnn.lstm_cell(5)), jnn.dense(2))
    like = jax.eval_shape(model.init, jax.random.key(0), x)[0]
    sd = {**{f"rnn.{k}": v for k, v in lstm.state_dict().items()}, **{f"head.{k}": v for k, v in head.state_dict().items()}}
    params = jnn.convert.from_torch(sd, {"lstm_0": "rnn", "dense_0": "head"}, like=like)
    ours, _ = model.apply(params, {}, x)
    seq, _ = lstm(torch.from_numpy(x))
    np.testing.assert_allclose(ours, head(seq).detach().numpy(), atol=1e-5, rtol=1e-5)


def test_from_torch_names_the_missing_module():
    torch, tnn = _torch_and_jnn()
    with pytest.raises(KeyError, match="no torch module 'fc'"):
        jnn.convert.from_torch(tnn.Linear(2, 2).state_dict(), {"dense_0": "fc"})
