"""jnn.layers.transformer, the details its other tests left open (found by mutation testing,
tests/MUTATION.md): which dropout needs a key, the keys each dropout draws from, evaluation by
default, the context errors, the sub-layers `capture`, `summary` and `jnn.get` see, grouped
key/value heads and `context_features`, and the blocks' kinds, names and keywords. Blocks are
built inside the tests, so that mutation testing sees the constructors run. References are
NumPy (tests/test_transformer.py, tests/test_cross_attention.py)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jnn
from jnn.layers.attention import multi_head_attention
from jnn.layers.transformer import decoder_block, encoder_block
from test_cross_attention import CONTEXT, CONTEXT_LENGTHS, FC, _numpy_reference as np_cross_attention
from test_transformer import _perturbed, _rand, np_attention, np_block, np_ln

KEY = jax.random.key(0)
X = _rand((2, 3, 8))                                     # [B, T, F]; the context is [2, 5, FC=6]


def _np_mlp(p, h):
    h = h @ np.asarray(p["dense_0"]["w"]) + np.asarray(p["dense_0"]["b"])
    return 0.5 * h * (1 + erf(h / np.sqrt(2))) @ np.asarray(p["dense_1"]["w"]) + np.asarray(p["dense_1"]["b"])


def np_cross_block(p, x, heads, context, context_lengths):
    """A causal decoder block with cross-attention, in NumPy (float64)."""
    x = np.asarray(x, np.float64)
    x = x + np_attention(p["attention"], np_ln(x, p["norm_0"]), heads, heads, causal=True)
    x = x + np_cross_attention(p["cross_attention"], np_ln(x, p["norm_cross"]), context, context_lengths)
    return x + _np_mlp(p["mlp"], np_ln(x, p["norm_1"]))


def _cross_block(**kw):
    block = decoder_block(2, 12, cross_attention=True, context_features=FC, **kw)
    params = _perturbed(block.init(KEY, X)[0])
    return block, params


def test_cross_block_with_context_features_matches_numpy():
    block, params = _cross_block()
    assert params["cross_attention"]["key"]["w"].shape == (FC, 8)
    y, _ = block.apply(params, {}, X, context=CONTEXT, context_lengths=CONTEXT_LENGTHS)
    np.testing.assert_allclose(y, np_cross_block(params, X, 2, CONTEXT, CONTEXT_LENGTHS), atol=2e-4)


def test_encoder_block_with_grouped_kv_heads_matches_numpy():
    block = encoder_block(4, 12, num_kv_heads=2)
    params = _perturbed(block.init(KEY, X)[0])
    assert params["attention"]["key"]["w"].shape == (8, 4)   # 2 kv heads of size 2
    np.testing.assert_allclose(block.apply(params, {}, X)[0], np_block(params, X, 4, kv_heads=2), atol=2e-4)


@pytest.mark.parametrize("make,context", [
    (lambda: encoder_block(2, 12), None),
    (lambda: decoder_block(2, 12, cross_attention=True, context_features=FC), CONTEXT),
])
def test_a_block_without_dropout_trains_without_a_key(make, context):
    block = make()
    params, _ = block.init(KEY, X)
    kw = {} if context is None else {"context": context}
    np.testing.assert_array_equal(block.apply(params, {}, X, train=True, **kw)[0], block.apply(params, {}, X, **kw)[0])


@pytest.mark.parametrize("make,label", [
    (lambda: encoder_block(2, 12, dropout_rate=0.5), "encoder_block"),
    (lambda: encoder_block(2, 12, attention_dropout_rate=0.5), "encoder_block"),
    (lambda: decoder_block(2, 12, attention_dropout_rate=0.5, name="dec"), "dec"),
    (lambda: decoder_block(2, 12, attention_dropout_rate=0.5, cross_attention=True, context_features=FC), "decoder_block"),
])
def test_each_dropout_alone_needs_a_key_and_the_block_says_so(make, label):
    block = make()
    params, _ = block.init(KEY, X)
    with pytest.raises(ValueError, match="^" + re.escape(f"{label}: train=True with dropout needs a PRNG key")):
        block.apply(params, {}, X, train=True, context=CONTEXT if "cross_attention" in params else None)


def test_evaluation_is_the_default_even_with_dropout():
    block = decoder_block(2, 12, dropout_rate=0.5, attention_dropout_rate=0.5)
    params = _perturbed(block.init(KEY, X)[0])
    np.testing.assert_allclose(block.apply(params, {}, X)[0], np_block(params, X, 2, causal=True), atol=2e-4)


def _logged_bernoulli(monkeypatch):
    """Replaces jax.random.bernoulli by a wrapper that logs each draw's key data and shape."""
    draws, bernoulli = [], jax.random.bernoulli

    def logged(key, p=0.5, shape=None, **kw):
        draws.append((tuple(np.asarray(jax.random.key_data(key)).ravel()), tuple(shape)))
        return bernoulli(key, p, shape, **kw)

    monkeypatch.setattr(jax.random, "bernoulli", logged)
    return draws


