"""Options of the input pipeline, the deep models and the file writers, each exercised by a test
that fails when the option is ignored (found by tests/option_coverage.py)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn


class _CountingSource:
    """Records ``i -> float32(i)`` that count how many were read."""

    def __init__(self, n):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return np.float32(i)


def _reads_after_first_batch(pipeline, source, at_least=0):
    """Records read once the first batch was taken and the reader threads stopped (or read
    ``at_least`` records, waiting at most 5 s)."""
    iterator = iter(pipeline)
    next(iterator)
    seen, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline and (source.reads != seen or source.reads < at_least):
        seen = source.reads
        time.sleep(0.2)
    return source.reads


def _pipeline(source, **options):
    grain = pytest.importorskip("grain")
    return jnn.data.grain.pipeline(source, batch_size=2, seed=0, num_epochs=1,
                                   shard=grain.sharding.NoSharding(), **options)


def test_pipeline_read_threads_zero_reads_only_the_batch_asked_for():
    source = _CountingSource(400)
    assert _reads_after_first_batch(_pipeline(source, read_threads=0), source) == 2   # default: 2 threads read ahead


def test_pipeline_prefetch_bounds_how_far_the_reader_runs_ahead():
    few, many = _CountingSource(400), _CountingSource(400)
    assert _reads_after_first_batch(_pipeline(few, read_threads=1, prefetch=1), few) <= 2 * 3
    assert _reads_after_first_batch(_pipeline(many, read_threads=1, prefetch=8), many, at_least=2 * 8) >= 2 * 8


def test_pipeline_class_iterates_with_its_read_options():
    grain = pytest.importorskip("grain")
    on_demand, default = _CountingSource(400), _CountingSource(400)
    built = _pipeline(on_demand)
    lazy = jnn.data.grain.Pipeline(built.dataset, built.steps_per_epoch, 2,
                                   read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    assert _reads_after_first_batch(lazy, on_demand) == 2
    eager = jnn.data.grain.Pipeline(_pipeline(default).dataset, built.steps_per_epoch, 2)   # Grain's defaults
    assert _reads_after_first_batch(eager, default, at_least=2 * 10) >= 2 * 10


def test_pipeline_class_shard_count_is_checked_by_fit():
    pytest.importorskip("grain")
    x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
    batches = jnn.data.grain.Pipeline([(x[:4], y[:4]), (x[4:], y[4:])], 2, 8, shard_count=2)
    assert "shard_count=2" in repr(batches)
    with pytest.raises(ValueError, match=r"^fit: train_data is sharded over 2 processes but jax.process_count\(\) "
                                         r"is 1 and fit runs without a mesh, so it needs 1 shard"):
        jnn.train.fit(jnn.dense(2), jnn.losses.softmax_cross_entropy, optax.sgd(0.1), batches, epochs=1,
                      key=jax.random.key(0), verbose=0)


def _checkpoint_policies(model, tokens):
    params, state = model.init(jax.random.key(0), tokens)
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, state, tokens)[0])(params)
    return [e.params["policy"] for e in jaxpr.jaxpr.eqns if e.primitive.name in ("remat2", "checkpoint")]


def test_decoder_lm_remat_wraps_every_block_in_the_policy_named():
    tokens = jnp.zeros((2, 5), jnp.int32)
    sizes = dict(vocab_size=11, num_layers=3, num_heads=2, features=8, mlp_dim=16, max_len=8)
    assert _checkpoint_policies(jnn.decoder_lm(**sizes), tokens) == []
    assert _checkpoint_policies(jnn.decoder_lm(**sizes, remat="nothing"), tokens) == [
        jax.checkpoint_policies.nothing_saveable] * 3
    assert _checkpoint_policies(jnn.decoder_lm(**sizes, remat="dots"), tokens) == [
        jax.checkpoint_policies.dots_saveable] * 3


def test_encoder_decoder_num_decoder_layers_sets_the_decoder_depth_alone():
    target = jax.ShapeDtypeStruct((2, 4), jnp.int32)
    sizes = dict(vocab_size=11, num_layers=1, num_heads=2, features=8, mlp_dim=16, max_len=8, num_decoder_layers=3)
    shapes = lambda model: jax.eval_shape(model.init, jax.random.key(0), target)[0]   # no compile
    stacked = shapes(jnn.encoder_decoder(**sizes))
    assert stacked["encoder"]["blocks"]["mlp"]["dense_0"]["w"].shape[0] == 1
    assert stacked["decoder"]["blocks"]["mlp"]["dense_0"]["w"].shape[0] == 3
    params = shapes(jnn.encoder_decoder(**sizes, scan_layers=False))
    blocks = {side: sorted(k for k in params[side] if k.startswith("block")) for side in ("encoder", "decoder")}
    assert blocks == {"encoder": ["block_0"], "decoder": ["block_0", "block_1", "block_2"]}


def test_export_onnx_writes_the_opset_asked_for(tmp_path):
    pytest.importorskip("jax2onnx")
    onnx = pytest.importorskip("onnx")
    model = jnn.serial(jnn.dense(4), jnn.relu(), jnn.dense(2))
    x = jax.random.normal(jax.random.key(1), (3, 5))
    params, state = model.init(jax.random.key(0), x)
    jnn.export.export_onnx(tmp_path / "m.onnx", model, params, state, x, opset=18)   # the default is 21
    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}[""] == 18


def test_save_params_metadata_lands_in_the_safetensors_header(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    jnn.io.save_params(path, {"dense_0": {"w": jnp.ones((3, 2))}}, metadata={"run": "a7", "epoch": "3"})
    with safetensors.safe_open(str(path), "np") as f:   # safetensors' own reader
        metadata = f.metadata()   # plus the tensors' digests, under jnn's own key
        assert metadata.pop(jnn.io.DIGEST_KEY).startswith('{"dense_0/w":["F32",[3,2],')
        assert metadata == {"format": "jnn", "run": "a7", "epoch": "3"}
