"""jnn.data.grain reads whole batches: the keyed index shuffle, batch reads equal record reads,
and every epoch covers each kept record once whatever the read path."""
import os

import numpy as np
import pytest

import jnn
from jnn.train.permutation import IndexShuffle

grain = pytest.importorskip("grain")


@pytest.mark.parametrize("n", [1, 2, 5, 97, 4096, 70_001])
def test_index_shuffle_is_a_permutation_evaluated_anywhere(n):
    shuffle = IndexShuffle(n, seed=[4, 1])
    whole = shuffle(np.arange(n))
    assert np.array_equal(np.sort(whole), np.arange(n))
    rng = np.random.default_rng(0)
    positions = rng.integers(0, n, size=min(n, 300))
    np.testing.assert_array_equal(shuffle(positions), whole[positions])     # any positions, any order
    if n > 1000:   # a different seed (an epoch) gives a different order; no position is favoured
        other = IndexShuffle(n, seed=[4, 2])(np.arange(n))
        assert np.mean(other == whole) < 0.01
        assert abs(np.corrcoef(np.arange(n), whole)[0, 1]) < 0.05


def test_index_shuffle_rejects_bad_sizes_and_positions():
    with pytest.raises(ValueError, match=r"IndexShuffle: n must be an integer in \[1, 2\*\*31\), got 0"):
        IndexShuffle(0, seed=0)
    with pytest.raises(ValueError, match=r"IndexShuffle: positions must lie in \[0, 10\), got \[3, 10\]"):
        IndexShuffle(10, seed=0)(np.array([3, 10]))


class _Records:
    """Records one at a time only (no read_batch): the pipeline stacks them."""
    def __init__(self, *arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, i):
        return tuple(a[i] for a in self.arrays)


class _GetItems(_Records):
    """Grain's batch protocol: __getitems__ returns a list of records."""
    def __getitems__(self, indices):
        return [self[i] for i in indices]


def test_batch_reads_equal_record_reads_across_shuffle_blocks():
    # 1,000 records in batches of 4: the shuffle is evaluated in blocks of 64 batches (256
    # positions), so an epoch spans four blocks; 2 epochs, 2 shards
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, 3)).astype(np.float32), np.arange(1000)
    sources = [jnn.data.grain.ArraySource(x, y), _Records(x, y), _GetItems(x, y)]
    runs = [list(jnn.data.grain.pipeline(s, batch_size=4, seed=9, num_epochs=2).dataset) for s in sources]
    for run in runs[1:]:
        assert len(run) == len(runs[0]) == 500
        for a, b in zip(runs[0], run):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    ids = np.stack([b[1] for b in runs[0]])
    for epoch in (ids[:250], ids[250:]):
        assert np.array_equal(np.sort(epoch.ravel()), np.arange(1000))   # each record once per epoch
    assert not np.array_equal(ids[:250], ids[250:])                          # reshuffled
    np.testing.assert_array_equal(np.stack([b[0] for b in runs[0]]), x[ids])  # records match their ids
    halves = [np.stack([b[1] for b in jnn.data.grain.pipeline(
        sources[0], batch_size=4, seed=9, num_epochs=2, shard=grain.sharding.ShardOptions(i, 2)).dataset])
        for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1)[:, [0, 2, 1, 3]], ids)   # strided halves


def test_npy_source_reads_batches_as_records_and_names_a_truncated_file(tmp_path):
    path = tmp_path / "a.npy"
    data = np.arange(60, dtype=np.int16).reshape(10, 2, 3)
    np.save(path, data)
    source = jnn.data.grain.NpySource(path)
    indices = np.array([9, 0, 4, 4])
    np.testing.assert_array_equal(source.read_batch(indices), np.stack([source[i] for i in indices]))
    np.testing.assert_array_equal(source.read_batch(indices), data[indices])
    with pytest.raises(IndexError, match=r"NpySource: records \[0, 10\] out of range \[0, 10\)"):
        source.read_batch(np.array([0, 10]))
    os.truncate(path, os.path.getsize(path) - 6)
    with pytest.raises(OSError, match=r"NpySource: short read of record 9 from .*a.npy"):
        jnn.data.grain.NpySource(path).read_batch(np.array([1, 9]))


def test_mnist_and_shakespeare_batches_equal_their_records():
    mnist = jnn.data.grain.mnist_source("test", download=False)
    indices = np.array([5, 123, 9999])
    images, labels = mnist.read_batch(indices)
    assert images.dtype == np.float32 and images.shape == (3, 28, 28, 1) and labels.dtype == np.int32
    for j, i in enumerate(indices):
        np.testing.assert_array_equal(images[j], mnist[i][0])
        assert labels[j] == mnist[i][1]
    windows, _ = jnn.data.grain.shakespeare_source(16, stride=5, text="to be or not to be, that is the question")
    wx, wy = windows.read_batch(np.array([3, 0, 2]))
    for j, i in enumerate([3, 0, 2]):
        np.testing.assert_array_equal(wx[j], windows[i][0])
        np.testing.assert_array_equal(wy[j], windows[i][1])


