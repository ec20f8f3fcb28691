"""On-device image augmentations ``(key, images [B, H, W, C]) -> images``, random per example."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jnn import _checks as checks
from jnn import initializers
from jnn.core import Layer, layer_error, shape_of

__all__ = ["translate", "affine", "random_translate", "random_crop", "random_affine",
           "horizontal_flip", "random_erasing", "pipeline", "augment_layer"]

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]


def _pair(minimum: int = 0):
    """A rule: an int >= ``minimum`` or a pair of them, returned as a pair."""
    def rule(label, what, value):
        pair = (value, value) if checks.is_integer(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
        checks.require(len(pair) == 2 and all(checks.is_integer(v) and v >= minimum for v in pair), label,
                       f"{what} must be an int >= {minimum} or a pair of them, got {value!r}")
        return tuple(map(int, pair))
    return rule


def _batched(where: str, per_image: Callable) -> Augmentation:
    """``(key, images)`` -> ``per_image(key_i, image_i)`` for every example, with shape checks."""

    def augment(key, images):
        checks.require(key is not None, where, "needs a key; call it as augment(jax.random.key(...), images)")
        checks.require(images.ndim == 4, where, f"expected images of shape [B, H, W, C], got {tuple(images.shape)}")
        return jax.vmap(per_image)(jax.random.split(key, images.shape[0]), images)

    augment.__name__ = augment.__qualname__ = where
    return augment


def _int_below(u, n):
    """Integers uniform in ``[0, n)`` from uniforms ``u`` in ``[0, 1)`` (``n`` may be traced)."""
    n = jnp.asarray(n).astype(u.dtype)
    return jnp.clip(jnp.floor(u * n), 0, n - 1).astype(jnp.int32)


def _check_image(where: str, image) -> None:
    checks.require(jnp.ndim(image) == 3, where, f"expected one image of shape [H, W, C] (vmap it over a batch), "
                   f"got shape {tuple(jnp.shape(image))}")


def translate(image: jax.Array, shift) -> jax.Array:
    """One image ``[H, W, C]`` shifted by ``shift = (dy, dx)`` pixels (may be traced), zero-filled:
    ``out[i, j] = image[i - dy, j - dx]`` (like ``np.roll`` without wrapping).

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> image = jnp.arange(1.0, 5.0).reshape(2, 2, 1)
      >>> jnn.data.augment.translate(image, (0, 1))[..., 0].tolist()
      [[0.0, 1.0], [0.0, 3.0]]
    """
    _check_image("translate", image)
    try:
        pair = jnp.asarray(shift)   # a tuple of traced ints too
    except (TypeError, ValueError):   # a string; None
        pair = None
    checks.require(pair is not None and pair.shape == (2,) and jnp.issubdtype(pair.dtype, jnp.number),
                   "translate", f"shift must be a pair (dy, dx), got {shift!r}")
    dy, dx = pair.astype(jnp.int32)
    h, w = image.shape[:2]
    rolled = jnp.roll(image, (dy, dx), axis=(0, 1))
    rows, cols = jnp.arange(h, dtype=jnp.int32) - dy, jnp.arange(w, dtype=jnp.int32) - dx
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    return jnp.where(inside[:, :, None], rolled, jnp.zeros_like(rolled))


def affine(image: jax.Array, rotation_degrees=0.0, scale=1.0, shear_degrees=0.0) -> jax.Array:
    """One image ``[H, W, C]`` rotated (counter-clockwise as displayed), scaled (``> 1`` zooms in) and
    sheared about its centre; bilinear, zero-filled; arguments may be traced.

    Example:
      >>> import jax.numpy as jnp, jnn
      >>> image = jnp.arange(9.0).reshape(3, 3, 1)
      >>> bool(jnp.allclose(jnn.data.augment.affine(image), image))
      True
    """
    _check_image("affine", image)
    h, w = image.shape[:2]
    dtype = initializers.param_dtype(image.dtype)  # coordinates in float32 (float64 for float64)
    theta = jnp.deg2rad(jnp.asarray(rotation_degrees, dtype))
    shear = jnp.tan(jnp.deg2rad(jnp.asarray(shear_degrees, dtype)))
    scale = jnp.asarray(scale, dtype)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y, x = jnp.meshgrid(jnp.arange(h, dtype=dtype) - cy, jnp.arange(w, dtype=dtype) - cx, indexing="ij")
    y, x = y / scale, x / scale + shear * y / scale
    src_y = jnp.cos(theta) * y + jnp.sin(theta) * x + cy
    src_x = -jnp.sin(theta) * y + jnp.cos(theta) * x + cx
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [src_y, src_x], order=1,
                                                               mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image.astype(dtype)).astype(image.dtype)


@checks.declare(max_shift=_pair())
def random_translate(max_shift: int | tuple[int, int]) -> Augmentation:
    """Shifts each image by whole pixels uniform in ``[-max_shift, max_shift]`` per axis, zero-filled.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> jnn.data.augment.random_translate(2)(jax.random.key(0), jnp.ones((4, 8, 8, 1))).shape
      (4, 8, 8, 1)
    """
    my, mx = max_shift

    def one(key, image):
        u = jax.random.uniform(key, (2,))
        return translate(image, (_int_below(u[0], 2 * my + 1) - my, _int_below(u[1], 2 * mx + 1) - mx))

    return _batched("random_translate", one)


@checks.declare(size=_pair(1), padding=_pair())
def random_crop(size: tuple[int, int], padding: int | tuple[int, int] = 0) -> Augmentation:
    """Zero-pads each image by ``padding``, then cuts a random ``size = (h, w)`` window: ``[B, h, w, C]``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> jnn.data.augment.random_crop((28, 28), padding=2)(jax.random.key(0), jnp.ones((4, 28, 28, 1))).shape
      (4, 28, 28, 1)
    """
    py, px = padding

    def one(key, image):
        padded = jnp.pad(image, ((py, py), (px, px), (0, 0)))
        limits = (padded.shape[0] - size[0], padded.shape[1] - size[1])
        checks.require(min(limits) >= 0, "random_crop", f"size {size} is larger than the padded image "
                       f"{padded.shape[:2]} (image {image.shape[:2]}, padding {(py, px)})")
        u = jax.random.uniform(key, (2,))
        top, left = _int_below(u[0], limits[0] + 1), _int_below(u[1], limits[1] + 1)
        return jax.lax.dynamic_slice(padded, (top, left, jnp.int32(0)), (*size, image.shape[2]))

    return _batched("random_crop", one)


@checks.declare(max_rotation_degrees=checks.between(0, 180), max_scale=checks.between(0, 0.99),
                max_shear=checks.between(0, 80))
def random_affine(max_rotation_degrees: float, *, max_scale: float = 0.0, max_shear: float = 0.0) -> Augmentation:
    """Random rotation (degrees), scale (``1 ± max_scale``) and shear (degrees) per image (:func:`affine`).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> jnn.data.augment.random_affine(10, max_scale=0.1)(jax.random.key(0), jnp.ones((4, 28, 28, 1))).shape
      (4, 28, 28, 1)
    """
    def one(key, image):
        u = jax.random.uniform(key, (3,), initializers.param_dtype(image.dtype), -1.0, 1.0)
        return affine(image, u[0] * max_rotation_degrees, 1.0 + u[1] * max_scale, u[2] * max_shear)

    return _batched("random_affine", one)


@checks.declare(p=checks.between(0, 1))
def horizontal_flip(p: float = 0.5) -> Augmentation:
    """Mirrors each image left-right with probability ``p`` (not for digits or text).

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> images = jnp.arange(4.0).reshape(1, 1, 4, 1)
      >>> jnn.data.augment.horizontal_flip(p=1.0)(jax.random.key(0), images)[0, 0, :, 0].tolist()
      [3.0, 2.0, 1.0, 0.0]
    """
    return _batched("horizontal_flip", lambda key, image: jnp.where(jax.random.uniform(key) < p, image[:, ::-1], image))


@checks.declare(p=checks.between(0, 1))
def random_erasing(p: float = 0.5, scale: tuple[float, float] = (0.02, 0.2),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> Augmentation:
    """With probability ``p``, sets one random rectangle of each image to ``value``: area fraction
    uniform in ``scale``, aspect ``h / w`` log-uniform in ``ratio``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> erase = jnn.data.augment.random_erasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0))
      >>> erase(jax.random.key(0), jnp.ones((2, 8, 8, 1))).sum(axis=(1, 2, 3)).tolist()
      [48.0, 48.0]
    """
    lo = checks.between(0, 1)("random_erasing", "scale[0]", scale[0])
    hi = checks.between(lo, 1)("random_erasing", "scale[1]", scale[1])
    r_lo, r_hi = ratio
    checks.require(0 < r_lo <= r_hi, "random_erasing", f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio!r}")

    def one(key, image):
        h, w = image.shape[:2]
        u = jax.random.uniform(key, (5,))
        area = (lo + (hi - lo) * u[1]) * (h * w)
        aspect = jnp.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[2])
        eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
        ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
        top, left = _int_below(u[3], h - eh + 1), _int_below(u[4], w - ew + 1)
        rows, cols = jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32)
        box = ((rows >= top) & (rows < top + eh))[:, None] & ((cols >= left) & (cols < left + ew))[None, :]
        return jnp.where(box[:, :, None] & (u[0] < p), jnp.asarray(value, image.dtype), image)

    return _batched("random_erasing", one)


def pipeline(*augmentations: Augmentation) -> Augmentation:
    """The augmentations applied in order, each with its own key split from the one given.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jnn.data.augment import pipeline, random_crop, horizontal_flip
      >>> augment = pipeline(random_crop((32, 32), padding=4), horizontal_flip())
      >>> augment(jax.random.key(0), jnp.zeros((2, 32, 32, 3))).shape
      (2, 32, 32, 3)
    """
    return _pipeline("pipeline", augmentations)


def _pipeline(where: str, augmentations) -> Augmentation:
    checks.require(augmentations, where, "expected at least one augmentation, got none")
    for a in augmentations:
        checks.require(callable(a), where, f"expected augmentations (key, images) -> images, got "
                       f"{type(a).__name__}", TypeError)

    def augment(key, images):
        checks.require(key is not None, "pipeline", "needs a key; call it as augment(jax.random.key(...), images)")
        for a, k in zip(augmentations, jax.random.split(key, len(augmentations))):
            images = a(k, images)
        return images

    return augment


@checks.declare()
def augment_layer(*augmentations: Augmentation, name: str | None = None) -> Layer:
    """A layer applying ``pipeline(*augmentations)`` when ``train=True`` (needs ``key=``), else the identity.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jnn.data.augment import augment_layer, random_translate
      >>> model = jnn.serial(augment_layer(random_translate(2)), jnn.flatten(), jnn.dense(10))
      >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> model.apply(params, state, jnp.ones((4, 28, 28, 1)), key=jax.random.key(1), train=True)[0].shape
      (4, 10)
    """
    label = name or "augment"
    augment = _pipeline(label, augmentations)

    def init(key, example):
        checks.layer_input(label, shape_of(example), "images of shape [B, H, W, C]", ndim=4)
        return {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if not checks.flag(label, "train", train):
            return x, state
        if key is None:
            raise layer_error(label, "train=True needs randomness: pass key=jax.random.key(...) to apply")
        return augment(key, x), state

    return Layer(init, apply, "augment", name)
