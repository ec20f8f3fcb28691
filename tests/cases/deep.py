"""Registry cases for the deep-model layers (issue #16): repeat, remat, cross-attention blocks and
the encoder-decoder. Layers that need ``context=`` are wrapped so that the context is computed
from the input (the registry calls ``apply(params, state, x)``), which also checks gradients
through the context path."""
import jax
import numpy as np
from registry import Case
from test_transformer import np_block

import jnn
from jnn.core import Layer
from jnn.layers.attention import multi_head_attention
from jnn.layers.remat import remat
from jnn.layers.repeat import repeat
from jnn.layers.transformer import decoder_block, encoder_block
from jnn.nets import encoder_decoder

REV = ("rev",)


def _self_context(layer: Layer, make_context) -> Layer:
    """``layer`` applied with ``context=make_context(x)``."""
    def apply(params, state, x, *, key=None, train=False):
        return layer.apply(params, state, x, key=key, train=train, context=make_context(x))

    return Layer(layer.init, apply, layer.kind, layer.name)


def _repeated_blocks(p, x, count):
    """The encoder block applied ``count`` times, the i-th time with the i-th slice of every param."""
    for i in range(count):
        x = np_block(jax.tree_util.tree_map(lambda a: a[i], p), x, 2)
    return x


CASES = [
    Case("repeat_encoder_block", lambda: repeat(encoder_block(2, 6), 3), (2, 3, 4), grad_modes=REV,
         grad_order=1, reference=lambda p, s, x: _repeated_blocks(p, x, 3)),
    Case("repeat_remat_residual_batch_norm",
         lambda: repeat(remat(jnn.residual(jnn.dense(4), jnn.batch_norm(), jnn.tanh())), 2),
         (3, 4), train=True, batch_independent=False, grad_modes=REV, grad_order=1),
    Case("remat_dots_dense", lambda: remat(jnn.serial(jnn.dense(5), jnn.tanh()), policy="dots"), (2, 4),
         reference=lambda p, s, x: np.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])),
    Case("cross_attention", lambda: _self_context(multi_head_attention(2), lambda x: x[:, ::-1] * 0.5),
         (2, 3, 4), grad_modes=REV),
    Case("decoder_block_cross", lambda: _self_context(decoder_block(2, 6, cross_attention=True),
                                                      lambda x: x[:, :2] + 1.0), (2, 3, 4), grad_modes=REV,
         grad_order=1),
    Case("encoder_decoder", lambda: _self_context(encoder_decoder(7, 1, 2, 4, 6, 5), lambda t: t[:, ::-1]),
         (2, 3), dtype=np.int32, int_high=7, input_grads=False, grad_modes=REV, grad_order=1),
]
