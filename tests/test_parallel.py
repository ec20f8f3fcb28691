"""jnn.parallel on 8 virtual CPU devices (one subprocess: tests/parallel_devices.py) and on two
real processes through jax.distributed (tests/parallel_processes.py)."""
import fcntl
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import parallel

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(**extra):
    """This process's environment for a subprocess, with ``extra``; its XLA_FLAGS keep this
    process's (tests/conftest.py) except a device count, and add ``extra``'s."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags += extra.pop("XLA_FLAGS", "").split()
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **extra)


def _eight_devices() -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "parallel_devices.py")], capture_output=True, text=True,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """The 8-device script's results, computed once per test run: under pytest-xdist the first
    worker to take the lock runs it, and the other reads its JSON (the workers share the parent of
    their temporary folders)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _eight_devices()
    shared = tmp_path_factory.getbasetemp().parent / "parallel_devices.json"
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shared.exists():
            partial = shared.with_suffix(".partial")
            partial.write_text(json.dumps(_eight_devices()))
            partial.replace(shared)
        return json.loads(shared.read_text())


def test_fit_on_8_devices_matches_1_device_and_is_sharded(eight):
    assert eight["devices"] == 8
    assert eight["dp_loss_rel"] < 1e-5          # per-epoch train and validation losses
    assert eight["dp_params_rel"] < 1e-5        # final params
    assert eight["dp_param_specs"] == ["P()"] and eight["dp_param_devices"] == 8   # replicated on 8
    assert eight["dp_batch_specs"] == ["P('data',)"]   # the batch inside the fused epoch is split
    assert eight["global_batch_shards"] == [[4, 16]]   # 32 examples -> 4 per device


def test_fsdp_holds_an_eighth_of_the_params_per_device_and_trains_the_same(eight):
    assert eight["fsdp_total_bytes"] == 4 * (16 * 32 + 32 + 32 * 8 + 8)
    assert eight["fsdp_device0_bytes"] * 8 == eight["fsdp_total_bytes"]
    assert eight["fsdp_opt_device0_bytes"] * 8 == eight["fsdp_total_bytes"]   # Adam's mu is sharded too
    assert eight["fsdp_loss_rel"] < 1e-5 and eight["fsdp_params_rel"] < 1e-5
    assert eight["fsdp_resumed_device0_bytes"] == eight["fsdp_device0_bytes"]
    # a fresh run and one resumed from host arrays (train_state=) both start in the FSDP layout
    assert eight["fsdp_begin_device0_bytes"] == [eight["fsdp_device0_bytes"]] * 2


def test_fsdp_params_stay_split_inside_fits_epoch(eight):
    assert eight["fsdp_w_spec"] != "P()"
    assert eight["fsdp_params_inside_epoch"] == [eight["fsdp_w_spec"]]


def test_a_jitted_train_step_keeps_the_fsdp_layout_of_the_state(eight):
    assert eight["step_fsdp_specs"] == eight["fit_fsdp_specs"]
    assert eight["step_fsdp_specs"].count("P()") < len(eight["step_fsdp_specs"]) / 2   # mostly split, not replicated


def test_sharded_checkpoint_restores_onto_a_smaller_mesh(eight):
    assert eight["restore4_equal"]
    assert eight["restore4_devices"] == 4 and eight["restore4_shard"] == [16, 8]   # (16, 32) split 4 ways


def test_batch_norm_statistics_cover_the_global_batch(eight):
    assert eight["bn_out_rel"] < 1e-5 and eight["bn_mean_rel"] < 1e-5 and eight["bn_var_rel"] < 1e-5
    assert eight["bn_per_shard_mean_rel"] > 0.1   # per-device statistics would be far off


def test_tensor_parallel_outputs_and_gradients_equal_unsharded(eight):
    assert eight["tp_query_spec"] == "P(None, 'model')" and eight["tp_query_shard"] == [8, 2]
    assert eight["tp_out_spec"] == "P('model', None)" and eight["tp_dense_spec"] == "P(None, 'model')"
    assert eight["tp_grad_query_spec"] == "P(None, 'model')"   # the gradient stays split too
    assert eight["tp_out_rel"] < 1e-5 and eight["tp_value_rel"] < 1e-5 and eight["tp_grad_rel"] < 1e-5


