"""Weight files and exports: a bad destination is refused before any work (never overwritten, never a
directory), bad options name the function, and a damaged file is a ValueError naming it."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn import export as jexport

MODEL = jnn.dense(2)
PARAMS, STATE = MODEL.init(jax.random.key(0), jnp.zeros((1, 3)))


def _exactly(message):
    return "^" + re.escape(message) + "$"


def _export(path, **kw):
    return jexport.export_model(path, MODEL, PARAMS, STATE, kw.pop("example", jnp.zeros((1, 3))),
                                **{"platforms": ("cpu",), **kw})


@pytest.mark.parametrize("kw,error,message", [
    ({"overwrite": "yes"}, ValueError, "overwrite must be True or False, got 'yes'"),
    ({"bake_params": "no"}, ValueError, "bake_params must be True or False, got 'no'"),
    ({"batch_polymorphic": 1}, ValueError, "batch_polymorphic must be True or False, got 1"),
    ({"platforms": "cpu"}, ValueError, "platforms must be a non-empty tuple of platform names such as ('cpu', "
     "'cuda'), got 'cpu'"),
    ({"platforms": ()}, ValueError, "platforms must be a non-empty tuple of platform names such as ('cpu', "
     "'cuda'), got ()"),
    ({"example": jnp.zeros(())}, ValueError, "example must have a batch axis first, shape (batch, ...), got shape ()"),
])
def test_export_model_options(tmp_path, kw, error, message):
    with pytest.raises(error, match=_exactly("jnn.export.export_model: " + message)):
        _export(tmp_path / "m.jnnx", **kw)
    assert os.listdir(tmp_path) == []


def test_export_model_takes_a_nested_list_example(tmp_path):
    _export(tmp_path / "m.jnnx", example=[[0.0, 0.0, 0.0]])
    _, fns = jexport.load(tmp_path / "m.jnnx")
    np.testing.assert_allclose(fns["predict"](jnp.ones((4, 3))), MODEL.apply(PARAMS, STATE, jnp.ones((4, 3)))[0],
                               rtol=1e-6)


def test_destinations_are_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "taken.jnnx").write_bytes(b"mine")
    (tmp_path / "taken.npz").write_bytes(b"mine")
    (tmp_path / "folder.npz").mkdir()
    exported = []
    monkeypatch.setattr(jexport, "_export", lambda *a: exported.append(a))   # exporting would be the slow part
    taken = lambda name: f"{tmp_path / name} already exists; choose another path or pass overwrite=True"
    for path, error, message in [(tmp_path / "taken.jnnx", FileExistsError, taken("taken.jnnx")),
                                 (tmp_path, IsADirectoryError, f"{tmp_path} is a directory; give a file path")]:
        with pytest.raises(error, match=_exactly("jnn.export.export_model: " + message)):
            _export(path)
        with pytest.raises(error, match=_exactly("jnn.export.export_capsule: " + message)):
            jexport.export_capsule(path, MODEL, jnn.losses.mse, None, (jnp.ones((4, 3)), jnp.ones((4, 2))),
                                   batch_size=2, platforms=("cpu",))
    assert exported == [] and (tmp_path / "taken.jnnx").read_bytes() == b"mine"
    with pytest.raises(FileExistsError, match=_exactly("jnn.io.save_params: " + taken("taken.npz"))):
        jnn.io.save_params(tmp_path / "taken.npz", PARAMS)
    with pytest.raises(IsADirectoryError, match=_exactly(f"jnn.io.save_params: {tmp_path / 'folder.npz'} is a "
                                                         f"directory; give a file path")):
        jnn.io.save_params(tmp_path / "folder.npz", PARAMS, overwrite=True)
    assert (tmp_path / "taken.npz").read_bytes() == b"mine" and sorted(os.listdir(tmp_path)) == [
        "folder.npz", "taken.jnnx", "taken.npz"]


@pytest.mark.parametrize("kw,message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"eval_batch_size": True}, "eval_batch_size must be a positive integer, got True"),
    ({"include_data": "yes"}, "include_data must be True or False, got 'yes'"),
    ({"platforms": "cpu"}, "platforms must be a non-empty tuple of platform names such as ('cpu', 'cuda'), got 'cpu'"),
])
def test_export_capsule_options(tmp_path, kw, message):
    with pytest.raises(ValueError, match=_exactly("jnn.export.export_capsule: " + message)):
        jexport.export_capsule(tmp_path / "c.jnnx", MODEL, jnn.losses.mse, None, (jnp.ones((4, 3)), jnp.ones((4, 2))),
                               **{"batch_size": 2, "platforms": ("cpu",), **kw})


@pytest.mark.parametrize("tree,kw,error,message", [
    ({"w": np.array(["a", "b"])}, {}, TypeError, "w is not a numeric array (dtype <U1)"),
    ({"w": np.ones(2)}, {"metadata": {"epochs": 3}}, ValueError,
     "metadata must be a dict of strings to strings (the safetensors header holds text only), got {'epochs': 3}"),
    ({"w": np.ones(2)}, {"overwrite": 1}, ValueError, "overwrite must be True or False, got 1"),
])
def test_save_params_options(tmp_path, tree, kw, error, message):
    with pytest.raises(error, match=_exactly("jnn.io.save_params: " + message)):
        jnn.io.save_params(tmp_path / "w.safetensors", tree, **kw)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_weight_file_is_a_value_error_naming_it(tmp_path, suffix, damage):
    path = tmp_path / f"w{suffix}"
    jnn.io.save_params(path, {"dense": {"w": np.arange(600.0).reshape(20, 30)}})
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"\x10" + os.urandom(200),
                      "empty": b""}[damage])
    with pytest.raises(ValueError, match=re.escape(f"jnn.io.load_params: {path} is not a readable {suffix} weight "
                                                   f"file (truncated or corrupt?)")):
        jnn.io.load_params(path)


@pytest.mark.parametrize("cut", [12, 40, 0.5, -1])
def test_a_damaged_export_is_a_value_error_naming_it(tmp_path, cut):
    path = tmp_path / "m.jnnx"
    _export(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match=re.escape(f"{path} is a truncated or corrupt jnn export (.jnnx) file")):
        jexport.load(path)
