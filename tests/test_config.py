"""Every layer factory of jnn.layers' basic, activation, conv, pooling, norm, dropout, embedding and
positional families (and augment_layer) exposes the hyperparameters it was built with in
``layer.config``, and a bad hyperparameter still fails when the layer is built."""
import re

import pytest

import jnn
from jnn.data.augment import augment_layer, horizontal_flip

FLIP = horizontal_flip(0.5)

# (factory, positional args, keyword args, the config it must show beyond what was passed)
CASES = [
    (jnn.dense, (3,), {"use_bias": False, "w_init": "he_normal"}, {"features": 3, "b_init": "zeros"}),
    (jnn.reshape, ((4, -1),), {}, {"shape": (4, -1)}),
    (jnn.leaky_relu, (0.2,), {}, {"negative_slope": 0.2}),
    (jnn.elu, (), {"alpha": 0.5}, {}),
    (jnn.gelu, (True,), {}, {"approximate": True}),
    (jnn.softmax, (), {"axis": 1}, {}),
    (jnn.log_softmax, (), {"axis": -2}, {}),
    (jnn.conv, (8, (3, 3)), {"strides": 2, "padding": "VALID", "dilation": 1, "feature_group_count": 2,
                              "use_bias": False}, {"features": 8, "kernel_size": (3, 3)}),
    (jnn.conv_transpose, (4, (2,)), {"strides": (2,), "padding": [(1, 0)]}, {"features": 4, "kernel_size": (2,)}),
    (jnn.max_pool, ((2, 2),), {"strides": 1, "padding": "SAME"}, {"window": (2, 2)}),
    (jnn.avg_pool, ((3,),), {"count_include_pad": False}, {"window": (3,), "strides": None}),
    (jnn.batch_norm, (), {"momentum": 0.9, "epsilon": 1e-3, "axis": (0, 1), "use_scale": False,
                          "axis_name": "batch"}, {"use_offset": True}),
    (jnn.layer_norm, (), {"epsilon": 1e-4, "use_offset": False}, {"use_scale": True}),
    (jnn.rms_norm, (), {"epsilon": 1e-3, "use_scale": False}, {}),
    (jnn.group_norm, (4,), {"epsilon": 1e-3}, {"num_groups": 4}),
    (jnn.dropout, (0.2,), {}, {"rate": 0.2}),
    (jnn.spatial_dropout, (0.3,), {}, {"rate": 0.3}),
    (jnn.embedding, (10, 4), {"init": "zeros"}, {"vocab_size": 10, "features": 4, "dtype": None}),
    (jnn.sinusoidal_encoding, (16,), {"base": 100.0}, {"max_len": 16}),
    (jnn.learned_positional_embedding, (None,), {"init": "zeros"}, {"max_len": None}),
    (augment_layer, (FLIP,), {}, {"augmentations": (FLIP,)}),
]


@pytest.mark.parametrize("make, args, kwargs, shown", CASES, ids=[c[0].__name__ for c in CASES])
def test_config_holds_the_hyperparameters_given(make, args, kwargs, shown):
    layer = make(*args, **kwargs, name="mine")
    assert layer.name == "mine" and "name" not in layer.config
    for key, value in {**kwargs, **shown}.items():
        assert layer.config[key] == value, key
    assert make(*args, **kwargs).config == layer.config       # the name is not a hyperparameter


@pytest.mark.parametrize("make", [jnn.flatten, jnn.relu, jnn.sigmoid, jnn.tanh, jnn.step, jnn.softplus, jnn.silu,
                                  jnn.global_avg_pool, jnn.global_max_pool])
def test_layers_without_hyperparameters_have_an_empty_config(make):
    assert dict(make().config) == {}


@pytest.mark.parametrize("build, message", [
    (lambda: jnn.dense(0), "dense: features must be a positive integer, got 0"),
    (lambda: jnn.reshape((0, 3)), "reshape: shape must hold positive integers and at most one -1, got (0, 3)"),
    (lambda: jnn.leaky_relu("0.1"), "leaky_relu: negative_slope must be a finite number, got '0.1'"),
    (lambda: jnn.softmax(axis=1.0), "softmax: axis must be an integer, got 1.0"),
    (lambda: jnn.conv(4, 3, name="c"), "c: kernel_size must be a tuple with one entry per spatial axis, e.g. (3,) "
                                       "for 1-D or (3, 3) for 2-D, got the int 3"),
    (lambda: jnn.conv(4, (3, 3), strides=(1, 2, 1)), "conv: strides must be a positive integer or a tuple of 2 "
                                                     "positive integers (one per spatial axis), got (1, 2, 1)"),
    (lambda: jnn.conv(5, (3, 3), feature_group_count=2),
     "conv: features (5) must be divisible by feature_group_count (2)"),
    (lambda: jnn.conv_transpose(2, (3,), padding=[(1, 1), (1, 1)]),
     "conv_transpose: padding must be 'SAME', 'VALID' or a sequence of 1 (lo, hi) pairs of non-negative integers "
     "(e.g. [(1, 1)]), got [(1, 1), (1, 1)]"),
    (lambda: jnn.max_pool((2, 0)), "max_pool: window must be a non-empty tuple of positive integers, got (2, 0)"),
    (lambda: jnn.avg_pool((2,), count_include_pad=1), "avg_pool: count_include_pad must be True or False, got 1"),
    (lambda: jnn.batch_norm(momentum=2), "batch_norm: momentum must be a number in [0, 1], got 2"),
    (lambda: jnn.batch_norm(axis=()), "batch_norm: axis must be None, an int or a non-empty tuple of ints, got ()"),
    (lambda: jnn.group_norm(0, name="gn"), "gn: num_groups must be a positive integer, got 0"),
    (lambda: jnn.rms_norm(epsilon=0), "rms_norm: epsilon must be a positive number, got 0"),
    (lambda: jnn.dropout(1.0), "dropout: rate is the probability of dropping a unit and must be in [0, 1), got 1.0"),
    (lambda: jnn.embedding(4, 0), "embedding: features must be a positive integer, got 0"),
    (lambda: jnn.sinusoidal_encoding(8, base=1), "sinusoidal_encoding: base must be a number > 1, got 1"),
    (lambda: jnn.learned_positional_embedding(0), "learned_positional_embedding: max_len must be a positive "
                                                  "integer, got 0"),
])
def test_a_bad_hyperparameter_fails_when_built(build, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        build()
