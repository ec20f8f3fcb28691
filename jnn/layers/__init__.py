"""Layer families, one module each; every public name is re-exported from ``jnn``."""
from jnn.layers.activations import (elu, gelu, heaviside, leaky_relu, log_softmax, relu, sigmoid,
                                    silu, softmax, softplus, step, swish, tanh)
from jnn.layers.basic import dense, flatten, identity, reshape
from jnn.layers.dropout import dropout, spatial_dropout
from jnn.layers.norm import batch_norm, group_norm, layer_norm, rms_norm
