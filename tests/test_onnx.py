"""ONNX export through jax2onnx, checked with onnxruntime against jnn's own outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

MODELS = {
    "mlp": (lambda: jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dropout(0.1), jnn.dense(3)), (4, 4, 1)),
    "cnn": (lambda: jnn.serial(jnn.conv(4, (3, 3), strides=2), jnn.batch_norm(), jnn.relu(), jnn.avg_pool((2, 2)),
                               jnn.flatten(), jnn.dense(3)), (8, 8, 2)),
    "transformer": (lambda: jnn.serial(jnn.dense(16), jnn.encoder_block(2, 32),
                                       jnn.layer_norm(), jnn.dense(3)), (8, 5)),
    "lstm": (lambda: jnn.serial(jnn.recurrent(jnn.lstm_cell(5)), jnn.dense(2)), (6, 3)),
    "max_pool": (lambda: jnn.serial(jnn.conv(4, (3, 3)), jnn.max_pool((2, 2)), jnn.flatten(), jnn.dense(2)),
                 (8, 8, 2)),
    "one-channel cnn": (lambda: jnn.serial(jnn.conv(4, (3, 3)), jnn.relu(), jnn.max_pool((2, 2)), jnn.flatten(),
                                           jnn.dense(2)), (8, 8, 1)),   # conv's CPU path for one channel
}
UNSUPPORTED = {
    "decoder_lm (embedding)": (lambda: jnn.decoder_lm(11, 1, 2, 16, 32, 8), (8,), jnp.int32,
                               "jax2onnx has no converter for embedding's jnp.take(mode='fill', fill_value=nan)"),
}


def _trained_like(model, shape, dtype=jnp.float32):
    x = (jax.random.normal(jax.random.key(1), (7, *shape)) if dtype == jnp.float32
         else jax.random.randint(jax.random.key(1), (7, *shape), 0, 11))
    params, state = model.init(jax.random.key(0), x)
    if "batch_norm_0" in state:   # statistics that are not the init ones, so a mix-up shows
        state = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(2), a.shape), state)
    return x, params, state


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_jnn_for_any_batch(tmp_path, name):
    make, shape = MODELS[name]
    model = make()
    x, params, state = _trained_like(model, shape)
    jnn.export.export_onnx(tmp_path / f"{name}.onnx", model, params, state, x)
    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"))
    assert session.get_inputs()[0].shape == ["B", *shape]
    for b in (1, 7):
        xb = np.asarray(x[:b])
        (out,) = session.run(["y"], {"x": xb})
        np.testing.assert_allclose(out, model.apply(params, state, xb)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_are_known(tmp_path, name):
    """The failures listed in export_onnx's docstring, still there: once jax2onnx or onnxruntime
    supports one, this test fails, so the list (and MODELS above) gets updated."""
    make, shape, dtype, reason = UNSUPPORTED[name]
    model = make()
    x, params, state = _trained_like(model, shape, dtype)
    with pytest.raises(Exception, match="fill_value"):
        jnn.export.export_onnx(tmp_path / "m.onnx", model, params, state, x)
        session = ort.InferenceSession(str(tmp_path / "m.onnx"))
        session.run(["y"], {"x": np.asarray(x)})
