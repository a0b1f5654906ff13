"""Pixels on the device: a decoded picture's YUV 4:2:0 planes to the RGB crop a model reads.

The host decodes and sends the planes of a crop box's region as the decoder gives them (uint8; 4:2:0 is half the bytes
of RGB); the jitted step converts and resamples them here. `yuv420_to_rgb` is libswscale's unscaled conversion
(`VideoFrame.to_ndarray(format="rgb24")`): each chroma sample stands for its 2 x 2 pixels, the BT.601 or BT.709
matrix, limited (16-235 / 16-240) or full range. `crop_resize` resamples a box of fractional extent to the output
size as PIL's antialiased bilinear resize with a box does (`transforms.apply_crop`): a triangle filter widened by
the downscale factor (`jax.image.scale_and_translate`), then the flip.
"""

from __future__ import annotations

import functools

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


# The colour matrices in the order a batch names them (`colour[0]`): decode.colour_of's names, as indices.
MATRIX_NAMES = tuple(MATRICES)


def resample_weights(lo: jax.Array, hi: jax.Array, valid: jax.Array, size: int, out_size: int) -> jax.Array:
    """(out_size, size) float32: PIL's antialiased bilinear resample of the extent [lo, hi) of an axis of `size`
    pixels, of which the first `valid` are the picture (the rest padding), as one matrix. Output pixel i is centred
    at lo + (i + 0.5) * scale; input pixel x weighs tri((x + 0.5 - centre) / max(scale, 1)), the triangle widened by
    the downscale factor, normalised over the picture's pixels (PIL's `precompute_coeffs`, which clips the
    filter's reach at the picture's edge)."""
    scale = (hi - lo) / out_size
    stretch = jnp.maximum(scale, 1.0)
    centre = lo + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    x = jnp.arange(size, dtype=jnp.float32) + 0.5
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(x[None, :] - centre[:, None]) / stretch)
    weights = jnp.where(jnp.arange(size)[None, :] < valid, weights, 0.0)
    return weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def _chroma_weights(luma: jax.Array, chroma_size: int) -> jax.Array:
    """A luma resample matrix (..., out, 2n) as the matrix of the chroma plane (..., out, chroma_size), each chroma
    sample standing for its two luma pixels (libswscale's unscaled 4:2:0 conversion): the pair's weights summed."""
    padded = jnp.pad(luma, [(0, 0)] * (luma.ndim - 1) + [(0, 2 * chroma_size - luma.shape[-1])])
    return padded.reshape(*luma.shape[:-1], chroma_size, 2).sum(-1)


def crops_from_planes(y: jax.Array, u: jax.Array, v: jax.Array, box: jax.Array, flip: jax.Array, valid: jax.Array,
                      colour: jax.Array, out_height: int, out_width: int, dtype=jnp.float32) -> jax.Array:
    """(k, T, out_height, out_width, 3) float32 RGB in [0, 255]: k crops of one clip's YUV 4:2:0 planes, as the host
    path cuts them (`decode._cropped_rgb`: libswscale's conversion, PIL's antialiased resize of the box, the flip).

    `y` (T, H, W) and `u`, `v` (T, H / 2, W / 2) uint8 hold a picture region of `valid` = (rows, columns) pixels at
    their top-left, padding beyond; `box` (k, 4) float32 is each crop's (top, left, bottom, right) edges in the
    region's pixels, `flip` (k,) bool its left-right flip, `colour` (2,) int32 the matrix (an index of
    `MATRIX_NAMES`) and full range (1) or limited (0). Each plane is resampled by two matrix products (the flip
    folded into the columns' matrix; chroma through the luma matrices with each sample's two pixels summed), then
    converted: the conversion is affine, so this equals converting then resampling except where the host's
    conversion clips an out-of-gamut pixel before resampling it. `dtype` is the products' operands (float32, or
    bfloat16 on an accelerator: the 8-bit samples are exact in it, the weights and the rows' sums rounded to 8
    bits), each accumulated in float32. The rows are resampled first: the columns' product is then a batched
    product over (crop, frame) whose result is already in the output's layout."""
    _, height, width = y.shape
    box = box.astype(jnp.float32)
    rows = jax.vmap(lambda b: resample_weights(b[0], b[2], valid[0], height, out_height))(box)
    cols = jax.vmap(lambda b: resample_weights(b[1], b[3], valid[1], width, out_width))(box)
    cols = jnp.where(flip[:, None, None], cols[:, ::-1], cols)
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None

    def resampled(plane, rows, cols):  # (T, h, w) -> (k, T, out_height, out_width)
        down = jnp.einsum("kqh,thw->ktqw", rows.astype(dtype), plane.astype(dtype), precision=precision,
                          preferred_element_type=jnp.float32)
        return jnp.einsum("ktqw,kpw->ktqp", down.astype(dtype), cols.astype(dtype), precision=precision,
                          preferred_element_type=jnp.float32)

    luma = resampled(y, rows, cols)
    chroma_rows, chroma_cols = _chroma_weights(rows, u.shape[1]), _chroma_weights(cols, u.shape[2])
    cb, cr = resampled(u, chroma_rows, chroma_cols) - 128.0, resampled(v, chroma_rows, chroma_cols) - 128.0
    kr = jnp.asarray([MATRICES[name][0] for name in MATRIX_NAMES], jnp.float32)[colour[0]]
    kb = jnp.asarray([MATRICES[name][1] for name in MATRIX_NAMES], jnp.float32)[colour[0]]
    kg = 1.0 - kr - kb
    full = colour[1] > 0
    luma = jnp.where(full, luma / 255.0, (luma - 16.0) / 219.0)
    cb, cr = jnp.where(full, cb / 255.0, cb / 224.0), jnp.where(full, cr / 255.0, cr / 224.0)
    red = luma + 2.0 * (1.0 - kr) * cr
    blue = luma + 2.0 * (1.0 - kb) * cb
    green = luma - (2.0 * kb * (1.0 - kb) * cb + 2.0 * kr * (1.0 - kr) * cr) / kg
    return jnp.clip(jnp.stack([red, green, blue], axis=-1) * 255.0, 0.0, 255.0)


def batch_crops(batch: dict, out_height: int, out_width: int, dtype=jnp.float32) -> jax.Array:
    """(B * k, T, out_height, out_width, 3) float32 RGB of a device-pixel batch (`PLANE_KEYS`, see
    `vidjax.data.pipeline`): every video's k crops, rows in the order the host path flattens repeated samples
    (video-major); `dtype` as `crops_from_planes`."""
    out = jax.vmap(functools.partial(crops_from_planes, out_height=out_height, out_width=out_width, dtype=dtype))(
        batch["planes_y"], batch["planes_u"], batch["planes_v"], batch["crop_box"], batch["crop_flip"],
        batch["planes_valid"], batch["planes_colour"])
    return out.reshape(-1, *out.shape[2:])


# The keys of a device-pixel training batch, which stand in for "video": the planes (B, T, H, W) and (B, T, H / 2,
# W / 2) uint8, every video's crops (B, k, 4) float32 and flips (B, k) bool, its picture's size in the planes (B, 2)
# and colour (B, 2) int32.
PLANE_KEYS = ("planes_y", "planes_u", "planes_v", "crop_box", "crop_flip", "planes_valid", "planes_colour")
