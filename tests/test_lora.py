"""jnn.lora: merge == adapted forward, only adapters train (no optimizer state for the base),
adapters saved alone, populations of adapters over one base, sharding rules, 8 devices."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _base(seed=0):
    model = jnn.serial(jnn.dense(16), jnn.tanh(), jnn.dense(3))
    params, state = model.init(jax.random.key(seed), jnp.zeros((1, 5)))
    return model, params, state


def _randomize(adapters, seed=1):
    leaves, treedef = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, :3] * 2 + 0.5).astype(np.float32)


@pytest.mark.parametrize("frozen", ["state", "closure"])
def test_merge_matches_numpy_and_adapted_outputs(frozen):
    model, base, state = _base()
    adapted = jnn.lora.wrap(model, base, rank=2, alpha=4.0, frozen=frozen)
    adapters, lora_state = adapted.init(jax.random.key(1), jnp.zeros((1, 5)))
    adapters = _randomize(adapters)
    merged = jnn.lora.merge(adapted, adapters)
    for name in ("dense_0", "dense_1"):
        a, b = (np.asarray(adapters[name]["w"][k], np.float64) for k in "ab")
        np.testing.assert_allclose(merged[name]["w"], np.asarray(base[name]["w"]) + 2.0 * a @ b, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(merged[name]["b"], base[name]["b"])    # biases not selected
    x = jnp.asarray(_data()[0])
    y_adapted = adapted.apply(adapters, lora_state, x)[0]
    np.testing.assert_allclose(y_adapted, model.apply(merged, state, x)[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(y_adapted, model.apply(base, state, x)[0], atol=1e-3)


def test_init_starts_at_base_and_conv_weights_flatten():
    model = jnn.serial(jnn.conv(4, (3, 3)), jnn.relu(), jnn.flatten(), jnn.dense(2))
    base, state = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
    adapted = jnn.lora.wrap(model, base, rank=3, include=("conv_0/w", "dense_0/w"))
    adapters, lora_state = adapted.init(jax.random.key(1), jnp.zeros((1, 6, 6, 2)))
    assert jax.tree_util.tree_map(jnp.shape, adapters) == {
        "conv_0": {"w": {"a": (18, 3), "b": (3, 4)}}, "dense_0": {"w": {"a": (144, 3), "b": (3, 2)}}}
    assert float(np.std(adapters["conv_0"]["w"]["a"])) == pytest.approx(1 / np.sqrt(18), rel=0.3)
    x = jnp.ones((2, 6, 6, 2))
    np.testing.assert_array_equal(adapted.apply(adapters, lora_state, x)[0], model.apply(base, state, x)[0])
    merged = jnn.lora.merge(adapted, _randomize(adapters))
    np.testing.assert_allclose(adapted.apply(_randomize(adapters), lora_state, x)[0], model.apply(merged, state, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_fit_trains_only_adapters_with_small_optimizer_state():
    model, base, state = _base()
    adapted = jnn.lora.wrap(model, base, rank=2)
    x, y = _data()
    result = jnn.train.fit(adapted, jnn.losses.mse, optax.adam(0.05), (x, y), key=jax.random.key(2),
                           epochs=15, batch_size=16, metrics={}, verbose=0)
    ts = result.train_state
    assert result.history["loss"][-1] < 0.5 * result.history["loss"][0]
    assert jax.tree_util.tree_map(jnp.shape, ts.params) == {
        "dense_0": {"w": {"a": (5, 2), "b": (2, 16)}}, "dense_1": {"w": {"a": (16, 2), "b": (2, 3)}}}
    lora_bytes = jnn.quantize.nbytes(ts.opt_state)
    full_bytes = jnn.quantize.nbytes(optax.adam(0.05).init(base))
    n_adapters = sum(a.size for a in jax.tree_util.tree_leaves(ts.params))
    assert lora_bytes <= 2 * 4 * n_adapters + 64 and full_bytes >= 2 * 4 * 147   # adam: two moments (+ count)
    assert lora_bytes < full_bytes
    for got, want in zip(jax.tree_util.tree_leaves(ts.state["base"]), jax.tree_util.tree_leaves(base)):
        np.testing.assert_array_equal(got, want)                          # the base never moved
    # the adapted model trained: its merged params reproduce it through the plain model
    merged = jnn.lora.merge(adapted, ts.params)
    np.testing.assert_allclose(model.apply(merged, state, x)[0], adapted.apply(ts.params, ts.state, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_adapters_save_alone(tmp_path):
    model, base, _ = _base()
    adapted = jnn.lora.wrap(model, base, rank=2, include="dense_1/w")
    adapters = _randomize(adapted.init(jax.random.key(1), jnp.zeros((1, 5)))[0])
    jnn.io.save_params(tmp_path / "lora.safetensors", adapters)
    jnn.io.save_params(tmp_path / "base.safetensors", base)
    back = jnn.io.load_params(tmp_path / "lora.safetensors")
    assert sorted(jnn.io.flatten(back)) == ["dense_1/w/a", "dense_1/w/b"]
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(adapters)):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "lora.safetensors").stat().st_size < (tmp_path / "base.safetensors").stat().st_size / 2


@pytest.mark.parametrize("frozen", ["closure", "state"])
def test_population_of_adapters_over_one_base_equals_fit(frozen):
    model, base, _ = _base()
    x, y = _data()
    make = lambda hp: jnn.lora.wrap(model, base, rank=2, frozen=frozen)
    result = jnn.train.fit_population(make, jnn.losses.mse, lambda hp: optax.adam(hp["lr"]), (x, y),
                                      hparams={"lr": jnp.array([0.05, 0.01])}, key=jax.random.key(3), epochs=3,
                                      batch_size=16, metrics={}, chunk_size=None)
    assert result.train_states.params["dense_0"]["w"]["a"].shape == (2, 5, 2)
    alone = jnn.train.fit(make(None), jnn.losses.mse, optax.adam(0.05), (x, y), key=result.keys[0], epochs=3,
                          batch_size=16, metrics={}, verbose=0)
    for got, want in zip(jax.tree_util.tree_leaves(result.member(0).train_state.params),
                         jax.tree_util.tree_leaves(alone.train_state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_closure_bakes_the_base_into_the_program_and_state_does_not():
    model = jnn.serial(jnn.dense(256), jnn.relu(), jnn.dense(2))
    base, _ = model.init(jax.random.key(0), jnp.zeros((1, 256)))
    sizes = {}
    for frozen in ("state", "closure"):
        adapted = jnn.lora.wrap(model, base, rank=2, include="dense_1/w", frozen=frozen)
        adapters, st = adapted.init(jax.random.key(1), jnp.zeros((1, 256)))
        sizes[frozen] = len(jax.jit(adapted.apply).lower(adapters, st, jnp.zeros((4, 256))).as_text())
    assert sizes["state"] < 20_000 < 256 * 256 * 2 < sizes["closure"]   # 256 KiB of weights, as hex text


def test_adapters_get_sharding_rules():
    model, base, _ = _base()
    adapters, _ = jnn.lora.wrap(model, base, rank=2).init(jax.random.key(1), jnp.zeros((1, 5)))
    mesh = jax.sharding.AbstractMesh((2,), ("data",))
    specs = jnn.parallel.param_specs(adapters, mesh, jnn.parallel.fsdp(["*/a", "*/b"]))
    P = jax.sharding.PartitionSpec
    # fsdp shards each array's largest dimension divisible by 2: a [5, 2] its rank axis, b [2, 16] its 16
    assert specs["dense_0"]["w"] == {"a": P(None, "data"), "b": P(None, "data")}
    assert specs["dense_1"]["w"] == {"a": P("data", None), "b": P("data", None)}


def test_fit_on_eight_devices_matches_one():
    script = textwrap.dedent("""
        import json, jax, jax.numpy as jnp, numpy as np, optax, jnn
        model = jnn.serial(jnn.dense(16), jnn.tanh(), jnn.dense(8))
        base, _ = model.init(jax.random.key(0), jnp.zeros((1, 8)))
        x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
        fit = lambda mesh: jnn.train.fit(jnn.lora.wrap(model, base, rank=2), jnn.losses.mse, optax.adam(0.01),
                                         (x, 2 * x), key=jax.random.key(1), epochs=2, batch_size=32,
                                         metrics={}, verbose=0, mesh=mesh)
        mesh = jnn.parallel.make_mesh()
        one, eight = fit(None), fit((mesh, jnn.parallel.fsdp()))
        a = eight.train_state.params["dense_1"]["w"]["b"]
        print(json.dumps({"devices": len(jax.devices()), "spec": str(a.sharding.spec),
                          "diff": max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(
                              jax.tree_util.tree_leaves(one.train_state.params),
                              jax.tree_util.tree_leaves(eight.train_state.params)))}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and "data" in out["spec"]
    assert out["diff"] < 1e-5


def test_errors_name_the_function():
    model, base, _ = _base()
    with pytest.raises(ValueError, match="jnn.lora.wrap.*select no weight"):
        jnn.lora.wrap(model, base, include="encoder/*")
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        jnn.lora.wrap(model, base, rank=0)
    with pytest.raises(ValueError, match="jnn.lora.merge: needs a layer made by jnn.lora.wrap, got 'serial'"):
        jnn.lora.merge(model, {})


@pytest.mark.skipif(not (pathlib.Path(os.environ.get("JNN_DATA_DIR", "/work/shared/data")) / "tinyshakespeare"
                         / "input.txt").is_file(), reason="Tiny Shakespeare not found")
def test_experiment_on_a_tiny_config(capsys):
    from experiments_path import load
    experiment = load("lora")
    out = experiment.main(experiment.Config(layers=1, features=32, pretrain_steps=30, adapt_steps=30, rank=2))
    assert out["lora"] < out["before"] and out["full"] < out["before"]
    assert abs(out["merged"] - out["lora"]) < 1e-4
    # rank 2 on one block: q, k, v, out 32x32 (4 x 128) and the MLP's 32x128, 128x32 (2 x 320)
    assert out["trainable"]["LoRA rank 2"] == 1152 and out["opt_bytes"]["LoRA rank 2"] == 2 * 4 * 1152 + 4
    assert "| LoRA rank 2 |" in capsys.readouterr().out
