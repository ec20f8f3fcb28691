"""Errors that name the file (issue 40, categories 5 and 8): a full disk during a write names the
path and the function, and leaves nothing behind; .npy sources refuse bad files at open, naming
them; a Grain batch of unequal records says which records differ (and only then speaks of
shapes); a truncated Tiny Shakespeare file is refused."""
import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.data import grain as G


def _exactly(message):
    return "^" + re.escape(message) + "$"


# ---- a full disk (a file size limit: the kernel's EFBIG, as on a full disk's ENOSPC) ----

_WRITES = {
    "save_params .safetensors": ("jnn.io.save_params", "w.safetensors",
                                 "jnn.io.save_params(path, {'w': np.zeros(100_000, np.float32)}, overwrite=True)"),
    "save_params .npz": ("jnn.io.save_params", "w.npz",
                         "jnn.io.save_params(path, {'w': np.zeros(100_000, np.float32)}, overwrite=True)"),
    "export_model": ("jnn.export.export_model", "m.jnnx",
                     "model = jnn.dense(300); params, state = model.init(jax.random.key(0), jnp.zeros((1, 300)));"
                     "jnn.export.export_model(path, model, params, state, jnp.zeros((1, 300)), platforms=('cpu',),"
                     " overwrite=True)"),
    "write_npy": ("write_npy", "a.npy",
                  "jnn.data.grain.write_npy(path, (100, 1000), np.float32, [np.zeros((100, 1000), np.float32)],"
                  " overwrite=True)"),
    "atomic_write": ("jnn.io.atomic_write", "notes.txt", "jnn.io.atomic_write(path, 'x' * 200_000, overwrite=True)"),
}

