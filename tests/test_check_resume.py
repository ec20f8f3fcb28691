"""jnn.testing.check_resume: a streamed, accumulating recipe resumes bit for bit; a skipped iterator restore is
caught. The checkpoint fingerprint: quiet for the same program, a warning naming a planted change."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
import jnn.testing


class Batches:
    """Batches of (x, y) in a fresh shuffle each epoch, with a resumable position; ``restores=False``
    plants the bug: set_state is skipped, so a resumed run reads from the first batch again."""

    def __init__(self, x, y, batch_size, restores=True):
        self.x, self.y, self.batch_size, self.restores, self.i = x, y, batch_size, restores, 0

    def __iter__(self):
        self.i = 0
        return self

    def __next__(self):
        per_epoch = len(self.x) // self.batch_size
        epoch, b = divmod(self.i, per_epoch)
        size = self.batch_size
        order = np.random.default_rng((7, epoch)).permutation(len(self.x))[b * size:(b + 1) * size]
        self.i += 1
        return self.x[order], self.y[order]

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        if self.restores:
            self.i = state["i"]


def _recipe(restores=True):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    model = jnn.serial(jnn.dense(8), jnn.relu(), jnn.dropout(0.1), jnn.dense(1))
    # accumulating 2 micro-batches per update, saving every 3 steps: saves at steps 3, 9 fall mid-accumulation
    optimizer = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2)

    def recipe(checkpointer, interruption):
        data = jnn.train.Data(interruption.data(Batches(x, y, 4, restores)), steps_per_epoch=4, check=False)
        return jnn.train.fit(model, jnn.losses.binary_cross_entropy_with_logits, optimizer, data,
                             key=jax.random.key(3), epochs=3, metrics={}, verbose=0,
                             checkpoint=checkpointer.every_steps(3, resume=True))

    return recipe


def test_a_streamed_accumulating_recipe_resumes_bit_for_bit():
    points = jnn.testing.check_resume(_recipe(), points=2, seed=1)
    assert len(points) == 2 and all(1 <= p < 12 for p in points)


def test_a_skipped_iterator_restore_is_caught():
    with pytest.raises(AssertionError, match=r"check_resume: interrupted at batch 7 of 12 and resumed, the run "
                                             r"differs from the straight one in train_state\.params"):
        jnn.testing.check_resume(_recipe(restores=False), points=[7])


def _fingerprint(model, loss=jnn.losses.mse, versions=None):
    optimizer = optax.sgd(0.1)
    ts = jnn.train.init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((4, 3)))
    step = jnn.train.make_train_step(model, loss, optimizer)
    order = jnn.train.epoch_order(jax.random.key(1), 16, 4)
    found = jnn.doctor.fingerprint(step, ts, (jnp.zeros((4, 3)), jnp.zeros((4, 2))), data_order=order)
    return {**found, "versions": {**found["versions"], **(versions or {})}}


def test_the_fingerprint_warns_on_a_planted_program_change_and_is_quiet_otherwise():
    make = lambda act: jnn.serial(jnn.dense(4), act, jnn.dense(2))
    saved = _fingerprint(make(jnn.relu()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jnn.doctor.check_fingerprint(saved, _fingerprint(make(jnn.relu()))) == []
    with pytest.warns(UserWarning, match="the train step compiles to another program"):
        changes = jnn.doctor.check_fingerprint(saved, _fingerprint(make(jnn.tanh())))   # same params, new code
    assert len(changes) == 1
    changes = jnn.doctor.check_fingerprint(saved, _fingerprint(make(jnn.relu()), versions={"jax": "0.0"}), warn=False)
    assert changes == [f"jax {saved['versions']['jax']} -> 0.0"]
    other_order = {**saved, "data_order": "0" * 16}
    assert jnn.doctor.check_fingerprint(saved, other_order, warn=False) == [
        "the data order differs (another seed, dataset or shuffling)"]


def test_an_in_memory_recipe_is_interrupted_between_epochs():
    x, y = jnn.data.xor()
    model, optimizer = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1)), optax.adam(0.05)

    def recipe(checkpointer, interruption):
        start, history = None, {}
        if checkpointer.latest_step() is not None:
            template = jnn.train.init_train_state(model, optimizer, jax.random.key(0), x)   # structure only
            ts, meta = checkpointer.restore(template)
            start, history = jnn.train.Start(ts, epoch=meta["step"]), meta["logs"]

        def save(epoch, ts, logs):   # the whole history so far goes with each checkpoint
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
            checkpointer.save(epoch, ts, logs=history)

        result = jnn.train.fit(model, jnn.losses.mse, optimizer, (x, y), key=jax.random.key(0), epochs=4,
                               batch_size=2, metrics={}, verbose=0, train_state=start,
                               callbacks=[save, interruption.callback])
        return result._replace(history=history)

    assert jnn.testing.check_resume(recipe, points=[1, 3]) == [1, 3]
