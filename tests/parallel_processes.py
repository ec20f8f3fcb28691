"""One of two jax.distributed processes for tests/test_parallel.py (CPU, gloo collectives).

usage: parallel_processes.py {train,resume} PROCESS_ID PORT TMPDIR

train:  6 FSDP steps over 2 processes (one device each), each process feeding its half of every
        global batch; all processes save a sharded checkpoint after step 3. Process 0 also runs
        the same 6 steps on one local device over the whole global batches (the reference).
resume: a new pair restores step 3, runs steps 4-6; then fit() with a history file per
        process, and a global batch whose local sizes disagree (4 vs 6).
Prints one JSON line.
"""
import json
import pathlib
import sys

import jax
import numpy as np

phase, pid, port, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])

import jnn  # noqa: E402
from jnn import parallel  # noqa: E402

parallel.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

rng = np.random.default_rng(0)
xs = rng.normal(size=(6, 8, 5)).astype(np.float32)   # 6 global batches of 8
ys = rng.integers(0, 4, (6, 8)).astype(np.int32)
model = jnn.serial(jnn.dense(16), jnn.relu(), jnn.dense(4))
opt, loss = optax.adam(1e-2), jnn.losses.softmax_cross_entropy
mesh = parallel.make_mesh()
rules = parallel.fsdp()
init = lambda: jnn.train.init_train_state(model, opt, jax.random.key(0), jax.ShapeDtypeStruct((8, 5), np.float32))
step = jax.jit(jnn.train.make_train_step(model, loss, opt, mesh=mesh, rules=rules))
ckpt = jnn.train.Checkpointer(tmp / "ckpt")
half = slice(4 * pid, 4 * pid + 4)


def run(ts, steps):
    losses = []
    for i in steps:
        ts, logs = step(ts, parallel.global_batch((xs[i, half], ys[i, half]), mesh))
        losses.append(float(np.asarray(logs["loss"].addressable_data(0))))
        if i == 2 and phase == "train":
            ckpt.save(3, ts)
    return ts, losses


def gathered(params):
    full = multihost_utils.process_allgather(params, tiled=True)
    return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(full)]).tolist()


out = {}
if phase == "train":
    ts, out["losses"] = run(parallel.sharded_init(init, mesh, rules), range(6))
    local = jax.jit(jnn.train.make_train_step(model, loss, opt))
    ref = jax.device_put(init(), jax.local_devices()[0])
    for i in range(6):
        ref, _ = local(ref, (xs[i], ys[i]))
    out["reference"] = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(ref.params)]).tolist()
else:
    template = parallel.sharded_init(init, mesh, rules)
    ts, meta = ckpt.restore(template)
    ts, out["losses"] = run(ts, range(3, 6))
    history = tmp / f"history_{pid}.csv"
    jnn.train.fit(model, loss, opt, (xs.reshape(48, 5), ys.reshape(48)), key=jax.random.key(1), epochs=1,
                  batch_size=8, mesh=mesh, callbacks=[jnn.train.callbacks.HistoryFile(history)],
                  verbose=2)
    out["history_written"] = history.exists()
    try:
        parallel.global_batch((xs[0, :4 + 2 * pid], ys[0, :4 + 2 * pid]), mesh)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
out["params"] = gathered(ts.params)
ckpt.close()
print(json.dumps(out))