_SCRIPT = textwrap.dedent("""
    import json, os, pathlib, resource, sys
    import jax, jax.numpy as jnp, numpy as np
    import jnn, jnn.data.grain
    folder, cases = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])
    for name, (where, file, call) in cases.items():   # compile first, so the limit hits only the write
        if name == "export_model":
            exec(call, globals(), {"path": folder / "warm-up" / file})
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    results = {}
    for name, (where, file, call) in cases.items():
        path = folder / name.replace(" ", "_") / file
        path.parent.mkdir()
        path.write_bytes(b"old")
        try:
            exec(call, globals(), {"path": path})
            results[name] = None
        except BaseException as e:
            results[name] = [type(e).__name__, isinstance(e, OSError) and e.errno, str(e),
                             sorted(os.listdir(path.parent)), path.read_bytes().decode()]
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(folder), json.dumps(_WRITES)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    return folder, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(_WRITES))
def test_a_full_disk_names_the_path_and_the_function_and_leaves_the_old_file(full_disk, case):
    folder, results = full_disk
    where, file, _ = _WRITES[case]
    path = folder / case.replace(" ", "_") / file
    assert results[case] is not None, f"{case}: the write did not fail under a 64 KiB file size limit"
    kind, code, message, listing, content = results[case]
    assert kind == "OSError" and code == errno.EFBIG
    assert message == (f"[Errno {errno.EFBIG}] {where}: could not write {path}: File too large (the disk is full, "
                       f"or the file is over a size limit or quota); nothing was written (an existing file is "
                       f"left as it was)")
    assert listing == [file] and content == "old"   # no temporary file, the old one whole


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_an_os_error_during_fsync_names_the_path(tmp_path, monkeypatch, code):
    path = tmp_path / "w.safetensors"

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError) as info:
        jnn.io.save_params(path, {"w": np.ones(3)})
    hint = " (the disk is full, or the file is over a size limit or quota)" if code == errno.ENOSPC else ""
    assert info.value.errno == code and str(info.value) == (
        f"[Errno {code}] jnn.io.save_params: could not write {path}: {os.strerror(code)}{hint}; nothing was "
        f"written (an existing file is left as it was)")
    assert os.listdir(tmp_path) == []


# ---- .npy files: refused at open, by name ----

def _npy(tmp_path, kind):
    path = tmp_path / "a.npy"
    data = np.arange(60, dtype=np.int16).reshape(10, 2, 3)
    if kind == "object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "text":
        path.write_text("id,value\n1,2\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header cut":
        np.save(path, data)
        os.truncate(path, 30)
    elif kind == "scalar":
        np.save(path, np.float32(3))
    else:   # "records cut": the last record incomplete
        np.save(path, data)
        os.truncate(path, os.path.getsize(path) - 6)
    return path


@pytest.mark.parametrize("kind,error,message", [
    ("object", ValueError, "NpySource: {path} holds Python objects (dtype object), which are pickled and cannot be "
     "read by record; save a numeric array"),
    ("text", ValueError, "NpySource: {path} is not a readable .npy file (the magic string is not correct; expected "
     "b'\\x93NUMPY', got b'id,val'); write it with np.save or jnn.data.grain.write_npy"),
    ("empty", ValueError, "NpySource: {path} is not a readable .npy file (EOF: reading magic string, expected 8 "
     "bytes got 0); write it with np.save or jnn.data.grain.write_npy"),
    ("header cut", ValueError, "NpySource: {path} is not a readable .npy file (EOF: reading array header, "
     "expected 118 bytes got 20); write it with np.save or jnn.data.grain.write_npy"),
    ("scalar", ValueError, "NpySource: {path} holds one value (shape ()); records lie on axis 0"),
    ("records cut", OSError, "NpySource: short read of record 9 from {path}: the file is truncated (its header says "
     "shape (10, 2, 3) of int16, 120 bytes of records; it holds 114); write it again"),
])
def test_npy_source_refuses_a_bad_file_at_open_naming_it(tmp_path, kind, error, message):
    path = _npy(tmp_path, kind)
    with pytest.raises(error, match=_exactly(message.format(path=path))):
        G.NpySource(path)


def test_npy_source_names_the_file_when_it_shrinks_after_open(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(60, dtype=np.int16).reshape(10, 2, 3))
    source = G.NpySource(path)
    os.truncate(path, os.path.getsize(path) - 6)
    for read in (lambda: source[9], lambda: source.read_batch(np.array([1, 9]))):
        with pytest.raises(OSError, match=_exactly(f"NpySource: short read of record 9 from {path} (file truncated?)")):
            read()


@pytest.mark.parametrize("call,error,message", [
    (lambda p: G.ArraySource(np.array([{"a": 1}, None], dtype=object)), TypeError,
     "ArraySource: argument 0 holds Python objects (dtype object); records must be numeric arrays (of one shape "
     "each), so that they stack into batches"),
    (lambda p: G.ArraySource(np.zeros(2), np.array(["a", None], dtype=object)), TypeError,
     "ArraySource: argument 1 holds Python objects (dtype object); records must be numeric arrays (of one shape "
     "each), so that they stack into batches"),
    (lambda p: G.write_npy(p, (2,), object, [np.array([None, 1], dtype=object)]), ValueError,
     "write_npy: dtype object holds Python objects, which a .npy file can only pickle; records must be numeric"),
    (lambda p: G.write_npy(p, (2,), np.float32, [np.ones(1), ["a"]]), ValueError,
     "write_npy: chunk 1 cannot be converted to float32 (could not convert string to float: 'a')"),
])
def test_object_arrays_and_unconvertible_chunks_are_refused(tmp_path, call, error, message):
    with pytest.raises(error, match=_exactly(message)):
        call(tmp_path / "a.npy")
    assert os.listdir(tmp_path) == []


class _Ragged:
    """A source whose record 3 is longer than the others (or of another structure)."""

    def __init__(self, odd):
        self.odd = odd

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            return self.odd
        return np.zeros(2, np.float32), np.int32(i)


@pytest.mark.parametrize("odd,message", [
    ((np.zeros(3, np.float32), np.int32(3)), "records of different shapes cannot be batched: record 0 has shapes "
     "[(2,), ()], record 3 has [(3,), ()]"),
    ((np.zeros(2, np.float32),), "records of different structures cannot be batched: record 0 is "
     "PyTreeDef((*, *)), record 3 is PyTreeDef((*,))"),
])
def test_a_batch_of_unequal_records_names_them(odd, message):
    pipe = G.pipeline(_Ragged(odd), batch_size=8, seed=0, shuffle=False, transform=lambda r: r, read_threads=0)
    with pytest.raises(ValueError, match=_exactly(message)):
        pipe.dataset[0]


def test_a_failing_record_read_is_not_called_a_shape_problem(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(10, dtype=np.float32))
    source = G.ArraySource(G.NpySource(path))
    pipe = G.pipeline(source, batch_size=5, seed=0, shuffle=False, transform=lambda r: r, read_threads=0)
    os.truncate(path, os.path.getsize(path) - 4)
    with pytest.raises(OSError) as info:
        pipe.dataset[1]
    assert str(info.value) == f"NpySource: short read of record 9 from {path} (file truncated?)"


# ---- Tiny Shakespeare: a present file is checked ----

def _shakespeare(tmp_path, damage):
    text = (jnn.data.paths.resolve_data_dir(None) / "tinyshakespeare" / "input.txt").read_bytes()
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    damaged = {"truncated": text[:len(text) // 2], "one byte short": text[:-1], "changed": text.replace(b"First",
               b"Frist", 1), "appended": text + b"\nTHE END\n"}[damage]
    (folder / "input.txt").write_bytes(damaged)
    return folder / "input.txt", len(damaged)


@pytest.mark.parametrize("damage", ["truncated", "one byte short", "changed", "appended"])
def test_a_damaged_tiny_shakespeare_file_is_refused(tmp_path, damage):
    path, size = _shakespeare(tmp_path, damage)
    with pytest.raises(ValueError, match=re.escape(f"load_tiny_shakespeare: {path} is not the published Tiny "
                                                   f"Shakespeare file")) as info:
        jnn.data.load_tiny_shakespeare(data_dir=tmp_path, download=False)
    assert "delete it and load again with download=True" in str(info.value)
    assert f"{size:,} bytes" in str(info.value)


def test_the_published_tiny_shakespeare_file_loads():
    text = jnn.data.load_tiny_shakespeare(download=False)
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")


def test_verify_false_reads_your_own_text_and_verify_is_a_flag(tmp_path):
    path, _ = _shakespeare(tmp_path, "truncated")
    assert jnn.data.load_tiny_shakespeare(data_dir=tmp_path, download=False, verify=False) == path.read_text()
    with pytest.raises(ValueError, match=_exactly("load_tiny_shakespeare: verify must be True or False, got 'no'")):
        jnn.data.load_tiny_shakespeare(data_dir=tmp_path, download=False, verify="no")


# ---- what a weight file cannot hold (issue 40, category 7) ----

def _train_state():
    import jax
    import optax
    from jnn.train import step
    return step.init_train_state(jnn.dense(2), optax.adam(0.1), jax.random.key(0),
                                 jax.ShapeDtypeStruct((1, 3), jnp.float32))


@pytest.mark.parametrize("tree,message", [
    (_train_state, "got a whole TrainState (params, optimizer state, PRNG key, step); a weight file holds arrays of "
     "params and state: save_params(path, {'params': ts.params, 'state': ts.state}), or save the whole state with "
     "jnn.train.Checkpointer"),
    (lambda: {"params": {"w": np.ones(2)}, "rng": {"key": __import__("jax").random.key(0)}},
     "rng/key is a PRNG key, which a weight file cannot hold; store jax.random.key_data(key) instead, or save a "
     "whole train state with jnn.train.Checkpointer"),
])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_params_refuses_what_a_weight_file_cannot_hold(tmp_path, tree, message, suffix):
    with pytest.raises(TypeError, match=_exactly("jnn.io.save_params: " + message)):
        jnn.io.save_params(tmp_path / f"w{suffix}", tree())
    assert os.listdir(tmp_path) == []
