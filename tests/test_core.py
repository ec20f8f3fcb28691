"""The layer contract, combinators, naming, summary and error messages."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

KEY = jax.random.key(0)


def test_dense_matches_numpy():
    layer = jnn.dense(3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    params, state = layer.init(KEY, x)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, x @ np.asarray(params["w"]) + np.asarray(params["b"]), rtol=1e-5, atol=1e-6)


def test_serial_names_children_per_kind_and_skips_empty_params():
    model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(3), jnn.relu(), jnn.named("head", jnn.dense(2)))
    params, state = model.init(KEY, jax.ShapeDtypeStruct((1, 5), jnp.float32))
    assert sorted(params) == ["dense_0", "dense_1", "head"]
    assert params["dense_1"]["w"].shape == (4, 3) and params["head"]["w"].shape == (3, 2)
    assert state == {}


def test_serial_applies_children_in_order():
    model = jnn.serial(jnn.dense(3), jnn.tanh(), jnn.dense(2))
    x = jnp.linspace(-1, 1, 8).reshape(2, 4)
    params, state = model.init(KEY, x)
    p = jax.tree_util.tree_map(np.asarray, params)
    expected = np.tanh(np.asarray(x) @ p["dense_0"]["w"] + p["dense_0"]["b"]) @ p["dense_1"]["w"] + p["dense_1"]["b"]
    np.testing.assert_allclose(model.apply(params, state, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_nested_named_submodel_sits_under_its_key():
    encoder = jnn.named("encoder", jnn.serial(jnn.dense(4), jnn.relu()))
    model = jnn.serial(encoder, jnn.dense(1))
    params, _ = model.init(KEY, jnp.zeros((1, 2)))
    assert list(params["encoder"]) == ["dense_0"]
    assert [path for path, _ in jnn.tree.leaves_with_paths(params)] == [
        "dense_0/b", "dense_0/w", "encoder/dense_0/b", "encoder/dense_0/w"]


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match=r"serial: child names must be unique, got \['x'\]"):
        jnn.serial(jnn.named("x", jnn.dense(2)), jnn.named("x", jnn.dense(2)))


def test_uncalled_factory_gets_a_hint():
    with pytest.raises(TypeError, match=r"expected a jnn.Layer, got function .*jnn.relu\(\) rather than jnn.relu"):
        jnn.serial(jnn.dense(2), jnn.relu)


def test_key_is_split_so_children_get_different_weights():
    model = jnn.serial(jnn.dense(3), jnn.dense(3))
    params, _ = model.init(KEY, jnp.zeros((1, 3)))
    assert not np.allclose(params["dense_0"]["w"], params["dense_1"]["w"])


def test_fan_out_concat_and_residual_values():
    x = jnp.arange(6.0).reshape(2, 3) / 6
    branch = jnn.serial(jnn.dense(3), jnn.relu())
    block = jnn.residual(jnn.dense(3), jnn.relu())
    params, state = block.init(KEY, x)
    inner = params["serial_0"]
    y, _ = block.apply(params, state, x)
    np.testing.assert_allclose(y, x + branch.apply(inner, {}, x)[0], rtol=1e-6)

    cat = jnn.fan_out(jnn.dense(2), jnn.identity(), merge="concat")
    p, s = cat.init(KEY, x)
    y, _ = cat.apply(p, s, x)
    np.testing.assert_allclose(y, jnp.concatenate([x @ p["dense_0"]["w"] + p["dense_0"]["b"], x], -1), rtol=1e-6)


def test_fan_out_shape_mismatch_fails_at_init():
    block = jnn.fan_out(jnn.dense(2), jnn.identity(), merge="add")
    with pytest.raises(ValueError, match=r"fan_out: merge='add' needs branch outputs of one shape, got \[\(1, 2\), \(1, 3\)\]"):
        block.init(KEY, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="merge must be one of"):
        jnn.fan_out(jnn.dense(2), jnn.identity(), merge="max")


def test_dense_wrong_trailing_dimension_names_layer_and_shapes():
    model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(2))
    params, state = model.init(KEY, jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\[dense_0\] dense: expected input of shape \[\.\.\., 3\] .*got \(5, 7\)"):
        model.apply(params, state, jnp.zeros((5, 7)))
    # also under jit (shapes are static, so the error is raised while tracing)
    with pytest.raises(ValueError, match=r"\[dense_0\] dense: expected input of shape"):
        jax.jit(model.apply)(params, state, jnp.zeros((5, 7)))


@pytest.mark.parametrize("width", [0, -3, 2.5, True])
def test_dense_bad_width_rejected_at_construction(width):
    with pytest.raises(ValueError, match=f"dense: features must be a positive integer, got {width!r}"):
        jnn.dense(width)


def test_reshape_errors():
    with pytest.raises(ValueError, match=r"reshape: shape must hold positive integers and at most one -1"):
        jnn.reshape((-1, -1))
    model = jnn.serial(jnn.flatten(), jnn.reshape((5, 5)))
    with pytest.raises(ValueError, match=r"\[reshape_0\] reshape: cannot reshape examples of shape \(12,\) \(12 values\) to \(5, 5\)"):
        model.init(KEY, jnp.zeros((2, 3, 4)))


def test_init_rejects_non_array_example():
    with pytest.raises(TypeError, match="expected an array or jax.ShapeDtypeStruct as the example input, got list"):
        jnn.dense(2).init(KEY, [1.0, 2.0])


def test_summary_counts_parameters():
    model = jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(64), jnn.relu(), jnn.dense(10))
    text = jnn.summary(model, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    total = 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert f"total params: {total:,} ({total * 4:,} bytes)" in text
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in text.splitlines()[2:-3])}
    assert rows["flatten_0"] == ["flatten", "(1, 784)"]
    assert rows["dense_0"][:3] == ["dense", "(1, 128)", "100,480"]
    assert rows["dense_2"][:3] == ["dense", "(1, 10)", "650"]
    assert rows["dense_0"][3] == "features=128, use_bias=True, w_init='lecun_normal', b_init='zeros'"


def test_named_rejects_bad_names():
    with pytest.raises(ValueError, match="named: expected a non-empty name without '/'"):
        jnn.named("a/b", jnn.dense(1))


def test_core_imports_nothing_from_layers():
    import ast
    import pathlib

    source = (pathlib.Path(jnn.__file__).parent / "core.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert "jax" in imported  # the walk sees the imports
    assert not [m for m in imported if m.startswith(("jnn.layers", "jnn.nets"))], imported
    assert jnn.identity is jnn.combinators.identity and jnn.resnet is jnn.nets.resnet


def test_import_jnn_loads_neither_orbax_nor_flax():
    import subprocess
    import sys

    code = "import sys, jnn; print(sorted({m.split('.')[0] for m in sys.modules} & {'orbax', 'flax'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
