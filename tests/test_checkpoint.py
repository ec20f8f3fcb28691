"""jnn.train.checkpoint: bit-identical resume, crash safety, retention, structure checks."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train
from jnn.train.checkpoint import Checkpointer

LOSS = jnn.losses.softmax_cross_entropy
OPT = optax.adamw(3e-3, weight_decay=1e-3)


@pytest.fixture(scope="module")
def digits():
    x, y = jnn.data.load_digits()
    return x[:640], y[:640]


def _mlp(hidden=32):
    return jnn.serial(jnn.flatten(), jnn.dense(hidden), jnn.relu(), jnn.dropout(0.3), jnn.dense(10))


def _fit(model, data, **kw):
    return train.fit(model, LOSS, OPT, data, key=jax.random.key(0), batch_size=64, metrics={},
                     verbose=0, **kw)


def _assert_trees_equal(a, b):
    a, b = train_state_arrays(a), train_state_arrays(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def train_state_arrays(ts):
    return jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, ts)


def test_resume_from_checkpoint_is_bit_identical_to_an_uninterrupted_run(digits, tmp_path):
    # The run saves after epochs 2 and 4; resuming from epoch 2's checkpoint in a fresh
    # template must reproduce epochs 3-4 bit for bit (as after a crash following epoch 2).
    model = _mlp()
    ckpt = Checkpointer(tmp_path / "run", keep=2, config={"hidden": 32, "dropout": 0.3})
    straight = _fit(model, digits, epochs=4, callbacks=[ckpt.save_every(2)]).train_state
    assert ckpt.all_steps() == [2, 4]

    # A fresh process rebuilds the template from the stored config, with any key.
    reader = Checkpointer(tmp_path / "run")
    template = train.init_train_state(_mlp(reader.read_meta(2)["config"]["hidden"]), OPT,
                                      jax.random.key(123), jnp.zeros((64, 8, 8, 1)))
    restored, meta = reader.restore(template, step=2)
    assert meta["step"] == 2 and meta["config"] == {"hidden": 32, "dropout": 0.3}
    assert int(restored.step) == 2 * (640 // 64)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(template.key)
    assert not np.array_equal(jax.random.key_data(restored.key), jax.random.key_data(template.key))
    assert meta["tree"]["params/dense_0/w"] == [[64, 32], "float32"]
    assert set(meta["logs"]) == {"loss", "time"} and meta["versions"]["jax"] == jax.__version__
    assert meta["versions"]["orbax"] and meta["versions"]["optax"] == optax.__version__

    resumed = _fit(model, digits, epochs=4, train_state=jnn.train.Start(restored, epoch=meta["step"])).train_state
    _assert_trees_equal(resumed, straight)
    _assert_trees_equal(reader.restore(template)[0], straight)     # the latest, epoch 4

    # The PRNG key round trip matters: resuming with another key (other dropout masks and
    # shuffles) does not reproduce the run.
    other = _fit(model, digits, epochs=4,
                 train_state=jnn.train.Start(restored._replace(key=template.key), epoch=2)).train_state
    assert not np.array_equal(other.params["dense_0"]["w"], straight.params["dense_0"]["w"])


_CRASHING_SAVER = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jnn.train.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], keep=3)
    ckpt.save(1, {"w": jnp.arange(1000, dtype=jnp.float32), "key": jax.random.key(7)})

    cls = atomicity.AtomicRenameTemporaryPath
    create = cls.create

    async def announcing_create(self):
        path = await create(self)
        print("WRITING", path, flush=True)      # the parent kills us once data is flowing
        return path

    async def never_commit(self):               # if the kill comes late, it still precedes the commit
        time.sleep(600)

    cls.create, cls.finalize = announcing_create, never_commit
    big = jax.random.uniform(jax.random.key(1), (32, 1024, 1024))   # 128 MiB, barely compressible
    ckpt.save(2, {"w": jnp.arange(1000, dtype=jnp.float32) + 1, "big": big, "key": jax.random.key(8)})
    print("SAVED", flush=True)
""")


def _size(directory):
    total = 0
    for f in list(directory.rglob("*")) if directory.exists() else []:
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:   # a file renamed while we look
            pass
    return total


