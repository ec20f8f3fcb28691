"""Weight files: safetensors/npz round trips, path (un)flattening, structure checks, params-only restore."""
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.checkpoint import Checkpointer


def _model():
    return jnn.serial(jnn.named("block_0", jnn.serial(jnn.dense(3), jnn.dense(4))), jnn.batch_norm(),
                      jnn.relu(), jnn.dense(2))


def _init(model=None, features=5):
    return (model or _model()).init(jax.random.key(0), jnp.zeros((2, features)))


def test_flatten_paths_and_unflatten_inverts_leaves_with_paths():
    params, _ = _init()
    flat = jnn.io.flatten(params)
    assert sorted(flat) == ["batch_norm_0/offset", "batch_norm_0/scale", "block_0/dense_0/b", "block_0/dense_0/w",
                            "block_0/dense_1/b", "block_0/dense_1/w", "dense_0/b", "dense_0/w"]
    rebuilt = jnn.io.unflatten(dict(jnn.tree.leaves_with_paths(params)))
    assert jax.tree.structure(rebuilt) == jax.tree.structure(params)
    chex_equal = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), rebuilt, params)
    assert all(jax.tree.leaves(chex_equal))


def test_unflatten_rejects_a_path_that_is_both_leaf_and_prefix():
    with pytest.raises(ValueError, match="both a leaf and a prefix"):
        jnn.io.unflatten({"a": 1, "a/b": 2})


def test_flatten_rejects_slash_in_key():
    with pytest.raises(ValueError, match="contains '/'"):
        jnn.io.flatten({"a/b": jnp.ones(1)})


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_is_bit_exact_including_bfloat16_and_ints(tmp_path, suffix):
    params, state = _init()
    tree = {"params": params, "state": state,
            "extra": {"bf16": jnp.linspace(-3, 3, 7).astype(jnp.bfloat16), "i": jnp.arange(5, dtype=jnp.int32),
                      "nan": jnp.array([np.nan, -0.0, np.inf], jnp.float32)}}
    path = tmp_path / f"w{suffix}"
    jnn.io.save_params(path, tree)
    for loaded in (jnn.io.load_params(path), jnn.io.load_params(path, like=tree)):
        flat_a, flat_b = jnn.io.flatten(tree), jnn.io.flatten(loaded)
        assert sorted(flat_a) == sorted(flat_b)
        for p in flat_a:
            assert flat_a[p].dtype == flat_b[p].dtype, p
            assert flat_a[p].tobytes() == flat_b[p].tobytes(), p   # bit-exact, NaN and -0.0 included


def test_like_keeps_empty_subtrees(tmp_path):
    params, state = jnn.dense(2).init(jax.random.key(0), jnp.zeros((1, 3)))
    jnn.io.save_params(tmp_path / "p.npz", {"params": params, "state": state})
    loaded = jnn.io.load_params(tmp_path / "p.npz", like={"params": params, "state": state})
    assert loaded["state"] == {} and jax.tree.structure(loaded["params"]) == jax.tree.structure(params)


def test_safetensors_interoperates_with_the_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    params, _ = _init()
    jnn.io.save_params(tmp_path / "a.safetensors", params)
    theirs = st.load_file(str(tmp_path / "a.safetensors"))
    assert {k: v.tobytes() for k, v in theirs.items()} == {k: v.tobytes() for k, v in jnn.io.flatten(params).items()}
    rng = np.random.default_rng(0)
    foreign = {"enc/w": rng.normal(size=(3, 4)).astype(np.float32), "enc/b": rng.integers(0, 9, 4).astype(np.int64)}
    st.save_file(foreign, str(tmp_path / "b.safetensors"))
    mine = jnn.io.load_params(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(mine["enc"]["w"], foreign["enc/w"])
    np.testing.assert_array_equal(mine["enc"]["b"], foreign["enc/b"])


def test_safetensors_header_is_the_documented_format(tmp_path):
    jnn.io.save_params(tmp_path / "x.safetensors", {"a": jnp.arange(3, dtype=jnp.float32)})
    data = (tmp_path / "x.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert n % 8 == 0 and header["a"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert np.frombuffer(data[8 + n:], "<f4").tolist() == [0.0, 1.0, 2.0]


def test_mismatched_model_lists_every_wrong_path(tmp_path):
    params, _ = _init()
    jnn.io.save_params(tmp_path / "p.safetensors", params)
    other = jnn.serial(jnn.named("block_0", jnn.serial(jnn.dense(3), jnn.dense(6))), jnn.layer_norm(),
                       jnn.relu(), jnn.dense(2))
    other_params, _ = jax.eval_shape(other.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 5), jnp.float32))
    with pytest.raises(ValueError, match="does not match") as info:
        jnn.io.load_params(tmp_path / "p.safetensors", like=other_params)
    msg = str(info.value)
    assert "missing: layer_norm_0/offset (expected shape (6,))" in msg
    assert "missing: layer_norm_0/scale" in msg
    assert "unexpected: batch_norm_0/offset (shape (4,))" in msg and "unexpected: batch_norm_0/scale" in msg
    assert "wrong shape: block_0/dense_1/w: got (3, 4), expected (3, 6)" in msg
    assert "wrong shape: block_0/dense_1/b" in msg and "wrong shape: dense_0/w: got (4, 2)" in msg
    assert "block_0/dense_0" not in msg   # the matching entries are not listed


def test_never_overwrites_silently(tmp_path):
    params, _ = _init()
    path = tmp_path / "p.npz"
    jnn.io.save_params(path, params)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        jnn.io.save_params(path, jax.tree.map(jnp.zeros_like, params))
    assert path.read_bytes() == before
    jnn.io.save_params(path, jax.tree.map(jnp.zeros_like, params), overwrite=True)
    assert float(jnp.abs(jnn.io.load_params(path)["dense_0"]["w"]).sum()) == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]   # no temporary files left behind


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors or .npz"):
        jnn.io.save_params(tmp_path / "p.pt", {"a": jnp.ones(1)})


def test_checkpointer_restores_params_and_state_alone(tmp_path):
    model = _model()
    opt = optax.adam(1e-2)
    x = jax.random.normal(jax.random.key(1), (16, 5))
    y = jax.random.normal(jax.random.key(2), (16, 2))
    ts = jnn.train.init_train_state(model, opt, jax.random.key(0), x)
    step = jax.jit(jnn.train.make_train_step(model, jnn.losses.mse, opt))
    for _ in range(3):
        ts, _ = step(ts, (x, y))
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(3, ts)
        params, state = ckpt.restore_params()   # no TrainState template, no optimizer
        out, _ = model.apply(params, state, x)
        np.testing.assert_array_equal(out, model.apply(ts.params, ts.state, x)[0])
        assert float(jnp.abs(state["batch_norm_0"]["mean"]).sum()) > 0   # trained statistics, not init
        p2, s2 = ckpt.restore_params(like=jax.eval_shape(model.init, jax.random.key(0), x))
        assert jax.tree.structure(p2) == jax.tree.structure(ts.params)
        wrong = jnn.serial(jnn.dense(3), jnn.dense(2))
        with pytest.raises(ValueError, match="missing: params/dense_1/w"):
            ckpt.restore_params(like=jax.eval_shape(wrong.init, jax.random.key(0), x))
