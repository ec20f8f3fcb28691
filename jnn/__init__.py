"""jnn: neural networks as pure functions over parameter pytrees, for JAX.

A model is a :class:`jnn.Layer`, a pair of pure functions ``init`` and ``apply`` (:data:`jnn.CONTRACT`):

  >>> import jax, jax.numpy as jnp, jnn
  >>> model = jnn.serial(jnn.flatten(), jnn.dense(128), jnn.relu(), jnn.dense(10))
  >>> params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  >>> model.apply(params, state, jnp.zeros((4, 28, 28, 1)))[0].shape
  (4, 10)
"""
from jnn import checks, convert, data, export, generate, initializers, io, losses, metrics, nets, parallel, precision
from jnn import compare, display, doctor, hub, lora, quantize, train, tree
from jnn.combinators import composite, fan_out, heads, identity, merge, named, residual, select, serial, stateless, towers
from jnn.core import CONTRACT, Children, Config, Layer, apply_child, output_shape
from jnn.inspection import capture, get
from jnn.layers import (Cell, avg_pool, batch_norm, bidirectional, conv, conv_transpose, decoder_block, dense, dropout,
                        elu, embedding, encoder_block, flatten, gelu, global_avg_pool, global_max_pool, group_norm,
                        gru_cell, heaviside, layer_norm, leaky_relu, learned_positional_embedding, log_softmax,
                        lstm_cell, max_pool, multi_head_attention, recurrent, relu, reshape, rms_norm, rnn_cell,
                        sigmoid, silu, sinusoidal_encoding, softmax, softplus, spatial_dropout, step, swish, tanh)
from jnn.layers.remat import remat
from jnn.layers.repeat import repeat
from jnn.nets import decoder_lm, encoder_decoder, residual_block, resnet, vit_classifier
from jnn.summary import summary

__version__ = "0.1.0"

__all__ = [
    # core
    "Layer", "composite", "serial", "fan_out", "residual", "named", "output_shape", "stateless", "summary",
    "Children", "Config", "apply_child", "CONTRACT", "get", "capture", "towers", "heads", "select", "merge",
    # layers
    "dense", "flatten", "reshape", "identity",
    "step", "heaviside", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu",
    "swish", "softmax", "log_softmax",
    "residual_block", "resnet",
    "multi_head_attention", "learned_positional_embedding", "sinusoidal_encoding", "encoder_block",
    "decoder_block", "decoder_lm", "vit_classifier", "encoder_decoder", "repeat", "remat",
    "Cell", "rnn_cell", "lstm_cell", "gru_cell", "recurrent", "bidirectional", "embedding",
    "conv", "conv_transpose", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool",
    "dropout", "spatial_dropout", "batch_norm", "layer_norm", "rms_norm", "group_norm",
    # modules
    "checks", "data", "generate", "initializers", "io", "nets", "parallel", "precision", "losses", "metrics", "train",
    "tree", "convert", "export", "compare", "doctor", "display", "hub", "lora", "quantize",
]
