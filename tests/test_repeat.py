"""jnn.layers.repeat and jnn.layers.remat: the scanned stack equals the explicit serial of copies
(values, gradients, per-copy state and keys), copies can be frozen one at a time, and remat
changes memory, not results."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn.layers.remat import remat
from jnn.layers.repeat import copy_mask, freeze_copies, repeat, stack_params, unstack_params
from jnn.train.freeze import freeze

N = 5
X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 8)), jnp.float32)


def _block():
    return jnn.encoder_block(2, 16)


def _pair(block=None, n=N, x=X):
    block = block or _block()
    deep = repeat(block, n)
    params, state = deep.init(jax.random.key(0), x)
    return block, deep, params, state


@jax.enable_x64(True)
def test_repeat_equals_unrolled_serial_values_and_gradients():
    block, deep, params, state = _pair(x=X.astype(jnp.float64))
    X64 = X.astype(jnp.float64)
    shallow = jnn.serial(*[block] * N)
    flat = unstack_params(params, block.kind)
    assert sorted(flat) == [f"encoder_block_{i}" for i in range(N)]
    y, _ = deep.apply(params, state, X64)
    y2, _ = shallow.apply(flat, {}, X64)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, y2, atol=1e-6, rtol=0)
    assert float(jnp.abs(y - X64).max()) > 0.1  # the blocks do something

    loss = lambda model, p: jnp.sum(jnp.sin(model.apply(p, {}, X64)[0]))
    g = jax.grad(lambda p: loss(deep, p))(params)
    g2 = stack_params(jax.grad(lambda p: loss(shallow, p))(flat))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # Copies have separate weights (vmapped init over split keys).
    w = params["attention"]["query"]["w"]
    assert w.shape == (N, 8, 8) and float(jnp.abs(w[0] - w[1]).max()) > 1e-3


def test_repeat_unroll_option_gives_the_same_function():
    block, deep, params, state = _pair()
    unrolled = repeat(block, N, unroll=True)
    np.testing.assert_allclose(deep.apply(params, state, X)[0], unrolled.apply(params, state, X)[0], atol=1e-5)


def test_repeat_passes_keywords_to_every_copy():
    block, deep, params, state = _pair()
    lengths = jnp.array([4, 2, 1])
    y, _ = deep.apply(params, state, X, lengths=lengths)
    h = X
    for i in range(N):
        h, _ = block.apply(jax.tree.map(lambda a: a[i], params), {}, h, lengths=lengths)
    np.testing.assert_allclose(y, h, atol=1e-5)  # float32 (the 1e-6 check is in float64 above)
    assert float(jnp.abs(y - deep.apply(params, state, X)[0]).max()) > 1e-3  # the mask matters


def test_repeat_per_copy_state_and_keys_match_serial():
    block = jnn.residual(jnn.dense(8), jnn.batch_norm(), jnn.dropout(0.3))
    x = X.reshape(12, 8)
    deep = repeat(block, 3)
    params, state = deep.init(jax.random.key(1), x)
    assert state["serial_0"]["batch_norm_0"]["mean"].shape == (3, 8)
    shallow = jnn.serial(*[block] * 3)
    y, new_state = deep.apply(params, state, x, key=jax.random.key(2), train=True)
    y2, new_state2 = shallow.apply(unstack_params(params, "residual"), unstack_params(state, "residual"), x,
                                   key=jax.random.key(2), train=True)
    np.testing.assert_allclose(y, y2, atol=1e-5)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(stack_params(new_state2))):
        np.testing.assert_allclose(a, b, atol=1e-5)
    means = new_state["serial_0"]["batch_norm_0"]["mean"]
    assert float(jnp.abs(means[0] - means[1]).max()) > 1e-4  # each copy keeps its own statistics
    assert float((y == x).mean()) < 0.5  # dropout masks differ per copy (else many would pass through)


def _train(model, params, opt, x, steps=3):
    loss = lambda p: jnp.mean((model.apply(p, {}, x)[0] - 1.0) ** 2)

    @jax.jit   # one compile; eagerly, each step would retrace and recompile the scan
    def step(params, opt_state):
        updates, opt_state = opt.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


@jax.enable_x64(True)
def test_freeze_one_copy_and_decay_all_copies_match_the_unrolled_model():
    x = X.astype(jnp.float64)
    block, deep, params, _ = _pair(x=x)
    shallow = jnn.serial(*[block] * N)
    # Weight decay by path pattern ("w") selects the stacked weights of every copy.
    decay = jnn.tree.mask(params, ["w"])
    assert decay["attention"]["query"]["w"] is True and decay["norm_0"]["scale"] is False
    adamw = lambda mask: optax.adamw(0.05, weight_decay=0.5, mask=mask)
    stacked = _train(deep, params, freeze_copies(adamw(decay), params, "*", copies=[3], n=N), x)
    flat = unstack_params(params, block.kind)
    unrolled = _train(shallow, flat, freeze(adamw(jnn.tree.mask(flat, ["w"])), ["encoder_block_3/*"]), x)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(stack_params(unrolled))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a[3], b[3])  # copy 3 never moved
    moved = [float(jnp.abs(a[2] - b[2]).max()) for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(params))]
    assert max(moved) > 1e-2  # copy 2 did


def test_copy_mask_marks_only_the_chosen_copies_and_rejects_bad_input():
    _, _, params, _ = _pair()
    mask = copy_mask(params, "attention/*", copies=[0, 3], n=N)
    assert mask["norm_0"]["scale"] is False
    assert mask["attention"]["key"]["w"].reshape(-1).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match=r"copy_mask: copies must be integers in \[0, 5\), got \(5,\)"):
        copy_mask(params, "*", copies=[5], n=N)
    with pytest.raises(ValueError, match="copy_mask: no stacked leaf with a leading axis of 5 matches 'nope/"):
        copy_mask(params, "nope/*", copies=[1], n=N)


def test_stack_unstack_round_trip_and_errors():
    _, _, params, _ = _pair()
    back = stack_params(unstack_params(params, "b"))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, back))
    with pytest.raises(ValueError, match=r"stack_params: expected copies numbered 0..1, got \['b_0', 'b_2'\]"):
        stack_params({"b_0": {"w": jnp.ones(2)}, "b_2": {"w": jnp.ones(2)}})
    with pytest.raises(ValueError, match="unstack_params: expected every leaf to have the same leading"):
        unstack_params({"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}, "b")


def test_repeat_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeat: n must be a positive integer, got 0"):
        repeat(jnn.dense(3), 0)
    with pytest.raises(ValueError, match=r"\[dense\] repeat: the repeated layer must keep its input's shape and dtype, "
                                         r"but dense maps float32\[2, 8\] to float32\[2, 3\]"):
        layer = repeat(jnn.dense(3), 2)
        layer.apply(layer.init(jax.random.key(0), jnp.zeros((2, 8)))[0], {}, jnp.zeros((2, 8)))
    with pytest.raises(TypeError, match="repeat: expected a jnn.Layer"):
        repeat(jnn.relu, 2)


@pytest.mark.parametrize("policy", ["nothing", "dots", "dots_no_batch", "offload", "everything"])
def test_remat_keeps_values_and_gradients(policy):
    block = _block()
    deep, plain = repeat(remat(block, policy=policy), 3), repeat(block, 3)
    params, state = plain.init(jax.random.key(0), X)
    assert jax.tree.structure(deep.init(jax.random.key(0), X)[0]) == jax.tree.structure(params)
    loss = lambda model: lambda p: jnp.sum(jnp.sin(model.apply(p, state, X)[0]))
    g, g2 = jax.jit(jax.grad(loss(deep)))(params), jax.jit(jax.grad(loss(plain)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert "checkpoint" in str(jax.make_jaxpr(jax.grad(loss(deep)))(params)) or "remat" in str(
        jax.make_jaxpr(jax.grad(loss(deep)))(params))


def test_remat_nothing_lowers_the_compiled_temporary_memory():
    block = jnn.residual(jnn.dense(64), jnn.tanh(), jnn.dense(64), jnn.tanh())
    x = jnp.ones((256, 64))

    def temp_bytes(model):
        params, state = model.init(jax.random.key(0), x)
        grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, x)[0])))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    plain, saved = temp_bytes(repeat(block, 8)), temp_bytes(repeat(remat(block, policy="nothing"), 8))
    assert saved <= 0.5 * plain, (saved, plain)


def test_remat_rejects_unknown_policy():
    with pytest.raises(ValueError, match=r"remat: policy must be one of 'nothing', 'dots', 'dots_no_batch', "
                                         r"'offload', 'everything', got 'all'"):
        remat(jnn.dense(2), policy="all")


def _remat_policy(layer, x, **keywords):
    """The policy of the ``jax.checkpoint`` that ``layer.apply`` traces to."""
    params, state = layer.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, state, x, **keywords)[0])(params)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("remat2", "checkpoint")]
    return eqn.params["policy"]


def test_remat_traces_to_jax_checkpoint_with_the_policy_named():
    cp, x = jax.checkpoint_policies, jnp.ones((2, 4))
    expected = {"nothing": cp.nothing_saveable, "dots": cp.dots_saveable,
                "dots_no_batch": cp.dots_with_no_batch_dims_saveable, "everything": cp.everything_saveable}
    for name, policy in expected.items():
        assert _remat_policy(remat(jnn.dense(3), policy=name), x) == policy, name
    assert _remat_policy(remat(jnn.dense(3)), x) == cp.nothing_saveable   # the default
    offload = _remat_policy(remat(jnn.dense(3), policy="offload"), x)
    assert offload.__qualname__.startswith("offload_dot_with_no_batch_dims")
    closure = dict(zip(offload.__code__.co_freevars, (c.cell_contents for c in offload.__closure__)))
    assert closure == {"offload_src": "device", "offload_dst": "pinned_host"}


def test_remat_offload_without_pinned_host_memory_is_refused(monkeypatch):
    class Memory:
        kind = "device"

    class Device:
        def addressable_memories(self):
            return [Memory()]

    monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
    with pytest.raises(ValueError, match=r"^blk: policy='offload' needs a backend with pinned host memory; "
                                         r"cpu has memory kinds \['device'\] \(use 'nothing'"):
        remat(jnn.dense(2, name="blk"), policy="offload")
    with pytest.raises(ValueError, match=r"^outer: policy='offload'"):
        remat(jnn.dense(2, name="blk"), policy="offload", name="outer")


def test_remat_is_the_child_with_its_name_kind_keywords_train_and_key():
    attention = jnn.multi_head_attention(2, dropout_rate=0.5)
    wrapped = remat(attention)
    assert (wrapped.kind, wrapped.name, wrapped.keywords) == (attention.kind, attention.name, attention.keywords)
    named = remat(jnn.dense(3, name="a"), name="b")
    assert named.name == "b" and remat(jnn.dense(3, name="a")).name == "a"
    params, _ = jnn.serial(remat(jnn.dense(3, name="a"))).init(jax.random.key(0), jnp.ones((1, 2)))
    assert list(params) == ["a"]
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 4)), jnp.float32)
    lengths = jnp.array([5, 3])
    params, state = attention.init(jax.random.key(0), x)
    for train, key in [(False, None), (True, jax.random.key(1)), (True, jax.random.key(2))]:
        expected = attention.apply(params, state, x, key=key, train=train, lengths=lengths)[0]
        got = wrapped.apply(params, state, x, key=key, train=train, lengths=lengths)[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    train_1 = wrapped.apply(params, state, x, key=jax.random.key(1), train=True, lengths=lengths)[0]
    assert not np.allclose(train_1, wrapped.apply(params, state, x, lengths=lengths)[0])


def test_remat_passes_state_through_and_rejects_a_non_layer():
    with pytest.raises(TypeError, match=r"^remat: expected a jnn.Layer"):
        remat(jnn.relu)
    norm = jnn.batch_norm()
    x = jnp.asarray(np.random.default_rng(3).normal(2.0, 3.0, size=(16, 4)), jnp.float32)
    params, state = norm.init(jax.random.key(0), x)
    state = jax.tree.map(lambda a: a + 0.5, state)   # non-default running statistics
    for train in (False, True):
        expected = norm.apply(params, state, x, train=train)
        got = remat(norm).apply(params, state, x, train=train)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, expected)


def _scan_unroll(layer, x):
    params, state = layer.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, state, x)[0])(params)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    return eqn.params["unroll"]


def test_repeat_counts_unroll_kind_name_and_keywords():
    x = jnp.ones((2, 4))
    assert _scan_unroll(repeat(jnn.dense(4), 3), x) == 1            # a rolled loop by default
    assert _scan_unroll(repeat(jnn.dense(4), 3, unroll=3), x) == 3
    assert _scan_unroll(repeat(jnn.dense(4), 3, unroll=False), x) == 1   # a bool is accepted (False: rolled)
    one = repeat(jnn.dense(4), 1)                                    # n = 1 is one copy
    params, state = one.init(jax.random.key(0), x)
    expected = x @ params["w"][0] + params["b"][0]
    np.testing.assert_allclose(one.apply(params, state, x)[0], expected, atol=1e-6)
    for bad in (0, True, 1.0):
        with pytest.raises(ValueError, match=rf"^repeat: n must be a positive integer, got {bad!r}$"):
            repeat(jnn.dense(4), bad)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=rf"^blk: unroll must be a positive integer or a bool, got {bad!r}$"):
            repeat(jnn.dense(4), 2, unroll=bad, name="blk")
    block = jnn.encoder_block(2, 8)
    stack = repeat(block, 2, name="blocks")
    assert (stack.kind, stack.name, stack.keywords) == ("repeat", "blocks", block.keywords)
    assert repeat(jnn.dense(4), 2).name is None and repeat(jnn.dense(4), 2).kind == "repeat"
    params, _ = jnn.serial(jnn.dense(4), repeat(jnn.dense(4), 2, name="blocks")).init(jax.random.key(0), x)
    assert sorted(params) == ["blocks", "dense_0"]


def test_repeat_evaluates_by_default_and_names_the_child_in_init_errors():
    stack = repeat(jnn.dropout(0.5), 2)      # a child without params: scan's length is n
    x = jnp.ones((3, 8))
    params, state = stack.init(jax.random.key(0), x)
    np.testing.assert_array_equal(stack.apply(params, state, x)[0], x)   # train=False: no dropout
    kept = np.asarray(stack.apply(params, state, jnp.ones((64, 64)), key=jax.random.key(1), train=True)[0])
    assert set(np.unique(kept)) <= {0.0, 4.0} and 0.2 < np.mean(kept > 0) < 0.3   # two masks: 1/4 survive
    with pytest.raises(ValueError, match=r"^\[dense\] dense: expected an input with at least one axis"):
        repeat(jnn.dense(3), 2).init(jax.random.key(0), jnp.zeros(()))


def test_stack_and_unstack_edge_cases_and_messages():
    copies = unstack_params({"s": jnp.arange(3.0)}, "k")               # one leaf, one axis: scalars per copy
    assert sorted(copies) == ["k_0", "k_1", "k_2"] and float(copies["k_2"]["s"]) == 2.0
    np.testing.assert_array_equal(stack_params(copies)["s"], jnp.arange(3.0))
    with pytest.raises(ValueError, match=r"^unstack_params: the stacked tree has no leaves$"):
        unstack_params({}, "k")
    with pytest.raises(ValueError, match=r"^unstack_params: expected every leaf to have the same leading"):
        unstack_params({"a": jnp.float32(1.0)}, "k")
    for bad in ({}, [jnp.ones(2)]):
        with pytest.raises(ValueError, match=r"^stack_params: expected a non-empty dict of copies, got "):
            stack_params(bad)
    with pytest.raises(ValueError, match=r"^stack_params: expected keys '<kind>_<i>', got 'dense'$"):
        stack_params({"dense": {"w": jnp.ones(2)}})
    with pytest.raises(ValueError, match=r"^stack_params: the copies have different tree structures$"):
        stack_params({"k_0": {"w": jnp.ones(2)}, "k_1": {"v": jnp.ones(2)}})


def test_copy_mask_dtypes_empty_selections_one_axis_leaves_and_python_scalars():
    params = {"blocks": {"w": jnp.ones((3, 2, 2)), "s": jnp.ones(3), "scale": 1.0}}
    mask = copy_mask(params, "blocks/*", copies=[1], n=3)
    assert mask["blocks"]["w"].dtype == jnp.bool_ and mask["blocks"]["w"].shape == (3, 1, 1)
    np.testing.assert_array_equal(mask["blocks"]["s"], [False, True, False])   # a [n] leaf is stacked too
    assert mask["blocks"]["scale"] is False     # a Python number matches the pattern but has no copies
    none = copy_mask(params, "blocks/*", copies=[], n=3)
    assert none["blocks"]["w"].dtype == jnp.bool_ and none["blocks"]["w"].shape == (3, 1, 1)
    assert not np.asarray(none["blocks"]["w"]).any()
    with pytest.raises(ValueError, match=r"^copy_mask: copies must be integers in \[0, 3\), got \(True,\)$"):
        copy_mask(params, "blocks/*", copies=[True], n=3)


def test_freeze_copies_keeps_the_updates_dtype():
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    opt = freeze_copies(optax.sgd(1.0), params, "w", copies=[0], n=2)
    updates, _ = opt.update({"w": jnp.ones((2, 3), jnp.bfloat16)}, opt.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(updates["w"], np.float32), [[0, 0, 0], [-1, -1, -1]])
