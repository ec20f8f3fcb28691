"""fit over streamed batches (jnn.train.stream) and Grain pipelines (jnn.data.grain)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.train.step import epoch_order

grain = pytest.importorskip("grain")

N, BS, EPOCHS = 512, 64, 2
LOSS, OPT = jnn.losses.softmax_cross_entropy, optax.adam(1e-3)


@pytest.fixture(scope="module")
def mnist():
    x, y = jnn.data.load_mnist("train", download=False)
    return x[:N], y[:N]


def _model():
    return jnn.serial(jnn.flatten(), jnn.dense(16), jnn.relu(), jnn.dropout(0.2), jnn.dense(10))


def _fit_orders(key, n, bs, epochs):
    """The example order in-memory fit draws: per epoch, the state's key splits into (key, perm)
    and epoch_order(perm) is the order (steps fold their count into the key; they do not split it)."""
    ts = jnn.train.init_train_state(_model(), OPT, jax.random.split(key)[0],
                                    jax.ShapeDtypeStruct((bs, 28, 28, 1), jnp.float32))
    k, orders = ts.key, []
    for _ in range(epochs):
        k, perm = jax.random.split(k)
        orders.append(np.asarray(epoch_order(perm, n, bs)).ravel())
    return np.concatenate(orders)


def test_fit_over_grain_equals_in_memory_with_matched_order(mnist):
    # Orders matched: the Grain source holds the examples in exactly the order in-memory fit
    # draws them (both epochs back to back) and the pipeline does not shuffle.
    x, y = mnist
    key = jax.random.key(3)
    kw = dict(key=key, epochs=EPOCHS, verbose=0)
    ref = jnn.train.fit(_model(), LOSS, OPT, jnn.train.Data((x, y), check=False), batch_size=BS, **kw)
    order = _fit_orders(key, N, BS, EPOCHS)
    pipe = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x[order], y[order]), batch_size=BS, seed=0,
                                   shuffle=False)
    got = jnn.train.fit(_model(), LOSS, OPT, jnn.train.Data(pipe, steps_per_epoch=N // BS, check=False), **kw)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(ref.train_state.params), leaves(got.train_state.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(ref.history[name], got.history[name], rtol=1e-5)


def test_grain_pipeline_learns_mnist_with_cpu_augmentation(mnist):
    x, y = mnist
    pipe = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x, y), batch_size=32, seed=1,
                                   random_transform=jnn.data.grain.random_translate(1))
    result = jnn.train.fit(jnn.serial(jnn.flatten(), jnn.dense(32), jnn.relu(), jnn.dense(10)), LOSS,
                           optax.adam(3e-3), jnn.train.Data(pipe, check=False), key=jax.random.key(0), epochs=3,
                           val_data=mnist, verbose=0)
    assert result.history["val_accuracy"][-1] > 0.8
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_pipeline_epochs_cover_each_record_once_and_reshuffle():
    source = jnn.data.grain.ArraySource(np.arange(50))
    pipe = jnn.data.grain.pipeline(source, batch_size=8, seed=7, num_epochs=2)
    batches = [b for b in pipe]
    assert pipe.steps_per_epoch == 6 and len(batches) == 12 and all(b.shape == (8,) for b in batches)
    epochs = [np.concatenate(batches[:6]), np.concatenate(batches[6:])]
    for e in epochs:
        assert len(set(e.tolist())) == 48   # 48 distinct records, the 2 left over dropped
    assert set(epochs[0].tolist()) != set(epochs[1].tolist()) or not np.array_equal(*epochs)
    # two shards: local batch k of shard 0 and 1 together are global batch k of the unsharded run
    halves = [list(jnn.data.grain.pipeline(source, batch_size=8, seed=7, num_epochs=2,
                                           shard=grain.sharding.ShardOptions(i, 2)).dataset) for i in (0, 1)]
    for k in range(12):
        assert halves[0][k].shape == (4,)
        assert not set(halves[0][k].tolist()) & set(halves[1][k].tolist())
        assert sorted(halves[0][k].tolist() + halves[1][k].tolist()) == sorted(batches[k].tolist())


def test_mnist_and_shakespeare_sources():
    src = jnn.data.grain.mnist_source("test", download=False)
    x, y = jnn.data.load_mnist("test", download=False)
    image, label = src[123]
    assert len(src) == 10000 and image.dtype == np.float32 and image.shape == (28, 28, 1)
    np.testing.assert_array_equal(image, x[123])
    assert int(label) == int(y[123])
    text = jnn.data.load_tiny_shakespeare(download=False)
    windows, vocab = jnn.data.grain.shakespeare_source(32, stride=16)
    wx, wy = jnn.data.lm_windows(vocab.encode(text), 32, stride=16)
    assert len(windows) == len(wx)
    np.testing.assert_array_equal(windows[100][0], wx[100])
    np.testing.assert_array_equal(windows[100][1], wy[100])


def test_plain_iterables_per_epoch_reiteration_and_generator():
    x, y = jnn.data.xor()
    batches = [(np.asarray(x[:2]), np.asarray(y[:2])), (np.asarray(x[2:]), np.asarray(y[2:]))]
    model = jnn.serial(jnn.dense(4), jnn.tanh(), jnn.dense(1))
    kw = dict(key=jax.random.key(0), epochs=3, metrics={}, verbose=0)
    mse = jnn.losses.mse
    listed = jnn.train.fit(model, mse, optax.sgd(0.1), _Batches(batches), **kw)   # len 2, re-read each epoch
    streamed = jnn.train.fit(model, mse, optax.sgd(0.1), jnn.train.Data((b for b in batches * 3), steps_per_epoch=2), **kw)
    assert int(listed.train_state.step) == 6
    np.testing.assert_array_equal(listed.train_state.params["dense_0"]["w"],
                                  streamed.train_state.params["dense_0"]["w"])


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _xy(n, features=3):
    return np.ones((n, features), np.float32), np.zeros((n, 1), np.float32)


def test_error_shapes_change_mid_stream():
    stream = iter([_xy(4), _xy(4), _xy(4, features=5)])
    with pytest.raises(ValueError, match=r"shapes changed mid-stream: batch 2 of epoch 1 has batch\[0\] of "
                                         r"shape \(4, 5\).*first batch had \(4, 3\)"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.train.Data(stream, steps_per_epoch=3),
                      key=jax.random.key(0), epochs=1, metrics={}, verbose=0)


def test_error_grain_records_of_different_shapes():
    source = [np.zeros(3, np.float32)] * 5 + [np.zeros(4, np.float32)] * 3
    pipe = jnn.data.grain.pipeline(source, batch_size=2, seed=0, shuffle=False,
                                   transform=lambda r: (r, np.zeros(1, np.float32)))
    with pytest.raises(ValueError, match=r"fit: reading batch 2 of epoch 1 from train_data failed"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), pipe, key=jax.random.key(0), epochs=1,
                      metrics={}, verbose=0)


def test_error_fewer_batches_than_steps_per_epoch():
    stream = iter([_xy(4)] * 5)
    with pytest.raises(ValueError, match=r"train_data ran out after 2 batches of epoch 2, but steps_per_epoch "
                                         r"is 3"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.train.Data(stream, steps_per_epoch=3),
                      key=jax.random.key(0), epochs=2, metrics={}, verbose=0)


def test_error_process_counts_disagree_with_sharding():
    source = jnn.data.grain.ArraySource(*_xy(16))
    with pytest.raises(ValueError, match=r"global batch_size 6 does not split over 4 shards"):
        jnn.data.grain.pipeline(source, batch_size=6, seed=0, shard=grain.sharding.ShardOptions(1, 4))
    pipe = jnn.data.grain.pipeline(source, batch_size=8, seed=0, shard=grain.sharding.ShardOptions(1, 4))
    with pytest.raises(ValueError, match=r"sharded over 4 processes but jax.process_count\(\) is 1"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), pipe, key=jax.random.key(0), epochs=1,
                      metrics={}, verbose=0)


def test_error_stream_arguments():
    with pytest.raises(TypeError, match=r"iterable without a len\(\); pass steps_per_epoch"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), iter([_xy(4)]), key=jax.random.key(0),
                      verbose=0)
    with pytest.raises(ValueError, match=r"steps_per_epoch and checkpoint are for streamed train_data"):
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.train.Data(_xy(4), steps_per_epoch=2),
                      key=jax.random.key(0), verbose=0)



def test_streamed_validation_is_exact_with_a_ragged_last_batch():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(70, 6)).astype(np.float32), rng.integers(0, 3, 70).astype(np.int32)
    val = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x, y), batch_size=32, seed=0, shuffle=False,
                                  num_epochs=1, drop_remainder=False)          # batches of 32, 32 and 6
    assert [b[1].shape[0] for b in val] == [32, 32, 6]
    result = jnn.train.fit(jnn.dense(3), LOSS, optax.sgd(0.1), jnn.train.Data(iter([(x[:32], y[:32])] * 2), steps_per_epoch=1),
                           key=jax.random.key(0), epochs=2, val_data=val, verbose=0)
    params = result.train_state.params
    logits = x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)   # NumPy reference
    top = logits.max(1, keepdims=True)
    log_p = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    np.testing.assert_allclose(result.history["val_loss"][-1], -log_p[np.arange(70), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(result.history["val_accuracy"][-1], (logits.argmax(1) == y).mean(), rtol=1e-6)
    assert len(result.history["val_loss"]) == 2      # read afresh in the second epoch


class _Closing:
    """Endless batches whose iterator records ``close()`` (as a Grain iterator stops its workers)."""
    def __init__(self, batch, fail_at=None):
        self.batch, self.fail_at, self.closed, self.pulled = batch, fail_at, 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pulled += 1
        if self.pulled == self.fail_at:
            raise OSError("the disk went away")
        return self.batch

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("fail_at", [None, 4])
def test_fit_closes_the_stream_iterator_when_it_returns_or_raises(fail_at):
    data = _Closing(_xy(4), fail_at)
    run = lambda: jnn.train.fit(jnn.dense(1), jnn.losses.mse, optax.sgd(0.1), jnn.train.Data(data, steps_per_epoch=2),
                                key=jax.random.key(0), epochs=2, metrics={}, verbose=0)
    if fail_at is None:
        run()
    else:
        with pytest.raises(OSError, match="reading batch 1 of epoch 2 from train_data failed.*the disk went away"):
            run()
    assert data.closed == 1


def test_chunked_scans_equal_single_steps_and_compile_once(mnist):
    # 10 steps an epoch in chunks of 4: scans over steps 0-3 and 4-7, then steps 8 and 9 one by one
    x, y = mnist
    x, y = np.asarray(x[:320]), np.asarray(y[:320])
    model, opt = _model(), optax.adam(1e-3)
    ts0 = jnn.train.init_train_state(model, opt, jax.random.key(0), x[:32])
    step = jnn.train.make_train_step(model, LOSS, opt, metrics={"accuracy": jnn.metrics.accuracy})
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)]
    runs = {}
    for chunk in (1, 4):
        runner = jnn.train.stream.StreamEpochs(step, jnn.train.stream.Feed(batches, None),
                                               ts0, chunk=chunk)
        ts, logs = ts0, []
        for _ in range(2):
            ts, epoch_logs = runner(ts)
            logs.append(epoch_logs)
        runs[chunk] = ts, logs, runner
    (ts1, logs1, single), (ts4, logs4, chunked) = runs[1], runs[4]
    assert int(ts4.step) == int(ts1.step) == 20
    for a, b in zip(jax.tree_util.tree_leaves(ts1.params), jax.tree_util.tree_leaves(ts4.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(logs1, logs4):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        assert float(a["accuracy"]) == float(b["accuracy"])
    assert chunked.scan_chunk._cache_size() == 1 and chunked.step._cache_size() == 1   # no recompiles
    assert single.scan_chunk._cache_size() == 0


def test_error_chunk_is_a_positive_integer():
    with pytest.raises(ValueError, match=r"StreamEpochs: chunk must be a positive integer, got 0"):
        jnn.train.stream.StreamEpochs(None, None, None, chunk=0)


def test_chunks_of_consecutive_slices_are_views_and_anything_else_is_stacked():
    """Feed stacks a chunk's host batches; batches that are consecutive slices of one array (how
    Grain worker groups arrive) become that slice of it, without a copy. Every case equals
    np.stack."""
    stack = jnn.train.stream._stack_host
    group = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3).copy()
    other = group[:2].copy()
    cases = {   # name: (arrays, shares group's memory)
        "consecutive": ([group[1], group[2], group[3]], True),
        "the last ones": ([group[3], group[4]], True),
        "a gap": ([group[1], group[3]], False),
        "repeated": ([group[1], group[1]], False),
        "out of order": ([group[2], group[1]], False),
        "reversed columns": ([group[0][:, ::-1], group[1][:, ::-1]], False),
        "another array": ([group[4], other[0]], False),
        "another dtype": ([group.view(np.int32)[0], group.view(np.int32)[1]], False),
        "fresh arrays": ([np.ones((2, 3)), np.zeros((2, 3))], False),
    }
    for name, (arrays, shared) in cases.items():
        got = stack(arrays)
        np.testing.assert_array_equal(got, np.stack(arrays), err_msg=name)
        assert got.dtype == arrays[0].dtype and got.shape == (len(arrays), *arrays[0].shape), name
        assert np.shares_memory(got, group) == shared, name
