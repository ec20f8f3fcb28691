"""One test per public option that no other test passed by name (found by
tests/option_coverage.py); each would fail if the option were ignored."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn.data import augment
from jnn.layers.attention import multi_head_attention


def test_leaky_relu_negative_slope_and_elu_alpha():
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(jnn.leaky_relu(negative_slope=0.3).apply({}, {}, x)[0], [-0.6, 3.0], rtol=1e-6)
    np.testing.assert_allclose(jnn.elu(alpha=2.0).apply({}, {}, x)[0], [2.0 * (math.exp(-2.0) - 1.0), 3.0],
                               rtol=1e-6)


@pytest.mark.parametrize("make", [jnn.rnn_cell, jnn.lstm_cell, jnn.gru_cell])
def test_cells_use_their_recurrent_init(make):
    layer = jnn.recurrent(make(4, recurrent_init="zeros"))
    params, _ = layer.init(jax.random.key(0), jnp.zeros((1, 3, 2)))
    recurrent = [v for k, v in jnn.tree.leaves_with_paths(params) if v.ndim == 2 and v.shape[0] == 4]
    assert recurrent and all(float(jnp.abs(w).max()) == 0.0 for w in recurrent)
    inputs = [v for k, v in jnn.tree.leaves_with_paths(params) if v.ndim == 2 and v.shape[0] == 2]
    assert all(float(jnp.abs(w).max()) > 0.0 for w in inputs)       # the input weights are not zero


def test_rnn_cell_activation_matches_numpy():
    layer = jnn.recurrent(jnn.rnn_cell(3, activation=jax.nn.relu))
    x = np.random.default_rng(0).normal(size=(1, 2, 2)).astype(np.float32)
    params, state = layer.init(jax.random.key(0), x)
    leaves = dict(jnn.tree.leaves_with_paths(params))
    w_i = next(np.asarray(v) for k, v in leaves.items() if v.shape == (2, 3))
    w_h = next(np.asarray(v) for k, v in leaves.items() if v.shape == (3, 3))
    b = next(np.asarray(v) for k, v in leaves.items() if v.shape == (3,))
    h = np.zeros(3, np.float32)
    outputs = []
    for t in range(2):
        h = np.maximum(x[0, t] @ w_i + b + h @ w_h, 0.0)
        outputs.append(h)
    np.testing.assert_allclose(layer.apply(params, state, jnp.asarray(x))[0][0], np.stack(outputs), rtol=1e-5, atol=1e-6)


def test_bidirectional_backward_cell():
    layer = jnn.bidirectional(jnn.lstm_cell(4), backward_cell=jnn.gru_cell(2))
    params, state = layer.init(jax.random.key(0), jnp.zeros((1, 5, 3)))
    y, _ = layer.apply(params, state, jnp.ones((1, 5, 3)))
    assert y.shape == (1, 5, 6)      # 4 forward (LSTM) + 2 backward (GRU) features
    assert sum(v.size for _, v in jnn.tree.leaves_with_paths(params["backward"])) == \
        sum(v.size for _, v in jnn.tree.leaves_with_paths(jnn.recurrent(jnn.gru_cell(2)).init(
            jax.random.key(0), jnp.zeros((1, 5, 3)))[0]))


def test_affine_rotation_and_shear_degrees():
    image = np.zeros((9, 9, 1), np.float32)
    image[1, 2, 0], image[6, 3, 0] = 1.0, 0.5
    np.testing.assert_allclose(augment.affine(jnp.asarray(image), rotation_degrees=90.0), np.rot90(image),
                               atol=1e-5)
    line = np.zeros((9, 9, 1), np.float32)
    line[:, 4, 0] = 1.0                                     # the vertical line x = 0 (centred)
    sheared = np.asarray(augment.affine(jnp.asarray(line), shear_degrees=45.0))
    expected = np.zeros_like(line)
    for row in range(9):                                    # output x + tan(45) * y = 0: x = -y
        expected[row, 4 - (row - 4), 0] = 1.0
    np.testing.assert_allclose(sheared, expected, atol=1e-5)


def test_load_mnist_split():
    x, y = jnn.data.load_mnist(split="test")
    assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)


def test_initializers_get_where_and_normal_stddev():
    with pytest.raises(ValueError, match=r"^my_layer: unknown initializer 'nope'"):
        jnn.initializers.get("nope", where="my_layer")
    w = jnn.initializers.normal(stddev=3.0)(jax.random.key(0), (20000,))
    assert abs(float(w.std()) - 3.0) < 0.1


def test_atomic_write_overwrite(tmp_path):
    path = tmp_path / "f.txt"
    jnn.io.atomic_write(path, "one")
    with pytest.raises(FileExistsError, match="f.txt"):
        jnn.io.atomic_write(path, "two")
    jnn.io.atomic_write(path, "three", overwrite=True)
    assert path.read_text() == "three"


def test_attention_rope_base_and_implementation():
    x = jax.random.normal(jax.random.key(0), (1, 6, 8))
    default = multi_head_attention(2, rope=True)
    params, state = default.init(jax.random.key(1), x)
    other = multi_head_attention(2, rope=True, rope_base=10.0)
    assert not np.allclose(default.apply(params, state, x)[0], other.apply(params, state, x)[0], atol=1e-4)
    xla = multi_head_attention(2, implementation="xla")
    np.testing.assert_allclose(xla.apply(params, state, x)[0], multi_head_attention(2).apply(params, state, x)[0],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="(?i)cudnn|gpu|cuda"):   # only on a GPU; a CPU says so
        multi_head_attention(2, implementation="cudnn").apply(params, state, x)


def test_policy_dtypes_through_with_policy():
    policy = jnn.precision.Policy(param_dtype=jnp.bfloat16, compute_dtype=jnp.float16, output_dtype=jnp.float32)
    model = jnn.precision.with_policy(jnn.dense(3, use_bias=False), policy=policy)
    params, state = model.init(jax.random.key(0), jnp.zeros((2, 4)))
    x = jax.random.normal(jax.random.key(1), (2, 4))
    y, _ = model.apply(params, state, x)
    assert params["w"].dtype == jnp.bfloat16 and y.dtype == jnp.float32
    expected = (x.astype(jnp.float16) @ params["w"].astype(jnp.float16)).astype(jnp.float32)
    np.testing.assert_array_equal(y, expected)


def test_resnet_blocks_per_stage():
    one = jnn.resnet(10, stage_features=(4, 8), blocks_per_stage=1)
    two = jnn.resnet(10, stage_features=(4, 8), blocks_per_stage=2)
    count = lambda m: len(jnn.tree.leaves_with_paths(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))[0]))
    assert count(two) > count(one)


@pytest.mark.parametrize("population", [False, True], ids=["fit", "fit_population"])
def test_eval_batch_size_reaches_the_evaluator(monkeypatch, population):
    import jnn.train.loop as loop
    import jnn.train.population as pop
    seen = []
    module = pop if population else loop
    original = module.make_eval_fn

    def spy(*args, **kwargs):
        seen.append(kwargs.get("batch_size"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "make_eval_fn", spy)
    x, y = jnn.data.xor()
    if population:
        jnn.train.fit_population(lambda hp: jnn.dense(1), jnn.losses.mse, lambda hp: __import__("optax").sgd(0.1),
                                 (x, y), key=jax.random.key(0), hparams={"lr": jnp.zeros(2)}, epochs=1,
                                 batch_size=4, val_data=(x, y), metrics={}, eval_batch_size=3)
    else:
        jnn.train.fit(jnn.dense(1), jnn.losses.mse, __import__("optax").sgd(0.1), (x, y), key=jax.random.key(0),
                      epochs=1, batch_size=4, val_data=(x, y), metrics={}, eval_batch_size=3,
                      verbose=0)
    assert 3 in seen, seen


def test_children_built_from_items_keep_their_order_and_keys():
    a, b = jnn.dense(2), jnn.relu()
    children = jnn.Children(items=[("b", b), ("a", a)])
    assert list(children) == ["b", "a"] and children["a"] is a and len(children) == 2
    assert len(jnn.Children()) == 0


def _dense_params():
    return {"dense_0": {"w": jnp.zeros((4, 6)), "b": jnp.zeros(6)}}


MESH = jax.sharding.AbstractMesh((1, 2), ("data", "model"))


def test_a_rule_that_is_not_required_may_match_nothing():
    unmatched = jnn.parallel.Rule("encoder/*", (None, "model"), required=False)
    specs = jnn.parallel.param_specs(_dense_params(), MESH, [unmatched])
    assert specs["dense_0"]["w"] == jax.sharding.PartitionSpec()
    with pytest.raises(ValueError, match=r"^jnn.parallel: sharding rule patterns \['encoder/\*'\] match no parameter"):
        jnn.parallel.param_specs(_dense_params(), MESH, [unmatched._replace(required=True)])


def test_logical_and_tensor_parallel_map_names_through_the_axis_rules_given():
    table = [("dense_0/w", ("embed", "mlp"))]
    assert jnn.parallel.logical(table)[0].spec == (None, "model")                       # the default AXIS_RULES
    assert jnn.parallel.logical(table, axis_rules=[("embed", "data"), ("mlp", None)])[0].spec == ("data", None)
    unmatched = [("encoder/*", ("embed", "mlp"))]
    specs = jnn.parallel.param_specs(_dense_params(), MESH, jnn.parallel.logical(unmatched, required=False))
    assert specs["dense_0"]["w"] == jax.sharding.PartitionSpec()
    with pytest.raises(ValueError, match=r"^jnn.parallel: sharding rule patterns \[\('encoder/\*',\)\] match no"):
        jnn.parallel.param_specs(_dense_params(), MESH, jnn.parallel.logical(unmatched))
    mlp = {"mlp": {"dense_0": {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}}}
    swapped = jnn.parallel.tensor_parallel(axis_rules=[("mlp", "data"), ("embed", None), ("heads", "data")])
    assert jnn.parallel.param_specs(mlp, MESH, swapped)["mlp"]["dense_0"]["w"] == jax.sharding.PartitionSpec(
        None, "data")
    assert jnn.parallel.param_specs(mlp, MESH, jnn.parallel.tensor_parallel())["mlp"]["dense_0"]["w"] == \
        jax.sharding.PartitionSpec(None, "model")


def test_initialize_selects_the_cpu_collectives_asked(monkeypatch):
    """Only the configuration step runs here (jax.distributed.initialize is replaced); the real
    two-process run with gloo is tests/test_parallel.py's."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    before = jax.config.jax_cpu_collectives_implementation
    try:
        jnn.parallel.initialize("127.0.0.1:1", num_processes=2, process_id=1, cpu_collectives="mpi")
        assert jax.config.jax_cpu_collectives_implementation == "mpi"
        jnn.parallel.initialize("127.0.0.1:1", num_processes=2, process_id=0)
        assert jax.config.jax_cpu_collectives_implementation == "gloo"
    finally:
        jax.config.update("jax_cpu_collectives_implementation", before)
    assert calls == [dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=p) for p in (1, 0)]
