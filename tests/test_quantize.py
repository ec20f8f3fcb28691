"""jnn.quantize: per-channel int8 within scale/2 (NumPy reference, Qwix when installed), outputs close
to float on real MNIST, bytes saved, export of a quantized model holding int8 weights."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

SHARED = os.environ.get("JNN_DATA_DIR", "/work/shared/data")


@pytest.mark.parametrize("shape", [(7, 5), (3, 3, 4, 6), (8, 2, 4)])
def test_dequantized_within_half_scale_per_channel(shape):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32) * np.linspace(0.1, 3, shape[-1])
    w[..., 0] = 0.0                                                     # an all-zero channel stays zero
    q = jnn.quantize.quantize({"layer": {"w": jnp.asarray(w), "b": jnp.ones(shape[-1])}})
    assert q["layer"]["w"]["int8"].dtype == jnp.int8 and q["layer"]["w"]["int8"].shape == shape
    np.testing.assert_array_equal(q["layer"]["b"], np.ones(shape[-1]))            # biases stay float
    scale = np.abs(w).reshape(-1, shape[-1]).max(axis=0) / 127
    np.testing.assert_allclose(q["layer"]["w"]["scale"], scale, rtol=1e-6)
    back = np.asarray(jnn.quantize.dequantize(q)["layer"]["w"])
    assert np.all(np.abs(back - w) <= scale / 2 * (1 + 1e-5) + 1e-12)
    assert np.abs(q["layer"]["w"]["int8"]).max() == 127 and np.all(back[..., 0] == 0)


def test_agrees_with_qwix():
    qwix = pytest.importorskip("qwix")
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    theirs = np.asarray(qwix.dequantize(qwix.quantize(w, jnp.int8, channelwise_axes=(3,))))
    mine = jnn.quantize.quantize({"w": w})["w"]
    ours = np.asarray(jnn.quantize.dequantize({"w": mine})["w"])
    assert np.all(np.abs(ours - theirs) <= np.asarray(mine["scale"]) * 1.01)     # at most one step apart


def test_include_exclude_and_errors():
    params = {"enc": {"w": jnp.ones((2, 2))}, "dec": {"w": jnp.ones((2, 2))}, "ids": {"w": jnp.ones((2, 2), jnp.int32)}}
    q = jnn.quantize.quantize(params, include="*/w", exclude=("dec/*", "ids/*"))
    assert set(q["enc"]["w"]) == {"int8", "scale"} and q["dec"]["w"].dtype == jnp.float32
    with pytest.raises(ValueError, match="jnn.quantize.quantize: ids/w is int32, not a float weight"):
        jnn.quantize.quantize(params)
    with pytest.raises((TypeError, ValueError), match="jnn.quantize.wrap"):
        jnn.quantize.wrap("not a layer")


@pytest.mark.skipif(not jnn.data.mnist_available(SHARED), reason="real MNIST not found")
def test_mnist_outputs_close_and_bytes_saved():
    x, y = jnn.data.load_mnist("train", data_dir=SHARED, download=False)
    xt, yt = jnn.data.load_mnist("test", data_dir=SHARED, download=False)
    model = jnn.serial(jnn.conv(8, (3, 3), strides=2), jnn.relu(), jnn.flatten(), jnn.dense(64), jnn.relu(),
                       jnn.dense(10))
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(2e-3), (x[:4000], y[:4000]),
                           key=jax.random.key(0), epochs=2, batch_size=64, metrics={}, verbose=0)
    params, state = result.train_state.params, result.train_state.state
    qparams = jnn.quantize.quantize(params)
    float_logits = np.asarray(jnn.train.predict(model, params, state, xt[:2000]))
    int8_logits = np.asarray(jnn.train.predict(jnn.quantize.wrap(model), qparams, state, xt[:2000]))
    float_acc, int8_acc = (np.mean(np.argmax(l, -1) == yt[:2000]) for l in (float_logits, int8_logits))
    assert float_acc > 0.85 and abs(float_acc - int8_acc) <= 0.01
    assert np.mean(np.argmax(float_logits, -1) == np.argmax(int8_logits, -1)) >= 0.99
    assert np.max(np.abs(float_logits - int8_logits)) < 0.05 * np.max(np.abs(float_logits))
    weights = sum(params[k]["w"].size for k in ("conv_0", "dense_0", "dense_1"))
    assert jnn.quantize.nbytes(params) - jnn.quantize.nbytes(qparams) == 3 * weights - 4 * (8 + 64 + 10)


def test_export_holds_int8_weights(tmp_path):
    model = jnn.serial(jnn.dense(256), jnn.relu(), jnn.dense(10))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 512)))
    qmodel, qparams = jnn.quantize.wrap(model), jnn.quantize.quantize(params)
    x = jax.random.normal(jax.random.key(1), (4, 512))
    jnn.export.export_model(tmp_path / "f32.jnnx", model, params, state, x, platforms=("cpu",))
    jnn.export.export_model(tmp_path / "int8.jnnx", qmodel, qparams, state, x, platforms=("cpu",))
    f32, int8 = ((tmp_path / n).stat().st_size for n in ("f32.jnnx", "int8.jnnx"))
    assert f32 > jnn.quantize.nbytes(params) and int8 < 0.3 * f32       # 4 bytes -> 1 byte per weight
    _, fns = jnn.export.load(tmp_path / "int8.jnnx")
    np.testing.assert_allclose(fns["predict"](x), qmodel.apply(qparams, state, x)[0], rtol=1e-5, atol=1e-5)
    jnn.export.export_model(tmp_path / "int8_params.jnnx", qmodel, qparams, state, x, bake_params=False,
                            platforms=("cpu",))
    _, fns = jnn.export.load(tmp_path / "int8_params.jnnx")
    np.testing.assert_allclose(fns["predict"](qparams, state, x), qmodel.apply(qparams, state, x)[0], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.skipif(not (jnn.data.mnist_available(SHARED) and os.path.isfile(f"{SHARED}/tinyshakespeare/input.txt")),
                    reason="real MNIST or Tiny Shakespeare not found")
def test_experiment_on_a_tiny_config(capsys):
    from experiments_path import load
    experiment = load("quantize")
    rows = experiment.main(experiment.Config(train_limit=2000, test_limit=1000, epochs=1, cnn_features=(8, 16),
                                             lm_steps=20, lm_layers=1, lm_features=32))
    assert [r["model"] for r in rows] == ["MNIST MLP 784-128-64-10", "MNIST CNN 8-16 conv", "char transformer 1x32"]
    for row in rows[:2]:                             # the tiny LM's float embedding is half its bytes
        assert row["int8 param bytes"] < 0.3 * row["float32 param bytes"]
        assert row["int8 .jnnx bytes"] < 0.3 * row["float32 .jnnx bytes"]
        assert abs(row["int8 test accuracy"] - row["float32 test accuracy"]) <= 0.01 and row["float32 test accuracy"] > 0.6
    assert rows[2]["int8 param bytes"] < 0.5 * rows[2]["float32 param bytes"]
    assert abs(rows[2]["int8 val nats/char"] - rows[2]["float32 val nats/char"]) < 0.01
    assert "| char transformer 1x32 |" in capsys.readouterr().out