@pytest.mark.parametrize("cross", [False, True])
def test_every_dropout_in_a_block_draws_from_its_own_key(monkeypatch, cross):
    """Attention-weight dropout, the residual dropouts and the MLP's dropout: five draws with
    cross-attention, three without, from as many different keys (a shared key would give two
    dropouts the same mask wherever their shapes overlap)."""
    block = decoder_block(2, 12, dropout_rate=0.5, attention_dropout_rate=0.5, cross_attention=cross,
                          context_features=FC if cross else None)
    params, _ = block.init(KEY, X)
    draws = _logged_bernoulli(monkeypatch)
    block.apply(params, {}, X, key=jax.random.key(3), train=True, context=CONTEXT if cross else None)
    weights = [(2, 2, 3, 3)] + ([(2, 2, 3, 5)] if cross else [])   # [B, N, T, S]: self, then cross
    assert sorted(shape for _, shape in draws) == sorted(weights + [(2, 3, 8)] * (2 + cross))
    assert len({key for key, _ in draws}) == len(draws)


def test_attention_dropout_alone_is_applied_in_training(monkeypatch):
    block = encoder_block(2, 12, attention_dropout_rate=0.5)
    params, _ = block.init(KEY, X)
    draws = _logged_bernoulli(monkeypatch)
    y, _ = block.apply(params, {}, X, key=KEY, train=True)
    assert [shape for _, shape in draws] == [(2, 2, 3, 3)]
    assert not np.allclose(y, block.apply(params, {}, X)[0])


def test_context_errors_name_the_block_and_say_what_to_do():
    encoder = encoder_block(2, 12)
    params, _ = encoder.init(KEY, X)
    no_cross = ("encoder_block: got context= but this block has no cross-attention (build it with "
                "decoder_block(..., cross_attention=True))")
    with pytest.raises(ValueError, match="^" + re.escape(no_cross) + "$"):
        encoder.apply(params, {}, X, context=CONTEXT)
    with pytest.raises(ValueError, match="^" + re.escape(no_cross) + "$"):
        encoder.apply(params, {}, X, context_lengths=CONTEXT_LENGTHS)
    block, params = _cross_block(name="dec")
    with pytest.raises(ValueError, match="^" + re.escape("dec: this block cross-attends: call "
                                                         "apply(..., context=[B, S, F_c])") + "$"):
        block.apply(params, {}, X)


def test_construction_errors_name_the_block():
    with pytest.raises(ValueError, match=r"^dec: cross_attention must be True or False, got 1$"):
        decoder_block(2, 12, cross_attention=1, name="dec")
    with pytest.raises(ValueError, match=r"^decoder_block: context_features is only used with cross_attention=True$"):
        decoder_block(2, 12, context_features=FC)
    with pytest.raises(ValueError, match=r"^dec: mlp_dim must be a positive integer"):
        decoder_block(2, 0, name="dec")


def test_capture_and_summary_see_both_attentions():
    block, params = _cross_block()
    _, _, out = jnn.capture(block, params, {}, X, ["attention", "cross_attention", "mlp"], context=CONTEXT,
                            context_lengths=CONTEXT_LENGTHS)
    x = np.asarray(X, np.float64)
    attended = np_attention(params["attention"], np_ln(x, params["norm_0"]), 2, 2, causal=True)
    np.testing.assert_allclose(out["attention"], attended, atol=2e-4)
    crossed = np_cross_attention(params["cross_attention"], np_ln(x + attended, params["norm_cross"]), CONTEXT,
                                 CONTEXT_LENGTHS)
    np.testing.assert_allclose(out["cross_attention"], crossed, atol=2e-4)
    table = jnn.summary(block, jax.ShapeDtypeStruct((1, 3, 8), jnp.float32),
                        context=jax.ShapeDtypeStruct((1, 5, FC), jnp.float32))
    # columns: layer, kind, output shape, params, config (left out here)
    rows = {c[0]: " ".join(c[1:4]) for c in (re.split(r"\s{2,}", line) for line in table.splitlines()[2:-3])}
    assert rows["attention"] == "multi_head_attention (1, 3, 8) 288"             # 4 x (8 x 8 + 8)
    assert rows["cross_attention"] == "multi_head_attention (1, 3, 8) 256"       # 2 x (8 x 8 + 8) + 2 x (6 x 8 + 8)
    assert rows["mlp"] == "mlp (1, 3, 8) 212" and rows["norm_cross"] == "layer_norm (1, 3, 8) 16"


