"""A Vision Transformer classifier built with :func:`jnn.serial` from encoder blocks."""
from __future__ import annotations

import jax.numpy as jnp

from jnn.combinators import named, serial, stateless
from jnn.core import Layer, shape_of, layer_error
from jnn import _checks as checks
from jnn.layers.basic import dense
from jnn.layers.dropout import dropout
from jnn.layers.norm import layer_norm
from jnn.layers.positional import learned_positional_embedding
from jnn.layers.transformer import encoder_block

__all__ = ["vit_classifier"]


def _patchify(patch_size: tuple[int, int]) -> Layer:
    ph, pw = patch_size

    def fn(x):
        if x.ndim != 4 or x.shape[1] % ph or x.shape[2] % pw:
            raise layer_error("patchify", f"expected images [B, H, W, C] with H divisible by {ph} and W by "
                                          f"{pw}, got shape {tuple(x.shape)}")
        b, h, w, c = x.shape
        x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)

    return stateless("patchify", fn)


def _class_token() -> Layer:
    def init(key, example):
        x = shape_of(example)
        return {"token": jnp.zeros((x.shape[-1],), x.dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        token = jnp.broadcast_to(params["token"].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([token, x], axis=1), state

    return Layer(init, apply, "class_token", None)


@checks.declare(patch_size=checks.spatial(2), num_layers=checks.positive_int, num_heads=checks.positive_int,
                features=checks.positive_int, mlp_dim=checks.positive_int, num_classes=checks.positive_int,
                pool=checks.one_of("cls", "mean"), dropout_rate=checks.rate)
def vit_classifier(patch_size, num_layers: int, num_heads: int, features: int, mlp_dim: int,
                   num_classes: int, *, pool: str = "cls", dropout_rate: float = 0.0,
                   name: str | None = None) -> Layer:
    """A Vision Transformer ``[B, H, W, C] -> [B, num_classes]``: patches -> ``dense(features)`` -> class
    token (``pool="cls"``) -> learned positions -> encoder blocks -> layer norm -> class token or mean
    (``"mean"``) -> ``dense(num_classes)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.nets import vit_classifier
      >>> vit = vit_classifier(7, num_layers=1, num_heads=2, features=16, mlp_dim=32, num_classes=10)
      >>> params, state = vit.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> vit.apply(params, state, jnp.zeros((4, 28, 28, 1)))[0].shape
      (4, 10)
    """
    label = name or "vit_classifier"
    checks.divides(label, "num_heads", num_heads, features, "features")
    pooling = (lambda x: x[:, 0]) if pool == "cls" else (lambda x: jnp.mean(x, axis=1))
    layers = [named("patch_embedding", serial(_patchify(patch_size), dense(features)))]
    layers += [named("class_token", _class_token())] if pool == "cls" else []
    layers += [named("position", learned_positional_embedding(None))]
    layers += [dropout(dropout_rate)] if dropout_rate else []
    layers += [encoder_block(num_heads, mlp_dim, dropout_rate) for _ in range(num_layers)]
    layers += [named("final_norm", layer_norm()), stateless(f"{pool}_pool", pooling),
               named("head", dense(num_classes))]
    return serial(*layers, name=name)
