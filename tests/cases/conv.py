"""Registry cases: convolutions and pooling, with NumPy references from test_conv/test_pooling
(the strided transposed conv with SAME padding has none here; test_conv.py checks it against Flax).

Shapes are tiny and options are combined per case (check_grads order 2 runs on each, and
its compile time dominates); the values of every option are tested in test_conv/test_pooling.
"""
from registry import Case
from test_conv import np_conv
from test_pooling import np_pool

from jnn.layers.conv import conv, conv_transpose
from jnn.layers.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool

CASES = [
    Case("conv_1d_strided_no_bias", lambda: conv(3, (3,), strides=2, use_bias=False), (2, 6, 2),
         reference=lambda p, s, x: np_conv(x, p["w"], None, (2,), "SAME", (1,), 1)),
    Case("conv_2d_depthwise_dilated_explicit_padding",
         lambda: conv(4, (2, 3), dilation=(2, 1), padding=[(1, 0), (0, 2)], feature_group_count=2),
         (2, 4, 4, 2), reference=lambda p, s, x: np_conv(x, p["w"], p["b"], (1, 1), [(1, 0), (0, 2)], (2, 1), 2)),
    Case("conv_2d_one_channel_explicit_padding", lambda: conv(3, (3, 2), padding=[(1, 0), (2, 1)]), (2, 4, 5, 1),
         reference=lambda p, s, x: np_conv(x, p["w"], p["b"], (1, 1), [(1, 0), (2, 1)], (1, 1), 1)),
    Case("conv_3d_valid", lambda: conv(2, (2, 2, 2), padding="VALID"), (2, 3, 3, 3, 2),
         reference=lambda p, s, x: np_conv(x, p["w"], p["b"], (1, 1, 1), "VALID", (1, 1, 1), 1)),
    Case("conv_transpose_2d_strided", lambda: conv_transpose(2, (3, 3), strides=2), (2, 3, 3, 2)),
    Case("max_pool_2d_same_strided", lambda: max_pool((3, 3), strides=2, padding="SAME"), (2, 5, 5, 2),
         reference=lambda p, s, x: np_pool(x, (3, 3), (2, 2), "SAME", "max")),
    Case("avg_pool_2d_same_exclude_pad",
         lambda: avg_pool((2, 2), strides=1, padding="SAME", count_include_pad=False), (2, 3, 3, 2),
         reference=lambda p, s, x: np_pool(x, (2, 2), (1, 1), "SAME", "avg", count_include_pad=False)),
    Case("global_avg_pool", lambda: global_avg_pool(), (2, 3, 3, 2), reference=lambda p, s, x: x.mean((1, 2))),
    Case("global_max_pool", lambda: global_max_pool(), (2, 3, 3, 2), reference=lambda p, s, x: x.max((1, 2))),
]
