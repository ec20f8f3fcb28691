"""Checkpoints, resume and streams (issue 40 categories 2, 5, 6, 8; issue 39): each case is a probe that
failed before its fix. A non-finite state is never checkpointed; resume says where it resumed; a
streamed run's final step is saved; misuse of streams and checkpoint directories fails before training."""
import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train import Checkpointer

X = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
Y = X @ np.array([[1.0], [-2.0]], np.float32)
MODEL, LOSS = jnn.dense(1), jnn.losses.mse


def _opt(nan_from: int = 10**9):
    """SGD whose updates are NaN from update ``nan_from`` on (counted from 0): a divergence at a chosen step."""
    return optax.chain(optax.sgd(0.1), optax.scale_by_schedule(lambda n: jnp.where(n >= nan_from, jnp.nan, 1.0)))


class Batches:
    """A re-iterable, stateless stream of ``(x, y)`` batches of 2 (4 a epoch)."""

    def __len__(self):
        return 4

    def __iter__(self):
        return iter([(X[i:i + 2], Y[i:i + 2]) for i in range(0, 8, 2)])


def _pipe(batch_size=2):
    pytest.importorskip("grain")
    return jnn.data.grain.pipeline(jnn.data.grain.ArraySource(X, Y), batch_size=batch_size, seed=3, shuffle=False)


def _fit(data, *, opt=None, epochs=2, **kw):
    kw = {"verbose": 0, "metrics": {}, "batch_size": 2, **kw}
    return jnn.train.fit(MODEL, LOSS, opt or _opt(), data, key=jax.random.key(0), epochs=epochs, **kw)


def _finite_checkpoints(directory):
    template = _fit((X, Y), epochs=1).train_state
    with Checkpointer(directory) as ckpt:
        params = {s: ckpt.restore(template, s)[0].params for s in ckpt.all_steps()}
    return {s: bool(all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(p))) for s, p in params.items()}


# ---- A. a non-finite state is never checkpointed (issue 40, category 2)

def _nan_streamed(tmp_path, action):
    ckpt = Checkpointer(tmp_path / "ck", keep=None)
    with pytest.raises(jnn.train.NonFiniteError) if action == "raise" else pytest.warns(RuntimeWarning):
        _fit(jnn.train.Data(Batches(), check=False), opt=_opt(4), checkpoint=ckpt.every_steps(2),
             callbacks=[jnn.train.NonFinite(action)])
    assert _finite_checkpoints(tmp_path / "ck") == {2: True, 4: True}   # step 6 (after the NaN step 5) is not saved


def _nan_in_memory(tmp_path, action):
    ckpt = Checkpointer(tmp_path / "ck", keep=None)
    with pytest.raises(jnn.train.NonFiniteError) if action == "raise" else pytest.warns(RuntimeWarning):
        _fit((X, Y), opt=_opt(4), epochs=3, batch_size=4, callbacks=[ckpt.save_every(1), jnn.train.NonFinite(action)])
    assert _finite_checkpoints(tmp_path / "ck") == {1: True, 2: True}   # epoch 3 (updates 4, 5) is not saved


def _nan_then_resume_clean(tmp_path, capsys):
    """The run that hit NaN at update 5 left its last finite checkpoint (4); resumed with a clean
    optimizer it restores 4, says so, and ends as an uninterrupted clean run does."""
    with pytest.raises(jnn.train.NonFiniteError):
        _fit(_pipe(), batch_size=None, opt=_opt(5), checkpoint=Checkpointer(tmp_path / "ck").every_steps(2))
    resumed = _fit(_pipe(), batch_size=None, verbose=2,
                   checkpoint=Checkpointer(tmp_path / "ck").every_steps(2, resume=True))
    assert f"fit: resumed from checkpoint 4 in {tmp_path / 'ck'} (epoch 1, 4 of 4 batches)" in capsys.readouterr().out
    whole = _fit(_pipe(), batch_size=None)
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.train_state.params, whole.train_state.params)


# ---- B. resume talks, and the final step is saved (issue 39)

def _fresh_start_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="jnn"):
        _fit(_pipe(), batch_size=None, checkpoint=Checkpointer(tmp_path / "ck").every_steps(3, resume=True))
    assert f"fit: no checkpoint in {tmp_path / 'ck'}; starting fresh" in caplog.text


def _final_step_saved_and_rerun_trains_nothing(tmp_path, caplog):
    whole = _fit(_pipe(), batch_size=None, checkpoint=Checkpointer(tmp_path / "ck").every_steps(3, resume=True))
    assert Checkpointer(tmp_path / "ck").all_steps() == [3, 6, 8]
    with caplog.at_level(logging.INFO, logger="jnn"):
        again = _fit(_pipe(), batch_size=None, checkpoint=Checkpointer(tmp_path / "ck").every_steps(3, resume=True))
    assert (f"fit: resumed from checkpoint 8 in {tmp_path / 'ck'} (epoch 2, 4 of 4 batches); "
            f"the run is already complete: nothing to train") in caplog.text
    assert int(again.train_state.step) == 8 and again.history["loss"] == whole.history["loss"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.train_state.params, whole.train_state.params)


