"""Residual convolutional networks built from the layer algebra (``serial`` + ``fan_out``)."""
from __future__ import annotations

from typing import Sequence

from jnn import _checks as checks
from jnn.combinators import fan_out, identity, serial
from jnn.core import Layer
from jnn.layers.activations import relu
from jnn.layers.basic import dense
from jnn.layers.conv import conv
from jnn.layers.norm import batch_norm
from jnn.layers.pooling import global_avg_pool

__all__ = ["residual_block", "resnet"]


@checks.declare(features=checks.positive_int, strides=checks.positive_int, project=checks.flag)
def residual_block(features: int, *, strides: int = 1, project: bool = False, name: str | None = None) -> Layer:
    """``relu(main(x) + shortcut(x))``, ``main = conv-bn-relu-conv-bn`` (3x3): ``[B, H, W, C] -> [B, H /
    strides, W / strides, features]``; the shortcut is the identity, or (``project``) a 1x1 conv + batch norm.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.residual_block(8, strides=2, project=True)
      >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 8, 8, 4)))
      >>> block.apply(params, state, jnp.zeros((2, 8, 8, 4)))[0].shape
      (2, 4, 4, 8)
    """
    main = serial(conv(features, (3, 3), strides=strides, use_bias=False, w_init="he_normal"), batch_norm(),
                  relu(), conv(features, (3, 3), use_bias=False, w_init="he_normal"), batch_norm(), name="main")
    shortcut = (serial(conv(features, (1, 1), strides=strides, use_bias=False), batch_norm(), name="shortcut")
                if project else identity(name="shortcut"))
    return serial(fan_out(main, shortcut, merge="add", name="sum"), relu(), name=name)._replace(kind="residual_block")


@checks.declare(num_classes=checks.positive_int, stage_features=checks.stages, blocks_per_stage=checks.positive_int)
def resnet(num_classes: int, *, stage_features: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1,
           name: str | None = None) -> Layer:
    """A small ResNet ``[B, H, W, C] -> [B, num_classes]``: conv stem, one stage per ``stage_features``
    entry (each after the first halves the resolution), global average pooling, dense head.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> model = jnn.resnet(10, stage_features=(8, 16))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> model.apply(params, state, jnp.zeros((3, 28, 28, 1)))[0].shape
      (3, 10)
    """
    layers = [conv(stage_features[0], (3, 3), use_bias=False, w_init="he_normal"), batch_norm(), relu()]
    previous = stage_features[0]
    for stage, features in enumerate(stage_features):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            layers.append(residual_block(features, strides=strides, project=strides > 1 or features != previous))
            previous = features
    return serial(*layers, global_avg_pool(), dense(num_classes), name=name)
