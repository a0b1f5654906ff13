"""Pixels on the device: a decoded picture's YUV 4:2:0 planes to the RGB crop a model reads.

The host decodes and sends the planes of a crop box's region as the decoder gives them (uint8; 4:2:0 is half the bytes
of RGB); the jitted step converts and resamples them here. `yuv420_to_rgb` is libswscale's unscaled conversion
(`VideoFrame.to_ndarray(format="rgb24")`): each chroma sample stands for its 2 x 2 pixels, the BT.601 or BT.709
matrix, limited (16-235 / 16-240) or full range. `crop_resize` resamples a box of fractional extent to the output
size as PIL's antialiased bilinear resize with a box does (`transforms.apply_crop`): a triangle filter widened by
the downscale factor (`jax.image.scale_and_translate`), then the flip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# (Kr, Kb) of each colour matrix; Kg = 1 - Kr - Kb.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def yuv420_to_rgb(y: jax.Array, u: jax.Array, v: jax.Array, *, matrix: str = "bt601",
                  full_range: bool = False) -> jax.Array:
    """float32 RGB (..., H, W, 3) in [0, 255] from uint8 planes: luma `y` (..., H, W), chroma `u` and `v`
    (..., ceil(H / 2), ceil(W / 2))."""
    if matrix not in MATRICES:
        raise ValueError(f"matrix={matrix!r}; choose one of {', '.join(MATRICES)}.")
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    height, width = y.shape[-2:]

    def full(plane):
        plane = jnp.repeat(jnp.repeat(plane, 2, axis=-2), 2, axis=-1)
        return plane[..., :height, :width].astype(jnp.float32)

    luma, cb, cr = y.astype(jnp.float32), full(u) - 128.0, full(v) - 128.0
    if full_range:
        luma, cb, cr = luma / 255.0, cb / 255.0, cr / 255.0
    else:
        luma, cb, cr = (luma - 16.0) / 219.0, cb / 224.0, cr / 224.0
    red = luma + 2.0 * (1.0 - kr) * cr
    blue = luma + 2.0 * (1.0 - kb) * cb
    green = luma - (2.0 * kb * (1.0 - kb) * cb + 2.0 * kr * (1.0 - kr) * cr) / kg
    return jnp.clip(jnp.stack([red, green, blue], axis=-1) * 255.0, 0.0, 255.0)


def crop_resize(rgb: jax.Array, box: jax.Array, out_height: int, out_width: int,
                flip: jax.Array | bool = False) -> jax.Array:
    """(..., out_height, out_width, C) float: the box (top, left, bottom, right), fractional pixel edges in `rgb`
    (..., H, W, C), resampled to the output size with an antialiased triangle filter, then flipped left-right where
    `flip`. `box` and `flip` may be traced (one per sample under vmap)."""
    box = jnp.asarray(box, jnp.float32)
    scale = jnp.stack([out_height / (box[2] - box[0]), out_width / (box[3] - box[1])])
    translation = -box[:2] * scale
    shape = (*rgb.shape[:-3], out_height, out_width, rgb.shape[-1])
    spatial = (rgb.ndim - 3, rgb.ndim - 2)
    out = jax.image.scale_and_translate(rgb, shape, spatial, scale, translation, method="linear", antialias=True)
    return jnp.where(flip, jnp.flip(out, axis=-2), out)