@pytest.mark.parametrize("cross", [False, True])
def test_children_are_the_params_keys_and_run_like_the_block_parts(cross):
    """The children evaluate by default, like the block (its MLP has dropout here)."""
    block = (decoder_block(2, 12, 0.5, cross_attention=True, context_features=FC) if cross
             else encoder_block(2, 12, 0.5))
    params = _perturbed(block.init(KEY, X)[0])
    names = (["norm_0", "attention", "norm_cross", "cross_attention", "norm_1", "mlp"] if cross
             else ["norm_0", "attention", "norm_1", "mlp"])
    assert list(block.children) == names and sorted(params) == sorted(names)
    assert [block[n].kind for n in names] == [
        {"norm": "layer_norm", "atte": "multi_head_attention", "cros": "multi_head_attention", "mlp": "mlp"}[n[:4]]
        for n in names]
    attention = jnn.get(block, "attention")
    assert attention.name is None and attention.keywords == frozenset({"lengths", "bias", "mask", "context",
                                                                       "context_lengths"})
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
    assert shapes(attention.init(KEY, X)[0]) == shapes(params["attention"])
    h = np_ln(np.asarray(X, np.float64), params["norm_0"]).astype(np.float32)
    lengths = jnp.array([3, 2])
    np.testing.assert_allclose(attention.apply(params["attention"], {}, h, lengths=lengths)[0],
                               np_attention(params["attention"], h, 2, 2, causal=cross, lengths=lengths), atol=2e-4)
    np.testing.assert_allclose(block["mlp"].apply(params["mlp"], {}, h)[0], _np_mlp(params["mlp"], h), atol=2e-4)
    if cross:
        crossed = block["cross_attention"].apply(params["cross_attention"], {}, h, context=CONTEXT,
                                                 context_lengths=CONTEXT_LENGTHS)[0]
        np.testing.assert_allclose(crossed, np_cross_attention(params["cross_attention"], h, CONTEXT, CONTEXT_LENGTHS),
                                   atol=2e-4)


def test_kinds_names_and_keywords():
    assert encoder_block(2, 12).kind == "encoder_block" and decoder_block(2, 12).kind == "decoder_block"
    assert encoder_block(2, 12).keywords == decoder_block(2, 12).keywords == frozenset({"lengths"})
    assert decoder_block(2, 12, cross_attention=True).keywords == frozenset({"lengths", "context", "context_lengths"})
    model = jnn.serial(encoder_block(2, 12, name="enc"), decoder_block(2, 12, name="dec"), encoder_block(2, 12))
    assert sorted(model.init(KEY, X)[0]) == ["dec", "enc", "encoder_block_0"]
    assert jnn.get(model, "enc").name == "enc" and jnn.get(model, "dec").name == "dec"


def test_the_blocks_parts_draw_from_different_keys():
    block = decoder_block(2, 12, cross_attention=True)      # self- and cross-attention of the same shapes
    params, _ = block.init(KEY, X)
    assert not np.allclose(params["attention"]["query"]["w"], params["cross_attention"]["query"]["w"])
    other, _ = block.init(jax.random.key(1), X)
    for part in ("attention", "cross_attention", "mlp"):
        assert not np.allclose(params[part]["query" if part != "mlp" else "dense_0"]["w"],
                               other[part]["query" if part != "mlp" else "dense_0"]["w"])


def test_a_cross_attending_block_composes_in_serial():
    """serial's init applies each child without keywords to learn its output shape: a block
    that needs context= must init there all the same, and need it at apply."""
    model = jnn.serial(jnn.dense(8), decoder_block(2, 12, cross_attention=True, context_features=FC), jnn.dense(3))
    x = _rand((2, 3, 4), 2)
    params, state = model.init(KEY, x)
    params = _perturbed(params)
    y, _ = model.apply(params, state, x, context=CONTEXT, context_lengths=CONTEXT_LENGTHS)
    p = jax.tree_util.tree_map(np.asarray, params)
    h = np.asarray(x, np.float64) @ p["dense_0"]["w"] + p["dense_0"]["b"]
    expected = np_cross_block(p["decoder_block_0"], h, 2, CONTEXT, CONTEXT_LENGTHS) @ p["dense_1"]["w"] + p["dense_1"]["b"]
    np.testing.assert_allclose(y, expected, atol=2e-4)
    with pytest.raises(ValueError, match=r"^\[decoder_block_0\] decoder_block: this block cross-attends"):
        model.apply(params, state, x)


