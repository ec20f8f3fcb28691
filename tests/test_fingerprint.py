"""Checkpoint fingerprints: fit's checkpoints record the train step's program, the versions and the data
order; resuming under code that compiles differently, or with other data, warns naming the change."""
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

PROGRAM, ORDER = "the train step compiles to another program", "the data order differs"


def _model(activation):
    return jnn.serial(jnn.dense(4), activation, jnn.dense(2))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)


def _fit(model, data, epochs, callbacks, start=None):
    return jnn.train.fit(model, jnn.losses.mse, optax.sgd(0.1), data, key=jax.random.key(0), epochs=epochs,
                         batch_size=4, metrics={}, verbose=0, callbacks=callbacks, train_state=start)


def _fingerprint_warnings(record):
    return [str(w.message) for w in record if "was saved by a run that differs" in str(w.message)]


def _resume(directory, model, data):
    """Epochs 3..4 from the checkpoint saved after epoch 2; the fingerprint warnings it gave."""
    ckpt = jnn.train.Checkpointer(directory)
    template = jnn.train.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((4, 3)))
    restored, meta = ckpt.restore(template)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(model, data, 4, [ckpt.save_every(2)], jnn.train.Start(restored, epoch=meta["step"]))
    return _fingerprint_warnings(record)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run of 2 epochs checkpointed by save_every, relu between the layers."""
    directory = tmp_path_factory.mktemp("fp") / "ckpt"
    result = _fit(_model(jnn.relu()), _data(), 2, [jnn.train.Checkpointer(directory).save_every(2)])
    return directory, result


def test_save_every_records_the_fingerprint_of_fits_train_step(saved):
    directory, result = saved
    meta = jnn.train.Checkpointer(directory).read_meta(2)
    model, x_y = _model(jnn.relu()), tuple(jnp.asarray(a) for a in _data())
    step = jnn.train.make_train_step(model, jnn.losses.mse, optax.sgd(0.1), metrics={})
    template = jnn.train.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((4, 3)))
    expected = jnn.doctor.fingerprint(step, template, tuple(a[:4] for a in x_y))
    assert meta["fingerprint"]["program"] == expected["program"]
    assert meta["fingerprint"]["versions"] == expected["versions"]
    assert meta["fingerprint"]["data_order"] is not None


def test_resuming_with_the_same_code_and_data_is_quiet(saved, tmp_path):
    directory, _ = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    assert _resume(copy, _model(jnn.relu()), _data()) == []
    assert jnn.train.Checkpointer(copy).all_steps()[-1] == 4


def test_resuming_with_another_activation_warns_naming_the_program(saved, tmp_path):
    directory, _ = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    found = _resume(copy, _model(jnn.tanh()), _data())   # same params and shapes, another program
    assert len(found) == 1 and PROGRAM in found[0] and ORDER not in found[0]
    assert found[0].startswith(f"Checkpointer: checkpoint 2 in {copy.resolve()} was saved by a run that differs")


def test_resuming_with_other_data_warns_naming_the_data_order(saved, tmp_path):
    directory, _ = saved
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    found = _resume(copy, _model(jnn.relu()), _data(seed=1))
    assert len(found) == 1 and ORDER in found[0] and PROGRAM not in found[0]


def test_restore_compares_a_given_fingerprint_and_skips_checkpoints_without_one(tmp_path):
    ts = jnn.train.init_train_state(jnn.dense(1), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
    now = {"program": "a" * 16, "versions": {"jax": jax.__version__}, "data_order": None}
    with jnn.train.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, ts)
        ckpt.save(2, ts, fingerprint=now)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ckpt.restore(ts, 1, fingerprint=now)          # saved without one: nothing to compare
            ckpt.restore(ts, 2, fingerprint=now)
            ckpt.restore(ts, 2)                           # none given
        with pytest.warns(UserWarning, match=r"checkpoint 2 .* the train step compiles to another program "
                                             r"\(aaaaaaaaaaaaaaaa -> bbbbbbbbbbbbbbbb\); jax .* -> 0\.0"):
            ckpt.restore(ts, 2, fingerprint={**now, "program": "b" * 16, "versions": {"jax": "0.0"}})
        assert ckpt.read_meta(2)["fingerprint"] == now and ckpt.read_meta(1)["fingerprint"] is None


def _stream_fit(directory, activation, batches, epochs):
    ckpt = jnn.train.Checkpointer(directory)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = jnn.train.fit(_model(activation), jnn.losses.mse, optax.sgd(0.1), jnn.train.Data(batches, check=False),
                               key=jax.random.key(0), epochs=epochs, metrics={}, verbose=0,
                               checkpoint=ckpt.every_steps(2, resume=True))
    return result, _fingerprint_warnings(record), ckpt


def test_a_streamed_resume_compares_the_fingerprint(tmp_path):
    x, y = _data()
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    runs = {"same": (jnn.relu(), batches), "program": (jnn.tanh(), batches), "order": (jnn.relu(), batches[::-1])}
    for name, (activation, data) in runs.items():
        directory = tmp_path / name
        _, found, ckpt = _stream_fit(directory, jnn.relu(), batches, 1)
        assert found == [] and ckpt.read_meta()["fingerprint"]["data_order"] is not None
        result, found, _ = _stream_fit(directory, activation, data, 2)
        assert int(result.train_state.step) == 8
        expected = {"same": [], "program": [PROGRAM], "order": [ORDER]}[name]
        assert [kind for kind in (PROGRAM, ORDER) if any(kind in w for w in found)] == expected, (name, found)
        assert len(found) == len(expected)