def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_CRASHING_SAVER)
    directory = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(script), str(directory)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING"), f"the saver did not reach the second save: {line!r}"
        partial = pathlib.Path(line.split(maxsplit=1)[1].strip())
        deadline = time.monotonic() + 120
        while _size(partial) < 2**20 and time.monotonic() < deadline:   # kill mid-write of the big array
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "SAVED" not in proc.stdout.read()
    assert partial.parent == directory.resolve() and partial.name.startswith("2.") and partial.exists()
    assert _size(partial) >= 2**20, "the kill should come after step 2's arrays started to be written"

    ckpt = Checkpointer(directory)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    template = {"w": jnp.zeros(1000, jnp.float32), "key": jax.random.key(0)}
    restored, meta = ckpt.restore(template)
    assert meta["step"] == 1
    np.testing.assert_array_equal(restored["w"], np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(jax.random.key(7)))

    # The next save clears the debris and writes step 2 normally.
    ckpt.save(2, {"w": jnp.full(1000, 2.0, jnp.float32), "key": jax.random.key(9)})
    assert ckpt.all_steps() == [1, 2]
    assert not [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    np.testing.assert_array_equal(ckpt.restore(template)[0]["w"], np.full(1000, 2.0, np.float32))


def test_keep_retains_only_the_last_k_and_steps_must_increase(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in range(1, 6):
        ckpt.save(step, {"w": jnp.full((3,), float(step))})
    assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["4", "5"]
    np.testing.assert_array_equal(ckpt.restore({"w": jnp.zeros(3)}, step=4)[0]["w"], [4.0, 4.0, 4.0])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 3 in .*saved steps: \[4, 5\]"):
        ckpt.restore({"w": jnp.zeros(3)}, step=3)
    with pytest.raises(ValueError, match=r"step 5 must be >= 0 and after the latest checkpoint \(5\)"):
        ckpt.save(5, {"w": jnp.zeros(3)})
    ckpt.delete(5)
    ckpt.save(5, {"w": jnp.zeros(3)})
    assert ckpt.all_steps() == [4, 5]


def test_bad_arguments_and_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="keep must be a positive integer or None, got 0"):
        Checkpointer(tmp_path, keep=0)
    ckpt = Checkpointer(tmp_path / "empty")
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError, match="Checkpointer.restore: no checkpoint in .*empty"):
        ckpt.restore({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        ckpt.save_every(0)


def _abstract_state(model, optimizer):
    return jax.eval_shape(lambda: train.init_train_state(model, optimizer, jax.random.key(5),
                                                         jnp.zeros((4, 8, 8, 1))))


def test_a_checkpoint_of_another_model_names_the_mismatched_paths(tmp_path):
    example = jnp.zeros((4, 8, 8, 1))
    ckpt = Checkpointer(tmp_path)
    saved = train.init_train_state(_mlp(32), OPT, jax.random.key(0), example)
    ckpt.save(1, saved)

    wider_and_deeper = jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dense(10), jnn.dense(3))
    template = _abstract_state(wider_and_deeper, OPT)
    with pytest.raises(ValueError, match=r"(?s)checkpoint 1 in .* does not match the template's structure.*"
                       r"missing from the checkpoint \(in the template only\): params/dense_2/b, params/dense_2/w.*"
                       r"shape mismatch: params/dense_0/b: checkpoint \(32,\) vs template \(16,\); "
                       r"params/dense_0/w: checkpoint \(64, 32\) vs template \(64, 16\)"):
        ckpt.restore(template)

    renamed = jnn.serial(jnn.flatten(), jnn.named("hidden", jnn.dense(32)), jnn.relu(), jnn.dense(10))
    with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint \(in the template only\): params/hidden/b, "
                       r"params/hidden/w.*unexpected in the checkpoint \(not in the template\): params/dense_1/b, "
                       r"params/dense_1/w"):
        ckpt.restore(_abstract_state(renamed, OPT))

    with pytest.raises(ValueError, match=r"unexpected in the checkpoint .*opt_state/0/count, opt_state/0/mu/"):
        ckpt.restore(_abstract_state(_mlp(32), optax.sgd(0.1)))

    # The right template restores; an abstract one (jax.eval_shape) works as well.
    restored, _ = ckpt.restore(_abstract_state(_mlp(32), OPT))
    _assert_trees_equal(restored, saved)


def test_unserializable_config_is_rejected_before_anything_is_written(tmp_path):
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(TypeError, match="config and logs must be JSON-serializable"):
        ckpt.save(1, {"w": jnp.zeros(3)}, config={"activation": jax.nn.relu})
    assert ckpt.all_steps() == [] and not list(tmp_path.glob("1*"))


@pytest.mark.parametrize("call,error,message", [
    (lambda ck, ts: ck.save(True, ts), ValueError, "Checkpointer.save: step must be a non-negative integer, got True"),
    (lambda ck, ts: ck.save(2.0, ts), ValueError, "Checkpointer.save: step must be a non-negative integer, got 2.0"),
    (lambda ck, ts: ck.save(2, ts, config=[1]), TypeError,
     "Checkpointer.save: config must be a JSON-serializable dict or None, got list"),
    (lambda ck, ts: ck.restore(ts, step="1"), ValueError,
     "Checkpointer.restore: step must be a non-negative integer, got '1'"),
    (lambda ck, ts: ck.restore_params(like={"w": 1}), TypeError,
     "Checkpointer.restore_params: like must be a (params, state) pair, got dict"),
    (lambda ck, ts: jnn.train.Checkpointer(ck.directory.parent / "other", config="units=2"), TypeError,
     "Checkpointer: config must be a JSON-serializable dict or None, got str"),
])
def test_step_config_and_like_are_checked(tmp_path, call, error, message):
    ck = jnn.train.Checkpointer(tmp_path / "ck")
    ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
    ck.save(1, ts)
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        call(ck, ts)
    assert ck.all_steps() == [1]
    ck.save(np.int64(2), ts._replace(step=jnp.asarray(2)))   # NumPy and array integers are steps
    ck.save(ts.step + 3, ts)
    assert ck.all_steps() == [1, 2, 3]
    ck.close()


def test_save_every_also_saves_the_last_epoch_when_it_is_not_a_multiple(digits, tmp_path):
    ckpt = Checkpointer(tmp_path / "run")
    result = _fit(_mlp(), digits, epochs=5, callbacks=[ckpt.save_every(2)])
    assert ckpt.all_steps() == [2, 4, 5]
    restored, meta = ckpt.restore(result.train_state)
    _assert_trees_equal(restored, result.train_state)
    assert meta["logs"]["loss"] == result.history["loss"][-1]


def test_save_every_does_not_save_a_non_finite_last_epoch(digits, tmp_path):
    ckpt = Checkpointer(tmp_path / "run")
    nan_loss = lambda out, y: jnp.mean(out) * jnp.nan
    result = train.fit(_mlp(), nan_loss, OPT, digits, key=jax.random.key(0), batch_size=64, metrics={}, verbose=0,
                       epochs=3, callbacks=[ckpt.save_every(2), jnn.train.NonFinite("stop")])
    assert result.nonfinite_epoch == 1 and ckpt.all_steps() == []
