"""Corruption that used to load (issue 40, category 1): every weight file and export records
sha256 digests, verified on load; a changed byte anywhere is a ValueError naming the file and the
part (tensor or section) that fails, or, where the byte is not part of the data (JSON layout, zip
bookkeeping), the file loads exactly as written. Files without digests, written by other tools or
by jnn before digests were recorded, still load."""
import json
import re
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jnn
from jnn import export as jexport

TREE = {"dense": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, ml_dtypes.bfloat16)},
        "steps": np.arange(3, dtype=np.int64)}


def _flat(path):
    return {k: np.asarray(v) for k, v in jnn.io.flatten(jnn.io.load_params(path)).items()}


def _same(got, want):
    return set(got) == set(want) and all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
                                         for k in want)


def _flip(path, offset, mask=0x01):
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _tensor_offsets(path, name, where):
    """The file offset of the first, middle or last byte of tensor ``name`` in a .safetensors file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + n])[name]["data_offsets"]
    return 8 + n + {"first": start, "middle": (start + end) // 2, "last": end - 1}[where]


@pytest.mark.parametrize("name", ["dense/w", "dense/b", "steps"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_changed_tensor_byte_names_the_file_and_the_tensor(tmp_path, name, where):
    path = tmp_path / "w.safetensors"
    jnn.io.save_params(path, TREE)
    _flip(path, _tensor_offsets(path, name, where))
    with pytest.raises(ValueError, match=re.escape(f"jnn.io.load_params: {path} is corrupt: tensor {name!r} fails "
                                                   f"its sha256 check (its bytes changed since it was written)")):
        jnn.io.load_params(path)


@pytest.mark.parametrize("record", [0, 1, 2])
def test_a_changed_zip_directory_byte_does_not_drop_arrays(tmp_path, record):
    """A changed comment length in an .npz's central directory made the zip reader skip the
    records after it: their arrays (or the bfloat16 dtypes entry) were silently missing. The
    digest entry lists every array."""
    path = tmp_path / "w.npz"
    jnn.io.save_params(path, TREE)
    data = path.read_bytes()
    start = -1
    for _ in range(record + 1):
        start = data.index(b"PK\x01\x02", start + 1)   # a central-directory record
    _flip(path, start + 33)   # the high byte of the record's comment length
    with pytest.raises(ValueError, match=re.escape(f"jnn.io.load_params: {path} is ")):
        jnn.io.load_params(path)


@pytest.mark.parametrize("name", ["dense/w.npy", "dense/b.npy", "steps.npy"])
def test_a_changed_npz_member_byte_names_the_member(tmp_path, name):
    """(This held before as well: zip members carry CRC-32s.)"""
    path = tmp_path / "w.npz"
    jnn.io.save_params(path, TREE)
    data = path.read_bytes()
    _flip(path, data.index(name.encode()) + len(name) + 80 + 2)   # inside the member's array bytes
    with pytest.raises(ValueError, match=re.escape(f"jnn.io.load_params: {path} is not a readable .npz weight file "
                                                   f"(truncated or corrupt?)") + f".*{re.escape(name)}"):
        jnn.io.load_params(path)


@pytest.mark.parametrize("edit,message", [
    (lambda h: h.replace(b'"dtype":"F32"', b'"dtype":"I32"'), "the header gives tensor 'dense/w' dtype I32 and "
     "shape [3, 4], it was written as F32 [3, 4]"),
    (lambda h: h.replace(b'"shape":[3,4]', b'"shape":[4,3]'), "the header gives tensor 'dense/w' dtype F32 and "
     "shape [4, 3], it was written as F32 [3, 4]"),
    (lambda h: h.replace(b'"dense/w":{', b'"dense/v":{'), "tensor 'dense/v' has no recorded digest"),
    (lambda h: h.replace(b'"note":"x"', b'"note":"y"'), "its header metadata fails the sha256 check"),
    (lambda h: h.replace(b'"jnn.sha256"', b'"jnn.sha257"'), "its header names 'jnn.sha257' where jnn writes "
     "'jnn.sha256'"),
], ids=["dtype", "shape", "name", "metadata", "digest key"])
def test_a_changed_header_byte_is_named(tmp_path, edit, message):
    path = tmp_path / "w.safetensors"
    jnn.io.save_params(path, TREE, metadata={"note": "x"})
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(data[8:8 + n])
    assert len(header) == n   # one byte changed in place
    path.write_bytes(data[:8] + header + data[8 + n:])
    with pytest.raises(ValueError, match=re.escape(f"jnn.io.load_params: {path} is corrupt: {message}")):
        jnn.io.load_params(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_single_byte_change_is_refused_or_harmless(tmp_path, suffix, mask):
    path = tmp_path / f"w{suffix}"
    jnn.io.save_params(path, TREE, metadata={"note": "x"} if suffix == ".safetensors" else None)
    data, want = path.read_bytes(), _flat(path)
    changed = []
    for offset in range(len(data)):
        _flip(path, offset, mask)
        try:
            got = _flat(path)
        except ValueError as e:
            assert str(path) in str(e)
        else:
            if not _same(got, want):
                changed.append(offset)
        path.write_bytes(data)
    assert changed == [], f"a changed byte at these offsets loaded different values: {changed}"


def test_files_stay_readable_by_safetensors_and_files_without_digests_load(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    plain = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.arange(2, dtype=np.int32)}
    jnn.io.save_params(tmp_path / "ours.safetensors", plain)
    theirs = safetensors_numpy.load_file(tmp_path / "ours.safetensors")   # another reader
    assert _same(theirs, plain)
    safetensors_numpy.save_file(plain, tmp_path / "theirs.safetensors")   # written without digests
    np.savez(tmp_path / "theirs.npz", **plain)
    for name in ("theirs.safetensors", "theirs.npz"):
        assert _same(_flat(tmp_path / name), plain)


def test_a_file_without_digests_is_read_unchecked(tmp_path):
    """What "unchecked" means: safetensors' own files carry no digest, so a changed byte loads."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file({"w": np.zeros(4, np.float32)}, path)
    _flip(path, len(path.read_bytes()) - 1)
    assert _flat(path)["w"][-1] != 0