def test_random_transform_is_seeded_by_seed_epoch_and_record():
    x = np.zeros((12, 5, 5, 1), np.float32)
    x[:, 2, 2] = 1
    source = jnn.data.grain.ArraySource(x, np.arange(12))
    make = lambda seed: list(jnn.data.grain.pipeline(source, batch_size=4, seed=seed, num_epochs=2,
                                                      random_transform=jnn.data.grain.random_translate(2)).dataset)
    first, again, other = make(0), make(0), make(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    shifted = np.stack([b[0] for b in first]).reshape(24, 5, 5)
    assert np.all(shifted.sum(axis=(1, 2)) <= 1)                    # a shift keeps at most the one pixel
    assert len({tuple(np.argwhere(s).ravel()) for s in shifted}) > 3   # and the shifts vary


def test_users_own_grain_datasets_and_data_loader_feed_fit():
    # A user's Grain MapDataset of records is a source like any other; a Grain DataLoader or
    # IterDataset of batches goes straight into fit (steps_per_epoch given), resumable by its state.
    import jax
    import optax
    rng = np.random.default_rng(2)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)                          # learnable: the sign of feature 0
    scale = lambda r: (r[0] * 2, r[1])
    mine = grain.MapDataset.source(jnn.data.grain.ArraySource(x, y)).map(scale)
    ours = jnn.data.grain.pipeline(mine, batch_size=8, seed=3, num_epochs=1)
    reference = jnn.data.grain.pipeline(jnn.data.grain.ArraySource(x * 2, y), batch_size=8, seed=3, num_epochs=1)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    loader = grain.DataLoader(
        data_source=jnn.data.grain.ArraySource(x, y),
        sampler=grain.samplers.IndexSampler(96, shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
                                            shuffle=True, num_epochs=None, seed=0),
        operations=[grain.transforms.Batch(8, drop_remainder=True)])
    iterable = grain.MapDataset.source(jnn.data.grain.ArraySource(x, y)).shuffle(seed=1).batch(8).repeat(None)
    kw = dict(key=jax.random.key(0), epochs=8, verbose=0)
    for data in (loader, iterable.to_iter_dataset()):
        result = jnn.train.fit(jnn.dense(2), jnn.losses.softmax_cross_entropy, optax.adam(0.05), jnn.train.Data(data, steps_per_epoch=12), **kw)
        assert int(result.train_state.step) == 96
        assert result.history["loss"][-1] < 0.5 * result.history["loss"][0]
        assert result.history["accuracy"][-1] > 0.9
    it = iter(loader)
    first = [next(it)[1].tolist() for _ in range(3)]
    state = it.get_state()
    rest = [next(it)[1].tolist() for _ in range(3)]
    again = iter(loader)
    again.set_state(state)
    assert [next(again)[1].tolist() for _ in range(3)] == rest and first != rest


def test_records_of_any_pytree_are_stacked_and_a_bad_seed_is_named():
    from collections import namedtuple
    Pair = namedtuple("Pair", "image label")
    records = [{"x": Pair(np.full(2, i, np.float32), np.int32(i))} for i in range(6)]
    batch = jnn.data.grain.pipeline(records, batch_size=3, seed=0, shuffle=False).dataset[1]
    assert isinstance(batch["x"], Pair)
    np.testing.assert_array_equal(batch["x"].label, [3, 4, 5])
    assert batch["x"].image.shape == (3, 2)
    for seed in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match=r"jnn.data.grain.pipeline: seed must be a non-negative integer"):
            jnn.data.grain.pipeline(records, batch_size=3, seed=seed)


def test_worker_groups_hold_at_most_16_mib_and_a_bad_worker_nice_is_named():
    from jnn.data.grain import _worker_group
    mnist = (np.zeros((128, 28, 28, 1), np.float32), np.zeros(128, np.int32))   # 401,920 bytes
    assert _worker_group(mnist) == 32                                            # 12.3 MiB a group
    assert _worker_group({"x": np.zeros((2**20,), np.uint8)}) == 16             # 1 MiB batches
    assert _worker_group(np.zeros((128, 224, 224, 3), np.float32)) == 1         # 77 MB: one at a time
    source = jnn.data.grain.ArraySource(np.zeros((8, 1)))
    for nice in (-1, 20, 1.5, True):
        with pytest.raises(ValueError, match=r"^jnn.data.grain.pipeline: worker_nice must be an integer in \[0, 19\]"):
            jnn.data.grain.pipeline(source, batch_size=4, seed=0, worker_count=1, worker_nice=nice)