def test_cross_attention_shares_the_grouped_heads_and_names_the_block():
    block = decoder_block(4, 12, num_kv_heads=2, cross_attention=True, context_features=FC, name="dec")
    params, _ = block.init(KEY, X)
    assert params["cross_attention"]["key"]["w"].shape == (FC, 4)              # 2 kv heads of size 2
    assert params["attention"]["key"]["w"].shape == (8, 4)
    with pytest.raises(ValueError, match=r"^\[cross_attention\] dec cross_attention: expected a floating-point "
                                         r"context \[B, S, 6\]"):
        block.apply(params, {}, X, context=X)


def test_a_cross_attending_block_of_the_default_context_width_composes_in_serial():
    """Without context_features the context is as wide as the block (F = 8, here unlike T = 3)."""
    model = jnn.serial(decoder_block(2, 12, cross_attention=True), jnn.dense(3))
    params, state = model.init(KEY, X)
    assert params["decoder_block_0"]["cross_attention"]["key"]["w"].shape == (8, 8)
    context = _rand((2, 5, 8), 3)
    assert model.apply(params, state, X, context=context)[0].shape == (2, 3, 3)


# ---- hyperparameters in Layer.config, extra functions in Layer.methods ---------------------------

def test_factories_record_their_hyperparameters_in_config():
    assert jnn.multi_head_attention(4).config["num_heads"] == 4
    attn = multi_head_attention(8, num_kv_heads=2, rope=True, name="a")
    assert (attn.config["num_kv_heads"], attn.config["rope"], attn.config["rope_base"]) == (2, True, 10000.0)
    assert "name" not in attn.config
    block = decoder_block(2, 12, 0.1, cross_attention=True, context_features=FC)
    assert (block.config["mlp_dim"], block.config["dropout_rate"], block.config["cross_attention"],
            block.config["context_features"]) == (12, 0.1, True, FC)
    assert encoder_block(2, 12, num_kv_heads=1).config["num_kv_heads"] == 1
    assert dict(encoder_block(2, 6, 0.1, mlp="swiglu", use_bias=False).children["mlp"].config) == {
        "mlp_dim": 6, "dropout_rate": 0.1, "kind": "swiglu", "use_bias": False}
    lm = jnn.decoder_lm(11, 2, 2, 8, 16, 12, positional="rope", scan_layers=True)
    assert {k: lm.config[k] for k in ("vocab_size", "num_layers", "num_heads", "features", "mlp_dim", "max_len",
                                      "positional", "scan_layers", "tied")} == dict(
        vocab_size=11, num_layers=2, num_heads=2, features=8, mlp_dim=16, max_len=12, positional="rope",
        scan_layers=True, tied=True)
    encdec = jnn.encoder_decoder(11, 2, 2, 8, 16, 12, num_decoder_layers=1)
    assert (encdec.config["num_layers"], encdec.config["num_decoder_layers"]) == (2, 1)
    assert jnn.vit_classifier(4, 1, 2, 8, 16, 3, pool="mean").config["patch_size"] == (4, 4)
    assert jnn.resnet(10, stage_features=[8, 16]).config["stage_features"] == (8, 16)
    assert jnn.residual_block(8, strides=2, project=True).config["strides"] == 2
    assert jnn.repeat(jnn.dense(3), 4).config["n"] == 4
    assert jnn.remat(jnn.dense(3), policy="dots").config["policy"] == "dots"
    assert jnn.recurrent(jnn.lstm_cell(3), return_sequences=False).config["return_sequences"] is False


def test_attention_and_blocks_declare_their_extra_functions_in_methods():
    assert sorted(multi_head_attention(2).methods) == ["attend_kv", "cross_kv", "decode", "init_cache"]
    assert sorted(encoder_block(2, 12).methods) == ["decode", "init_cache"]
    cross = decoder_block(2, 12, cross_attention=True)
    assert sorted(cross.methods) == ["cross_cache", "decode", "init_cache"]
    assert cross["cross_attention"].methods.keys() == multi_head_attention(2).methods.keys()
    assert jnn.remat(cross).methods == cross.methods and jnn.named("b", cross).methods == cross.methods