def test_metadata_cannot_take_the_digest_key(tmp_path):
    with pytest.raises(ValueError, match=re.escape("jnn.io.save_params: metadata key 'jnn.sha256' is where jnn "
                                                   "records the tensors' digests; use another key")):
        jnn.io.save_params(tmp_path / "w.safetensors", TREE, metadata={"jnn.sha256": "mine"})
    assert list(tmp_path.iterdir()) == []


# ---- .jnnx exports ----

MODEL = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(2))
PARAMS, STATE = MODEL.init(jax.random.key(0), jnp.zeros((1, 3)))
X = jnp.arange(12.0).reshape(4, 3) / 7


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    jexport.export_model(folder / "m.jnnx", MODEL, PARAMS, STATE, X, platforms=("cpu",))
    x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
    jexport.export_capsule(folder / "c.jnnx", MODEL, jnn.losses.mse, __import__("optax").sgd(0.1), (x, y),
                           batch_size=4, metrics={}, platforms=("cpu",), include_data=True)
    return {name: (folder / name).read_bytes() for name in ("m.jnnx", "c.jnnx")}


def _sections(data):
    (n,) = struct.unpack("<Q", data[8:16])
    return n, json.loads(data[16:16 + n])["sections"]


@pytest.mark.parametrize("file,part,where", [
    ("m.jnnx", "predict", "first"), ("m.jnnx", "predict", "middle"), ("m.jnnx", "predict", "last"),
    ("c.jnnx", "init", "middle"), ("c.jnnx", "train_epoch", "middle"), ("c.jnnx", "data", "first"),
    ("c.jnnx", "data", "middle"), ("c.jnnx", "data", "last"),
])
def test_a_changed_section_byte_names_the_file_and_the_section(tmp_path, exports, file, part, where):
    path = tmp_path / file
    path.write_bytes(exports[file])
    n, sections = _sections(exports[file])
    start, length = sections[part]["offset"], sections[part]["length"]
    _flip(path, 16 + n + {"first": start, "middle": start + length // 2, "last": start + length - 1}[where])
    with pytest.raises(ValueError, match=re.escape(f"{path} is a truncated or corrupt jnn export (.jnnx) file: "
                                                   f"ValueError: section {part!r} fails its sha256 check")):
        jexport.load(path)


@pytest.mark.parametrize("edit", [
    lambda h: h.replace(b'"steps_per_epoch": 2', b'"steps_per_epoch": 3'),
    lambda h: h.replace(b'"batch_size": 4', b'"batch_size": 5'),
    lambda h: h.replace(b'"description": ""', b'"descriptioN": ""'),
    lambda h: h.replace(b'"header_sha256"', b'"header_sha257"'),
    lambda h: h.replace(b'"format": 2', b'"format": 1'),
], ids=["steps_per_epoch", "batch_size", "key", "digest key", "format"])
def test_a_changed_header_byte_is_refused(tmp_path, exports, edit):
    data = exports["c.jnnx"]
    n, _ = _sections(data)
    header = edit(data[16:16 + n])
    assert len(header) == n and header != data[16:16 + n]
    path = tmp_path / "c.jnnx"
    path.write_bytes(data[:16] + header + data[16 + n:])
    with pytest.raises(ValueError, match=re.escape(f"{path} is a truncated or corrupt jnn export (.jnnx) file: "
                                                   f"ValueError: its header fails its sha256 check")):
        jexport.load(path)


def test_every_header_byte_and_sampled_body_bytes_are_refused_or_harmless(tmp_path, exports):
    data = exports["m.jnnx"]
    path = tmp_path / "m.jnnx"
    path.write_bytes(data)
    header, fns = jexport.load(path)
    want = np.asarray(fns["predict"](X))
    n, _ = _sections(data)
    changed = []
    for offset in [*range(16 + n), *range(16 + n, len(data), 29)]:
        _flip(path, offset)
        try:
            got_header, got = jexport.load(path)
        except ValueError as e:
            assert str(path) in str(e)
        else:
            if got_header != header or not np.array_equal(np.asarray(got["predict"](X)), want):
                changed.append(offset)
        path.write_bytes(data)
    assert changed == []


def test_an_export_without_digests_still_loads(tmp_path, exports):
    """A format-1 file (written before digests were recorded) loads as it always did."""
    data = exports["m.jnnx"]
    n, _ = _sections(data)
    header = json.loads(data[16:16 + n])
    del header["header_sha256"]
    header["format"] = 1
    for section in header["sections"].values():
        del section["sha256"]
    text = json.dumps(header).encode()
    path = tmp_path / "old.jnnx"
    path.write_bytes(data[:8] + struct.pack("<Q", len(text)) + text + data[16 + n:])
    _, fns = jexport.load(path)
    np.testing.assert_allclose(fns["predict"](X), MODEL.apply(PARAMS, STATE, X)[0], rtol=1e-6)


# ---- export_capsule takes the data fit takes (issue 40, category 3) ----

@pytest.mark.parametrize("kw,error,message", [
    ({"train_data": (jnp.ones((8, 3)), jnp.zeros((6, 2)))}, ValueError,
     "train_data's x and y must have the same number of examples, got shapes (8, 3) and (6, 2)"),
    ({"val_data": (jnp.ones((4, 3)), jnp.zeros((5, 2)))}, ValueError,
     "val_data's x and y must have the same number of examples, got shapes (4, 3) and (5, 2)"),
    ({"train_data": (jnp.ones((8, 3)), jnp.zeros((8, 2)), jnp.zeros(8))}, TypeError,
     "train_data must be a pair (x, y) of arrays, got tuple of length 3"),
    ({"train_data": jnp.ones((8, 3))}, TypeError, "train_data must be a pair (x, y) of arrays, got ArrayImpl"),
])
def test_export_capsule_refuses_data_fit_refuses(tmp_path, kw, error, message):
    kw = {"train_data": (jnp.ones((8, 3)), jnp.zeros((8, 2))), **kw}
    with pytest.raises(error, match=re.escape(f"jnn.export.export_capsule: {message}")):
        jexport.export_capsule(tmp_path / "c.jnnx", MODEL, jnn.losses.mse, __import__("optax").sgd(0.1),
                               kw.pop("train_data"), batch_size=4, metrics={}, platforms=("cpu",), **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("platforms,message", [
    (("gpu",), "platform 'gpu' is not one jax.export lowers for (it lowers for 'cpu', 'cuda', 'rocm', 'tpu'); for "
     "NVIDIA GPUs use 'cuda', for AMD GPUs 'rocm'"),
    (("cpu", "GPU"), "platform 'GPU' is not one jax.export lowers for (it lowers for 'cpu', 'cuda', 'rocm', 'tpu'); "
     "for NVIDIA GPUs use 'cuda', for AMD GPUs 'rocm'"),
    (("cpu", "metal"), "platform 'metal' is not one jax.export lowers for (it lowers for 'cpu', 'cuda', 'rocm', "
     "'tpu')"),
])
def test_export_names_the_platform_it_does_not_know(tmp_path, platforms, message):
    with pytest.raises(ValueError, match="^" + re.escape(f"jnn.export.export_model: {message}") + "$"):
        jexport.export_model(tmp_path / "m.jnnx", MODEL, PARAMS, STATE, X, platforms=platforms)
    assert list(tmp_path.iterdir()) == []
