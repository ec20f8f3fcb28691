"""Exported models and the benchmark capsule, loaded and run in a process that never imports jnn."""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import export as jexport

# The child process: only jax and NumPy, plus the loader's source copied from jnn.export.load.
CHILD = """
import sys, json
import numpy as np, jax
{loader}
header, fns = load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
out = {{}}
for b in (1, 7, 128):
    out[f"pred_{{b}}"] = np.asarray(fns["predict"](inputs["x"][:b]))
cap_header, cap = load(sys.argv[3])
data = cap["data"]
leaves = cap["init"](jax.random.key_data(jax.random.key(0)))
for epoch in range(3):
    leaves, logs = cap["train_epoch"](leaves, data["x"], data["y"])
    val = cap["evaluate"](leaves, data["x_val"], data["y_val"])
    out[f"loss_{{epoch}}"] = np.asarray(logs["loss"])
    out[f"val_loss_{{epoch}}"] = np.asarray(val["loss"])
    out[f"val_accuracy_{{epoch}}"] = np.asarray(val["accuracy"])
for path, leaf in zip(cap_header["leaf_paths"], leaves):
    out["leaf:" + path] = np.asarray(leaf)
np.savez(sys.argv[4], **out)
assert "jnn" not in sys.modules
print(json.dumps({{"ok": True, "jnn_imported": "jnn" in sys.modules}}))
"""


def _same_xla():
    """The child compiles as this process does (tests/conftest.py), so its floats match bit for bit."""
    flag = "JAX_DISABLE_MOST_OPTIMIZATIONS"
    return {flag: "1" if jax.config.read("jax_disable_most_optimizations") else "0",
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def _cnn():
    return jnn.serial(jnn.conv(4, (3, 3)), jnn.batch_norm(), jnn.relu(), jnn.max_pool((2, 2)), jnn.dropout(0.3),
                      jnn.flatten(), jnn.dense(3))


def _data(rng, n, shape=(6, 6, 2)):
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def test_artifacts_run_without_jnn_any_batch_size_and_reproduce_fit(tmp_path):
    rng = np.random.default_rng(0)
    model, loss, opt = _cnn(), jnn.losses.softmax_cross_entropy, optax.adam(1e-2)
    (x, y), (xv, yv) = _data(rng, 48), _data(rng, 20)
    # the inference model: trained a little so batch-norm statistics are not the init ones; fused,
    # as the capsule's epoch is (by default fit trains a conv net stepwise on CPU)
    result = jnn.train.fit(model, loss, opt, (x, y), key=jax.random.key(0), epochs=3, batch_size=8,
                           val_data=(xv, yv), fused=True, verbose=0)
    params, state = result.train_state.params, result.train_state.state
    jexport.export_model(tmp_path / "cnn.jnnx", model, params, state, x[:1], description="test CNN")
    jexport.export_capsule(tmp_path / "cap.jnnx", model, loss, opt, (x, y), batch_size=8, val_data=(xv, yv),
                           include_data=True)
    probe = rng.normal(size=(128, 6, 6, 2)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=probe)
    script = CHILD.format(loader=textwrap.dedent(inspect.getsource(jexport.load)))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cnn.jnnx"), str(tmp_path / "in.npz"),
                           str(tmp_path / "cap.jnnx"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin",
                                                                           "JAX_PLATFORMS": "cpu", **_same_xla()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ok": True, "jnn_imported": False}
    out = np.load(tmp_path / "out.npz")
    for b in (1, 7, 128):
        expected, _ = model.apply(params, state, probe[:b])
        np.testing.assert_allclose(out[f"pred_{b}"], expected, rtol=1e-6, atol=1e-6)
    for epoch in range(3):   # bit for bit: the same floats as fit's history
        assert float(out[f"loss_{epoch}"]) == result.history["loss"][epoch]
        assert float(out[f"val_loss_{epoch}"]) == result.history["val_loss"][epoch]
        assert float(out[f"val_accuracy_{epoch}"]) == result.history["val_accuracy"][epoch]
    for path, leaf in jnn.io.flatten({"params": params, "state": state}).items():
        assert out["leaf:" + path].tobytes() == leaf.tobytes(), path


def test_header_describes_inputs_outputs_versions_and_platforms(tmp_path):
    model = jnn.serial(jnn.flatten(), jnn.dense(4))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3, 2)))
    jexport.export_model(tmp_path / "m.jnnx", model, params, state, jnp.zeros((1, 3, 2)), description="flat")
    header, fns = jexport.load(tmp_path / "m.jnnx")
    section = header["sections"]["predict"]
    assert section["inputs"] == [{"shape": ["b", 3, 2], "dtype": "float32"}]
    assert section["outputs"] == [{"shape": ["b", 4], "dtype": "float32"}]
    assert section["platforms"] == ["cpu", "cuda"]   # both lowered into the one file
    assert header["versions"]["jax"] == jax.__version__ and header["description"] == "flat"
    assert (tmp_path / "m.jnnx").read_bytes()[:8] == b"JNNEXPRT"


def test_params_passed_in_and_fixed_batch(tmp_path):
    model = jnn.serial(jnn.dense(5), jnn.tanh(), jnn.dense(2))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    params, state = model.init(jax.random.key(0), x)
    jexport.export_model(tmp_path / "p.jnnx", model, params, state, x, bake_params=False, batch_polymorphic=False,
                         platforms=("cpu",))
    header, fns = jexport.load(tmp_path / "p.jnnx")
    other = jax.tree.map(lambda a: a * 2.0, params)   # the function really reads the params passed in
    np.testing.assert_allclose(fns["predict"](other, state, x), model.apply(other, state, x)[0], rtol=1e-6)
    assert header["param_paths"] == ["dense_0/b", "dense_0/w", "dense_1/b", "dense_1/w"]
    with pytest.raises(ValueError, match="shape"):
        fns["predict"](params, state, x[:2])   # fixed batch of 4


def test_export_never_overwrites(tmp_path):
    model = jnn.dense(2)
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    (tmp_path / "m.jnnx").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists"):
        jexport.export_model(tmp_path / "m.jnnx", model, params, state, jnp.zeros((1, 3)))
    assert (tmp_path / "m.jnnx").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="not a jnn export"):
        jexport.load(tmp_path / "m.jnnx")
