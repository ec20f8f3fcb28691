"""Reliability, category 6: checkpoint paths, missing directories, half-deleted and corrupt steps."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import Checkpointer


def _state():
    return jnn.train.init_train_state(jnn.dense(2), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))


def test_a_path_under_a_regular_file_fails_at_creation(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"Checkpointer: cannot use .*runs/ckpt.*runs' is a file, not a directory"):
        Checkpointer(tmp_path / "runs" / "ckpt")


def test_restoring_from_a_missing_directory_is_an_error_not_a_mkdir(tmp_path):
    missing = tmp_path / "typo"
    with Checkpointer(missing) as ckpt:
        assert ckpt.all_steps() == []
        with pytest.raises(FileNotFoundError, match=r"Checkpointer.restore: no checkpoint in .*typo"):
            ckpt.restore(_state())
    assert not missing.exists()


def test_half_deleted_and_corrupt_steps(tmp_path):
    ts = _state()
    with Checkpointer(tmp_path / "ck", keep=None) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, ts._replace(step=jnp.asarray(step, jnp.int32)))
    shutil.rmtree(tmp_path / "ck" / "2" / "meta")  # as a kill during keep-k cleanup leaves it
    for f in (tmp_path / "ck" / "3" / "train_state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "manifest" not in f.name and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated array files
    with Checkpointer(tmp_path / "ck", keep=None) as ckpt:
        assert ckpt.all_steps() == [1, 3]
        with pytest.raises(ValueError, match=r"checkpoint 3 in .* is incomplete or corrupt; the latest good one is 1"):
            ckpt.restore(ts, step=3)
        restored, meta = ckpt.restore(ts, step=1)
        assert int(restored.step) == 1
        np.testing.assert_array_equal(restored.params["w"], ts.params["w"])
