"""Exact mid-epoch resume of a streamed fit: SIGKILL a run between checkpoints, resume it in a new
process, and compare with an uninterrupted run (params and history bit for bit)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("grain")

SCRIPT = r'''
import json, os, signal, sys
import jax, numpy as np, optax, jnn

def run(out, kill_at):
    x, y = jnn.data.load_mnist("test", download=False)
    x, y = x[:192], y[:192]
    pipe = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x, y), batch_size=8, seed=5)   # 24 steps an epoch

    class Dying:
        """The pipeline, SIGKILLing this process when fit asks for batch number kill_at (counted from 1)."""
        def __iter__(self):
            self.it, self.pulled = iter(pipe), 0
            return self

        def __next__(self):
            self.pulled += 1
            if self.pulled == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    model = jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dropout(0.2), jnn.dense(10))
    ckpt = jnn.train.Checkpointer(os.path.join(out, "ckpt"), keep=2)
    result = jnn.train.fit(model, jnn.losses.softmax_cross_entropy, optax.adam(1e-3),
                           jnn.train.Data(Dying(), steps_per_epoch=24, check=False), key=jax.random.key(1), epochs=3,
                           val_data=(x[:64], y[:64]), checkpoint=ckpt.every_steps(20, resume=True), verbose=0)
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(result.train_state)
              if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)]
    np.savez(os.path.join(out, "final.npz"), *leaves)
    history = {k: v for k, v in result.history.items() if k != "time"}
    open(os.path.join(out, "history.json"), "w").write(json.dumps(history))


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
'''


def _run(script, out, kill_at):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), str(out), str(kill_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load(out):
    with np.load(out / "final.npz") as f:
        leaves = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    return leaves, json.loads((out / "history.json").read_text())


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # Steps run in scans of 8 batches (fit's CHUNK) or one by one where fewer are left before an
    # epoch's end or a checkpoint (every 20 steps): epoch 1 scans 0-8, 8-16, steps 16..19, saves
    # at 20, steps 20..23; epoch 2 scans 24-32, 32-40, saves at 40 (mid-epoch), scans 40-48.
    # Killed when fit pulls batch 50 (in epoch 3; epoch 2 was all prefetched before its save).
    # The uninterrupted run, meanwhile, also in a fresh process: both sides then compile every
    # program (eager ones too) the same way, whatever this test worker ran before.
    dying, uninterrupted = _run(script, killed, 50), _run(script, whole, 0)
    _, err_whole = uninterrupted.communicate(timeout=240)
    assert uninterrupted.returncode == 0, err_whole[-2000:]
    _, err_killed = dying.communicate(timeout=240)
    assert dying.returncode == -signal.SIGKILL, err_killed[-2000:]
    assert sorted(int(p.name) for p in (killed / "ckpt").iterdir() if p.name.isdigit()) == [20, 40]
    assert not (killed / "final.npz").exists()

    import jnn
    meta = jnn.train.Checkpointer(killed / "ckpt").read_meta()
    assert meta["progress"]["epoch"] == 2 and meta["progress"]["step_in_epoch"] == 16   # mid-epoch
    assert meta["data_state"] == {"next_index": 40}
    assert len(meta["progress"]["history"]["loss"]) == 1

    resumed = _run(script, killed, 0)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    (got, got_history), (want, want_history) = _load(killed), _load(whole)
    assert got_history == want_history and len(want_history["loss"]) == 3
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
