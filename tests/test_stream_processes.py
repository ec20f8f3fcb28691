"""Processes reading Grain pipelines: Grain worker processes give the same batches; two
jax.distributed processes (127.0.0.1, gloo) each read a disjoint half of every global batch,
together every kept record once per epoch, and fit over the shards with a mesh trains like one
process over the whole global batches."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import jnn
from test_parallel import _env   # this process's environment and XLA flags, no device count

pytest.importorskip("grain")

N, BATCH, EPOCHS = 200, 12, 2   # 16 global batches an epoch (two scans over 8), 8 records dropped
DEVICES = 2                     # per process: a mesh of 4; a local batch of 6 is not a multiple of 4, the global 12 is

SCRIPT = r'''
import json, sys
import jax, numpy as np, optax, jnn

pid, port, n, batch, epochs = (int(a) for a in sys.argv[1:6])
jnn.parallel.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from jax.experimental import multihost_utils

# which records this process reads, batch by batch (the same shuffle as the training data below)
ids = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(np.arange(n)), batch_size=batch, seed=3,
                              num_epochs=epochs)
local = np.stack([b for b in ids])                                  # [steps * epochs, batch / 2]
both = multihost_utils.process_allgather(local)                     # [2, steps * epochs, batch / 2]

rng = np.random.default_rng(0)
x, y = rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)
model, opt, loss = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(3)), optax.sgd(0.1), jnn.losses.softmax_cross_entropy
kw = dict(key=jax.random.key(0), epochs=epochs, verbose=0)
pipe = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x, y), batch_size=batch, seed=3)
result = jnn.train.fit(model, loss, opt, jnn.train.Data(pipe, check=False), mesh=jnn.parallel.make_mesh(), **kw)
params = multihost_utils.process_allgather(result.train_state.params, tiled=True)
out = {"ids": both.tolist(), "steps": pipe.steps_per_epoch, "local_batch": local.shape[1],
       "params": [np.ravel(v).tolist() for v in jax.tree_util.tree_leaves(params)], "loss": result.history["loss"]}
if pid == 0:   # the reference: one process over the whole global batches, in the same order
    whole = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x, y), batch_size=batch, seed=3,
                                    shard=jnn.data.grain._grain().sharding.NoSharding())
    ref = jnn.train.fit(model, loss, opt, jnn.train.Data(whole, check=False), **kw)
    out["reference"] = [np.ravel(v).tolist() for v in jax.tree_util.tree_leaves(ref.train_state.params)]
    out["reference_loss"] = ref.history["loss"]
print(json.dumps(out))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_halves_covering_each_epoch_once(tmp_path):
    script = tmp_path / "proc.py"
    script.write_text(SCRIPT)
    port = _free_port()
    env = _env(XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(N), str(BATCH), str(EPOCHS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    first, second = (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)
    ids = np.asarray(first["ids"])                         # [process, step, local example]
    steps = first["steps"]
    assert steps == N // BATCH and first["local_batch"] == BATCH // 2 and ids.shape == (2, steps * EPOCHS, BATCH // 2)
    for k in range(steps * EPOCHS):                        # each global batch: two disjoint halves
        assert not set(ids[0, k]) & set(ids[1, k])
    for e in range(EPOCHS):                                # each epoch: every record at most once, all but N % BATCH
        epoch = ids[:, e * steps:(e + 1) * steps].ravel()
        assert len(epoch) == len(set(epoch.tolist())) == N - N % BATCH
    assert set(ids[:, :steps].ravel().tolist()) != set(ids[:, steps:].ravel().tolist())   # reshuffled
    # both processes hold the same params, equal to one process over the whole global batches
    assert first["params"] == second["params"]
    for a, b in zip(first["params"], first["reference"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["loss"], first["reference_loss"], rtol=1e-5)


@pytest.mark.parametrize("num_epochs, taken_at", [(None, (3, 35)), (3, (33,))])
def test_worker_processes_give_the_same_batches_and_resume_from_json_state(num_epochs, taken_at):
    """Workers send batches 32 at a time (12 an epoch; 3 epochs: groups of 32 and 4): the batches
    come in the in-process order, and a state taken inside the first group, a later one, or the
    short last one resumes at the next batch. The states are taken along one run (each resume
    starts its own workers)."""
    source = jnn.data.grain.ArraySource(np.arange(100.0)[:, None], np.arange(100))
    total = 36
    alone = [b[1].tolist() for b in jnn.data.grain.pipeline(source, batch_size=8, seed=0).dataset[:total]]
    pipe = jnn.data.grain.pipeline(source, batch_size=8, seed=0, worker_count=2, num_epochs=num_epochs)
    it = iter(pipe)
    seen, states = [], {}
    for i in range(1, total + 1):
        seen.append(next(it)[1].tolist())
        if i in taken_at:
            states[i] = json.loads(json.dumps(it.get_state()))     # what a checkpoint's metadata stores
    assert seen == alone
    if num_epochs is not None:
        with pytest.raises(StopIteration):
            next(it)
    it.close()
    for taken, state in states.items():
        again = iter(pipe)
        again.set_state(state)
        assert [next(again)[1].tolist() for _ in range(total - taken)] == alone[taken:], f"resumed after {taken}"
        again.close()


def test_fit_with_worker_processes_equals_fit_reading_in_this_process():
    """Workers send batches in groups; fit's chunks of them are views of a group (no copy), and
    training gives the same params bit for bit as reading in this process."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 6)).astype(np.float32), rng.integers(0, 3, 400).astype(np.int32)
    source = jnn.data.grain.ArraySource(x, y)
    model, opt = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dense(3)), optax.adam(1e-2)
    kw = dict(key=jax.random.key(0), epochs=2, verbose=0)
    params = []
    for workers in (0, 2):
        pipe = jnn.data.grain.pipeline(source, batch_size=16, seed=1, worker_count=workers)
        result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, opt, jnn.train.Data(pipe, check=False), **kw)
        params.append(jax.tree_util.tree_leaves(result.train_state.params))
    for a, b in zip(*params):
        np.testing.assert_array_equal(a, b)
    it = iter(jnn.data.grain.pipeline(source, batch_size=16, seed=1, worker_count=1))
    batches = [next(it)[0] for _ in range(8)]
    chunk = jnn.train.stream._stack_host(batches)
    assert np.shares_memory(chunk, batches[0]) and np.array_equal(chunk, np.stack(batches))
    it.close()


def _niceness(record):
    x, y = record
    return np.full_like(x, os.nice(0)), y


@pytest.mark.parametrize("worker_nice", [19, 0])
def test_worker_processes_run_at_the_niceness_asked(worker_nice):
    source = jnn.data.grain.ArraySource(np.zeros((16, 1)), np.arange(16))
    pipe = jnn.data.grain.pipeline(source, batch_size=8, seed=0, worker_count=1, worker_nice=worker_nice,
                                   transform=_niceness)
    it = iter(pipe)
    x, _ = next(it)
    it.close()
    assert x.ravel().tolist() == [min(os.nice(0) + worker_nice, 19)] * 8
