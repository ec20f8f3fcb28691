"""Layer families, one module each; every public name is re-exported from ``jnn``."""
from jnn.layers.activations import (elu, gelu, heaviside, leaky_relu, log_softmax, relu, sigmoid,
                                    silu, softmax, softplus, step, swish, tanh)
from jnn.layers.basic import dense, flatten, identity, reshape
from jnn.layers.dropout import dropout, spatial_dropout
from jnn.layers.norm import batch_norm, group_norm, layer_norm, rms_norm
from jnn.layers.conv import conv, conv_transpose
from jnn.layers.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool
from jnn.layers.cells import Cell, gru_cell, lstm_cell, rnn_cell
from jnn.layers.embedding import embedding
from jnn.layers.recurrent import bidirectional, recurrent
from jnn.layers.attention import multi_head_attention
from jnn.layers.positional import learned_positional_embedding, sinusoidal_encoding
from jnn.layers.transformer import decoder_block, encoder_block

__all__ = ["elu", "gelu", "heaviside", "leaky_relu", "log_softmax", "relu", "sigmoid", "silu", "softmax",
           "softplus", "step", "swish", "tanh", "dense", "flatten", "identity", "reshape", "dropout",
           "spatial_dropout", "batch_norm", "group_norm", "layer_norm", "rms_norm", "conv", "conv_transpose",
           "avg_pool", "global_avg_pool", "global_max_pool", "max_pool", "Cell", "gru_cell", "lstm_cell",
           "rnn_cell", "embedding", "bidirectional", "recurrent", "multi_head_attention",
           "learned_positional_embedding", "sinusoidal_encoding", "decoder_block", "encoder_block"]