def test_plan_mnist_mlp_matches_hand_computation(eight):
    p, b = eight["plan1"], 128
    assert p["param_count"] == 784 * 128 + 128 + 128 * 10 + 10 == 101_770
    assert p["param_bytes"] == 4 * 101_770 and p["opt_state_bytes"] == 0      # SGD keeps no state
    assert p["batch_bytes"] == b * 784 * 4 + b * 4
    # arguments = params + batch + step (int32) + key (2 x uint32), from XLA's memory_analysis
    assert p["argument_bytes"] == p["param_bytes"] + p["batch_bytes"] + 4 + 8
    # matmul FLOPs (2 per multiply-add): forward 2B(784*128 + 128*10); backward the weight
    # gradients 2B(784*128 + 128*10) and the input gradient of the second layer only (2B*128*10;
    # nothing needs d/dx of the first). SGD: 2 FLOPs per parameter. What is left is elementwise
    # work per example (bias adds, ReLU and its derivative, bias-gradient sums, softmax
    # cross-entropy): a few hundred to ~1.5k FLOPs per example, measured 873.
    dots = 2 * b * (784 * 128 + 128 * 10) * 2 + 2 * b * 128 * 10
    sgd = 2 * 101_770
    assert dots + sgd <= p["flops"] <= dots + sgd + 1500 * b
    p8 = eight["plan8"]   # Adam + FSDP on 8 devices: every dim but dense_1/b's divides by 8
    assert p8["param_bytes"] == 4 * (784 * 128 + 128 + 128 * 10) // 8 + 4 * 10
    assert p8["opt_state_bytes"] == 2 * p8["param_bytes"] + 4
    assert p8["argument_bytes"] == p8["param_bytes"] + p8["opt_state_bytes"] + p8["batch_bytes"] + 12
    assert abs(p8["flops"] - p["flops"]) / p["flops"] < 0.1   # same work, split 8 ways


def test_plan_transformer_matches_memory_analysis(eight):
    p = eight["plan_tf"]
    assert p["param_bytes"] * 8 == eight["plan_tf_unsharded_param_bytes"]
    assert p["argument_bytes"] == p["param_bytes"] + p["opt_state_bytes"] + p["batch_bytes"] + 12
    assert p["temp_bytes"] > 0 and p["flops_per_device"] > 0


def test_data_parallel_experiment_smoke_learns_on_8_devices_with_fsdp(eight):
    assert eight["exp_accuracy"] > 0.8          # 2 epochs on 2,000 MNIST images; chance is 0.1
    assert eight["exp_w_spec"] in ("P('data',)", "P('data', None)")   # rows split 8 ways
    # every parameter split 8 ways except dense_2/b (10 entries: replicated)
    assert eight["exp_param_bytes_per_device"] == 4 * (784 * 128 + 128 + 128 * 64 + 64 + 64 * 10) // 8 + 4 * 10


@pytest.mark.parametrize("key, match", [
    ("err_batch", "^ValueError: fit: the batch of 12 examples is not divisible by the mesh's data axis of size 8"),
    ("err_axis", r"names mesh axes \['tensor'\] that the mesh does not have"),
    ("err_pattern", r"patterns \[\('encoder/\*',\)\] match no parameter"),
    ("err_explicit", "are not Auto"),
    ("err_step_batch", "^ValueError: make_train_step: the batch of 12 examples is not divisible"),
    ("err_epoch_batch", "^ValueError: make_train_epoch: the batch of 12 examples is not divisible"),
    ("err_global_batch", "global_batch: the batch of 12 examples is not divisible"),
])
def test_parallel_errors(eight, key, match):
    import re
    assert eight[key] is not None and eight[key].startswith("ValueError") and re.search(match, eight[key])


def test_single_device_rules_and_plan_in_process():
    mesh = parallel.make_mesh()
    params = {"dense_0": {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}}
    with pytest.raises(ValueError, match="match no parameter"):
        parallel.param_specs(params, mesh, parallel.fsdp("conv_*"))
    with pytest.raises(ValueError, match="no entry in axis_rules"):
        parallel.logical([("w", ("embed", "hidden"))])
    with pytest.raises(ValueError, match=r"pass mesh=\(mesh, rules\)"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), (np.zeros((4, 2)), np.zeros((4, 1))),
                      key=jax.random.key(0), epochs=1, mesh=(None, parallel.fsdp()), verbose=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(phase: str, tmp_path) -> list[dict]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "parallel_processes.py"), phase, str(i), str(port),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    first = _two_processes("train", tmp_path)
    second = _two_processes("resume", tmp_path)
    # both processes hold identical params, equal to one process over the same global batches
    assert first[0]["params"] == first[1]["params"]
    reference = np.asarray(first[0]["reference"])
    assert np.max(np.abs(np.asarray(first[0]["params"]) - reference)) <= 1e-5 * np.max(np.abs(reference))
    # restored in a new pair of processes and continued: bit-identical to the uninterrupted run
    assert second[0]["params"] == second[1]["params"] == first[0]["params"]
    assert second[0]["losses"] == first[0]["losses"][3:]
    # processes that disagree on the batch size get a clear error, not a hang
    for s in second:
        assert "processes disagree on the batch: local batch sizes per process are [4, 6]" in s["error"]
    assert second[0]["history_written"] and not second[1]["history_written"]
