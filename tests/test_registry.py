"""Every registered layer (see registry.py and tests/cases/) passes the public conformance kit, and
every deterministic one computes, in float64, what its independent NumPy float64 reference does."""
import functools

import jax
import numpy as np
import pytest

import jnn.testing
from registry import CASES, KEY


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_passes_check_layer(case):
    jnn.testing.check_layer(case.make(), case.input(), key=KEY, train=case.train, stochastic=case.stochastic,
                            batch_independent=case.batch_independent, grad_modes=case.grad_modes,
                            input_grads=case.input_grads, grad_order=case.grad_order, atol=case.atol)


# Cases without a NumPy reference here, and where their values are checked against an
# independent one instead. A new case needs a reference or an entry here.
CHECKED_ELSEWHERE = {
    "mha_dropout_train": "test_attention.py (the dropout masks and their 1 / (1 - rate) scale)",
    "conv_transpose_2d_strided": "test_conv.py (against flax.linen.ConvTranspose)",
    "repeat_remat_residual_batch_norm": "test_repeat.py (against the blocks applied one by one)",
    "cross_attention": "test_cross_attention.py (NumPy einsum reference and Flax)",
    "decoder_block_cross": "test_cross_attention.py (NumPy einsum reference)",
    "encoder_decoder": "test_encoder_decoder.py",
    "dropout_train": "test_dropout.py (masks observed)",
    "spatial_dropout_train": "test_dropout.py (masks observed)",
}
REFERENCED = [c for c in CASES if c.reference is not None]


def test_every_case_has_a_reference_or_says_where_it_is_checked():
    assert {c.name for c in CASES if c.reference is None} == set(CHECKED_ELSEWHERE)


def _random_like(tree, seed):
    """Every float leaf drawn afresh, variances positive: no bias, offset or running statistic sits
    at its initial zero or one, where a dropped or misplaced term would not show."""
    rng = np.random.default_rng(seed)

    def draw(path, a):
        if not np.issubdtype(a.dtype, np.floating):
            return a
        low_high = (0.5, 2.0) if "var" in jax.tree_util.keystr(path) else (-1.0, 1.0)
        return jax.numpy.asarray(rng.uniform(*low_high, a.shape), a.dtype)
    return jax.tree_util.tree_map_with_path(draw, tree)


@pytest.mark.parametrize("case", REFERENCED, ids=[c.name for c in REFERENCED])
def test_float64_layer_matches_its_numpy_float64_reference(case):
    """To 1e-10: a wrong formula fails, and so does a float64 layer that computes anything in float32."""
    layer = case.make()
    with jax.enable_x64(True):
        x = case.input(dtype=np.float64 if np.issubdtype(case.dtype, np.floating) else case.dtype)
        params, state = _random_like(layer.init(KEY, x), seed=1)
        y, _ = jax.jit(functools.partial(layer.apply, key=KEY, train=case.train))(params, state, x)
        assert y.dtype == np.float64, f"{case.name}: a float64 input gave a {y.dtype} output"
        to_numpy = functools.partial(jax.tree_util.tree_map, np.asarray)
        expected = case.reference(to_numpy(params), to_numpy(state), np.asarray(x))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10, atol=1e-12)