# ---- C. streams and resume (issue 40, category 6)

def _list_of_batches_is_a_stream(tmp_path):
    for n in (2, 4):   # two batches used to be read as (x, y)
        batches = list(Batches())[:n]
        listed = _fit(batches)
        streamed = _fit(jnn.train.Data(iter(batches * 2), steps_per_epoch=n), batch_size=None)
        assert int(listed.train_state.step) == 2 * n and listed.history["loss"] == streamed.history["loss"]


def _list_of_batches_refused_where_nothing_streams(tmp_path):
    with pytest.raises(TypeError, match=r"^fit_population train_data: expected a pair \(x, y\), got a list of 2 "
                                        r"\(x, y\) batches, which only fit streams; pass \(x, y\) as a tuple"):
        jnn.train.fit_population(lambda hp: MODEL, LOSS, lambda hp: optax.sgd(hp["lr"]), list(Batches())[:2],
                                 hparams={"lr": jnp.array([0.1, 0.2])}, key=jax.vmap(jax.random.key)(jnp.arange(2)),
                                 epochs=1, batch_size=2, metrics={})


def _reiterable_stream_resumes_at_an_epoch_end(tmp_path):
    """A re-iterable stream without iterator state (a list of batches) resumes from an epoch's end."""
    for data in (Batches(), list(Batches())):
        ckpt = Checkpointer(tmp_path / type(data).__name__)
        _fit(data, batch_size=None, epochs=1, checkpoint=ckpt.every_steps(4, resume=True))
        rest = _fit(data, batch_size=None, epochs=2, checkpoint=ckpt.every_steps(4, resume=True))
        whole = _fit(data, batch_size=None, epochs=2)
        assert rest.history["epoch"] == [1, 2] and rest.history["loss"] == whole.history["loss"]
        jax.tree_util.tree_map(np.testing.assert_array_equal, rest.train_state.params, whole.train_state.params)


def _one_shot_val_data_fails_before_training(tmp_path):
    epochs = []
    with pytest.raises(TypeError, match=r"^fit: val_data is a one-shot iterator \(generator\).*list\(val_data\)"):
        _fit((X, Y), val_data=((X[i:i + 2], Y[i:i + 2]) for i in range(0, 8, 2)),
             callbacks=[lambda epoch, ts, logs: epochs.append(epoch)])
    assert epochs == []


def _resume_with_another_batch_size(tmp_path):
    _fit(_pipe(), batch_size=None, epochs=1, checkpoint=Checkpointer(tmp_path / "ck").every_steps(3))
    with pytest.raises(ValueError, match=r"^fit: checkpoint \d in .*ck was saved by a run of 4 batches an epoch of 2 "
                                         r"examples; this one has 2 of 4: resume with the same batches"):
        _fit(_pipe(4), batch_size=None, checkpoint=Checkpointer(tmp_path / "ck").every_steps(3, resume=True))


def _streamed_val_monitor_checked_before_training(tmp_path):
    epochs = []
    with pytest.raises(ValueError, match=r"val_nope.*\(checked before training\)"):
        _fit((X, Y), val_data=Batches(), early_stopping=jnn.train.EarlyStopping(monitor="val_nope"),
             callbacks=[lambda epoch, ts, logs: epochs.append(epoch)])
    assert epochs == []


def _used_directory_without_resume_fails_before_training(tmp_path):
    _fit(_pipe(), batch_size=None, epochs=1, checkpoint=Checkpointer(tmp_path / "ck").every_steps(2))
    epochs = []
    with pytest.raises(FileExistsError, match=r"^fit: .*ck already holds checkpoints \(latest: step 4\); pass "
                                              r"every_steps\(k, resume=True\) to continue .* or choose a new "
                                              r"directory"):
        _fit(_pipe(), batch_size=None, checkpoint=Checkpointer(tmp_path / "ck").every_steps(2),
             callbacks=[lambda epoch, ts, logs: epochs.append(epoch)])
    assert epochs == []


def _used_directory_in_memory_fails_before_training(tmp_path):
    """save_every into a directory of another run: refused before training; a resumed run continues."""
    first = _fit((X, Y), batch_size=4, callbacks=[Checkpointer(tmp_path / "ck").save_every(1)])
    epochs = []
    with pytest.raises(FileExistsError, match=r"^Checkpointer.save_every: .*ck already holds checkpoints \(latest: "
                                              r"step 2\); restore one and pass train_state=jnn.train.Start"):
        _fit((X, Y), batch_size=4, callbacks=[Checkpointer(tmp_path / "ck").save_every(1),
                                              lambda epoch, ts, logs: epochs.append(epoch)])
    assert epochs == []
    rest = _fit((X, Y), batch_size=4, epochs=3, train_state=jnn.train.Start(first.train_state, epoch=2),
                callbacks=[Checkpointer(tmp_path / "ck").save_every(1)])
    assert rest.history["epoch"] == [3] and Checkpointer(tmp_path / "ck").all_steps() == [1, 2, 3]


