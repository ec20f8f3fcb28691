"""jnn.train.freeze: frozen leaves never move, the rest follow the wrapped optimizer exactly."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn
from jnn import train
from jnn.train.freeze import freeze, trainable_mask

LOSS = jnn.losses.softmax_cross_entropy


def _model():
    return jnn.serial(jnn.flatten(), jnn.named("encoder", jnn.serial(jnn.dense(16), jnn.relu(), jnn.dense(16))),
                      jnn.relu(), jnn.dense(10))


@functools.lru_cache(maxsize=None)
def _params():
    example = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    return jax.jit(lambda key: _model().init(key, example)[0])(jax.random.key(0))


def test_trainable_mask_selects_paths_by_pattern():
    params = _params()
    assert trainable_mask(params, ["encoder/*"]) == {
        "encoder": {"dense_0": {"w": False, "b": False}, "dense_1": {"w": False, "b": False}},
        "dense_0": {"w": True, "b": True}}
    assert trainable_mask(params, "b") == {
        "encoder": {"dense_0": {"w": True, "b": False}, "dense_1": {"w": True, "b": False}},
        "dense_0": {"w": True, "b": False}}
    assert trainable_mask(params, ["encoder/dense_0/*", "dense_0/w"]) == {
        "encoder": {"dense_0": {"w": False, "b": False}, "dense_1": {"w": True, "b": True}},
        "dense_0": {"w": False, "b": True}}


def test_patterns_that_match_nothing_are_rejected():
    params = _params()
    with pytest.raises(ValueError, match=r"trainable_mask: pattern\(s\) \['encodr/\*'\] match no parameter "
                                         r"\(a typo\?\); the parameter paths are: dense_0/b, dense_0/w, encoder/dense_0/b"):
        trainable_mask(params, ["encodr/*", "b"])
    with pytest.raises(ValueError, match=r"freeze: pattern\(s\) \['kernel'\] match no parameter"):
        freeze(optax.sgd(0.1), "kernel").init(params)
    with pytest.raises(ValueError, match=r"freeze: frozen patterns must be non-empty strings, got \[''\]"):
        freeze(optax.sgd(0.1), [""])


def test_frozen_leaves_stay_bit_identical_under_adamw_with_weight_decay():
    model, params = _model(), _params()
    x, y = jnn.data.load_digits()
    x, y = jnp.asarray(x[:64]), jnp.asarray(y[:64])
    adamw = optax.adamw(1e-2, weight_decay=0.5)
    frozen = ["encoder/dense_0/*", "b"]
    opt = freeze(adamw, frozen)
    ts = train.TrainState(params, {}, opt.init(params), jnp.zeros((), jnp.int32), jax.random.key(1))
    step = jax.jit(train.make_train_step(model, LOSS, opt))
    for _ in range(5):
        ts, _ = step(ts, (x, y))

    keep = trainable_mask(params, frozen)
    moved = 0
    for (path, before), after, trainable in zip(jnn.tree.leaves_with_paths(params),
                                                jax.tree_util.tree_leaves(ts.params),
                                                jax.tree_util.tree_leaves(keep)):
        if trainable:
            assert not np.allclose(before, after), path
            moved += 1
        else:
            np.testing.assert_array_equal(after, before, err_msg=path)
    assert moved == 2   # encoder/dense_1/w and dense_0/w

    # Reference: plain adamw on the trainable leaves alone, frozen ones held as constants.
    names = [p for p, t in zip([p for p, _ in jnn.tree.leaves_with_paths(params)],
                               jax.tree_util.tree_leaves(keep)) if t]
    flat = dict(jnn.tree.leaves_with_paths(params))
    sub = {n: flat[n] for n in names}

    def loss_of(sub):
        full = jax.tree_util.tree_map_with_path(lambda p, v: sub.get(jnn.tree.path_str(p), v), params)
        return LOSS(model.apply(full, {}, x, train=True)[0], y)

    @jax.jit
    def reference_step(sub, state):
        updates, state = adamw.update(jax.grad(loss_of)(sub), state, sub)
        return optax.apply_updates(sub, updates), state

    state = adamw.init(sub)
    for _ in range(5):
        sub, state = reference_step(sub, state)
    trained = dict(jnn.tree.leaves_with_paths(ts.params))
    for n in names:
        np.testing.assert_allclose(trained[n], sub[n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_frozen_leaves_have_no_optimizer_state_and_escape_weight_decay():
    params = _params()
    opt = freeze(optax.adamw(0.1, weight_decay=0.5), "encoder/*")
    opt_state = opt.init(params)
    arrays = [(p, leaf) for p, leaf in jnn.tree.leaves_with_paths(opt_state) if leaf.ndim > 0]
    assert arrays and not [p for p, _ in arrays if "encoder" in p]
    assert sorted(p.rsplit("/mu/", 1)[1] for p, _ in arrays if "/mu/" in p) == ["dense_0/b", "dense_0/w"]

    # Zero gradients: only decoupled weight decay moves a leaf, and only the trainable ones.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt_state, params)
    for path, u in jnn.tree.leaves_with_paths(updates):
        if path.startswith("encoder/"):
            assert not np.any(u), path
    np.testing.assert_allclose(updates["dense_0"]["w"], -0.1 * 0.5 * params["dense_0"]["w"], rtol=1e-6)
    plain_opt = optax.adamw(0.1, weight_decay=0.5)
    plain, _ = plain_opt.update(zeros, plain_opt.init(params), params)
    assert np.any(plain["encoder"]["dense_0"]["w"])   # without freeze, decay would move them


def test_patterns_and_optimizer_kinds_are_checked():
    params = {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}}
    with pytest.raises(TypeError, match=r"^trainable_mask: frozen must be a pattern string or a list of them, got int$"):
        jnn.train.trainable_mask(params, 3)
    with pytest.raises(TypeError, match=r"^jnn.tree.mask: include must be a pattern string or a list of them, got "
                                        r"int$"):
        jnn.tree.mask(params, include=3)
    with pytest.raises(ValueError, match=r"^penalty: exclude patterns must be non-empty strings, got \[None\]$"):
        jnn.losses.l2_penalty(params, exclude=[None])
    with pytest.raises(TypeError, match=r"^freeze: optimizer must be an optax.GradientTransformation \(e.g. "
                                        r"optax.adam\(1e-3\)\), got str$"):
        freeze("adam", "b")
    with pytest.raises(TypeError, match=r"^summary: model must be a jnn.Layer, got int$"):
        jnn.summary(3, jnp.zeros((1, 2)))
