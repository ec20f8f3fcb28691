"""Registry cases: attention, positional encodings, transformer blocks and the decoder LM (tiny sizes).

Gradient checks of order 2 compile a program per transformation and cost seconds per case for
these layers, so the attention and transformer cases check reverse mode only (order 2,
reverse-over-reverse); forward mode is checked on the positional layers. The ViT classifier is
covered by tests/test_transformer.py (values against NumPy and a gradient check). The NumPy references
come from test_attention.py and test_transformer.py; attention dropout's masks are checked in
test_attention.py.
"""
import numpy as np
from registry import Case
from test_attention import reference_attention_layer
from test_transformer import np_block, np_lm

from jnn.layers.attention import multi_head_attention
from jnn.layers.positional import learned_positional_embedding, sinusoidal_encoding
from jnn.layers.transformer import decoder_block, encoder_block
from jnn.nets import decoder_lm

REV = ("rev",)

def _sinusoidal(x):
    t, f = x.shape[1:]
    angle = np.arange(t)[:, None] / 10000.0 ** (2 * np.arange(f // 2)[None] / f)
    return x + np.stack([np.sin(angle), np.cos(angle)], -1).reshape(t, f)


def _np_rms_swiglu_block(p, x, heads=2, eps=0.5):
    """``encoder_block(heads, ..., norm="rms", norm_epsilon=eps, mlp="swiglu", use_bias=False)`` in NumPy."""
    rms = lambda h, scale: h / np.sqrt((h ** 2).mean(-1, keepdims=True) + eps) * scale
    b, t, f = x.shape
    split = lambda h: h.reshape(b, t, heads, -1).transpose(0, 2, 1, 3)
    h = rms(x, p["norm_0"]["scale"])
    q, k, v = (split(h @ p["attention"][n]["w"]) for n in ("query", "key", "value"))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    x = x + ((weights / weights.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, f) @ p[
        "attention"]["out"]["w"]
    h = rms(x, p["norm_1"]["scale"])
    gate = h @ p["mlp"]["gate"]["w"]
    return x + (gate / (1 + np.exp(-gate)) * (h @ p["mlp"]["dense_0"]["w"])) @ p["mlp"]["dense_1"]["w"]


CASES = [
    Case("multi_head_attention", lambda: multi_head_attention(2), (2, 3, 4), grad_modes=REV,
         reference=lambda p, s, x: reference_attention_layer(p, x, 2)),
    Case("mha_dropout_train", lambda: multi_head_attention(2, dropout_rate=0.25, use_bias=False), (2, 3, 4),
         train=True, stochastic=True, batch_independent=False, grad_modes=REV),
    Case("learned_positional_embedding", lambda: learned_positional_embedding(5), (2, 3, 4),
         reference=lambda p, s, x: x + p["embedding"][:3]),
    Case("sinusoidal_encoding", lambda: sinusoidal_encoding(5), (2, 3, 4), reference=lambda p, s, x: _sinusoidal(x)),
    Case("encoder_block", lambda: encoder_block(2, 6), (2, 3, 4), grad_modes=REV, grad_order=1,
         reference=lambda p, s, x: np_block(p, x, 2)),
    Case("encoder_block_rms_swiglu", lambda: encoder_block(2, 6, norm="rms", norm_epsilon=0.5, mlp="swiglu",
                                                           use_bias=False), (2, 3, 4), grad_modes=REV, grad_order=1,
         reference=lambda p, s, x: _np_rms_swiglu_block(p, x)),
    Case("decoder_block_gqa_rope", lambda: decoder_block(2, 6, num_kv_heads=1, rope=True), (2, 3, 4),
         grad_modes=REV, reference=lambda p, s, x: np_block(p, x, 2, 1, causal=True, rope=True)),
    Case("decoder_lm", lambda: decoder_lm(7, 1, 2, 4, 6, 5, num_kv_heads=1), (2, 3), dtype=np.int32,
         int_high=7, input_grads=False, grad_modes=REV, grad_order=1,
         reference=lambda p, s, x: np_lm(p, x, 1, 2, kv_heads=1)),
]