# ---- D. the Checkpointer itself (issue 40, categories 5 and 8)

def _uncreatable_path_fails_at_construction(tmp_path):
    with pytest.raises(PermissionError, match=r"^Checkpointer: cannot create anything in '/proc'"):
        Checkpointer("/proc/jnn-ckpt-probe")   # os.access says yes to root here; creating says no


def _missing_meta_item_is_refused(tmp_path):
    ts = _fit((X, Y), epochs=1).train_state
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, ts)
    meta = next((tmp_path / "ck" / "1" / "meta").glob("*.json"), None) or tmp_path / "ck" / "1" / "meta" / "metadata"
    content = json.loads(meta.read_text())
    del content["key_impls"]
    meta.write_text(json.dumps(content))
    with Checkpointer(tmp_path / "ck") as ckpt, pytest.raises(ValueError, match=r"checkpoint 1 in .*ck lacks metadata "
                                                                                   r"item 'key_impls'"):
        ckpt.restore(ts)


def _half_deleted_step_is_not_listed(tmp_path, monkeypatch):
    ts = _fit((X, Y), epochs=1).train_state
    real = shutil.rmtree

    def killed(path, *a, **kw):   # a kill during keep-k cleanup: one file gone, the rest left behind
        if "train_state" not in str(path):
            next(p for p in sorted(__import__("pathlib").Path(path).rglob("*")) if p.is_file()).unlink()
            raise KeyboardInterrupt("killed")
        return real(path, *a, **kw)

    with Checkpointer(tmp_path / "ck", keep=1) as ckpt:
        ckpt.save(1, ts)
        monkeypatch.setattr(shutil, "rmtree", killed)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(2, ts)
        monkeypatch.setattr(shutil, "rmtree", real)
    with Checkpointer(tmp_path / "ck", keep=1) as ckpt:
        assert ckpt.all_steps() == [2]
        ckpt.save(3, ts)
        assert ckpt.all_steps() == [3] and sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["3"]


CASES = {
    "A nan streamed raise": lambda tmp_path, **_: _nan_streamed(tmp_path, "raise"),
    "A nan streamed stop": lambda tmp_path, **_: _nan_streamed(tmp_path, "stop"),
    "A nan in-memory raise": lambda tmp_path, **_: _nan_in_memory(tmp_path, "raise"),
    "A nan in-memory stop": lambda tmp_path, **_: _nan_in_memory(tmp_path, "stop"),
    "A nan then resume clean": lambda tmp_path, capsys, **_: _nan_then_resume_clean(tmp_path, capsys),
    "B fresh start reported": lambda tmp_path, caplog, **_: _fresh_start_is_reported(tmp_path, caplog),
    "B final step saved, rerun trains nothing": lambda tmp_path, caplog, **_:
        _final_step_saved_and_rerun_trains_nothing(tmp_path, caplog),
    "C list of batches": lambda tmp_path, **_: _list_of_batches_is_a_stream(tmp_path),
    "C list of batches to fit_population": lambda tmp_path, **_: _list_of_batches_refused_where_nothing_streams(
        tmp_path),
    "C re-iterable stream resumed at an epoch end": lambda tmp_path, **_: _reiterable_stream_resumes_at_an_epoch_end(
        tmp_path),
    "C one-shot val_data": lambda tmp_path, **_: _one_shot_val_data_fails_before_training(tmp_path),
    "C resume other batch size": lambda tmp_path, **_: _resume_with_another_batch_size(tmp_path),
    "C streamed val monitor": lambda tmp_path, **_: _streamed_val_monitor_checked_before_training(tmp_path),
    "C used directory without resume": lambda tmp_path, **_: _used_directory_without_resume_fails_before_training(
        tmp_path),
    "C used directory in memory (save_every)": lambda tmp_path, **_: _used_directory_in_memory_fails_before_training(
        tmp_path),
    "D uncreatable path": lambda tmp_path, **_: _uncreatable_path_fails_at_construction(tmp_path),
    "D missing meta item": lambda tmp_path, **_: _missing_meta_item_is_refused(tmp_path),
    "D half-deleted step": lambda tmp_path, monkeypatch, **_: _half_deleted_step_is_not_listed(tmp_path, monkeypatch),
}


@pytest.mark.parametrize("case", list(CASES))
def test_case(case, tmp_path, capsys, caplog, monkeypatch):
    CASES[case](tmp_path=tmp_path, capsys=capsys, caplog=caplog, monkeypatch=monkeypatch)


def test_the_finiteness_check_of_checkpoints_compiles_once_before_training(tmp_path, monkeypatch):
    made, real = [], jnn.train.stream.StreamEpochs
    monkeypatch.setattr(jnn.train.stream, "StreamEpochs", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    _fit(Batches(), batch_size=None, epochs=3, checkpoint=Checkpointer(tmp_path / "ck", keep=None).every_steps(1))
    assert Checkpointer(tmp_path / "ck").all_steps() == list(range(1, 13)) and made[0]._finite._cache_size() == 1
