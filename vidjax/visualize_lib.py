"""Masked-video reconstruction figures and the token-mask and un-normalisation helpers they need (numpy + PIL)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidjax.patches import grid_shape, patchify, unpatchify

_MIN_CELL_HEIGHT = 96
_PAD = 4
_ROW_LABELS = ("original", "masked input", "reconstruction")


def reconstruct(original: np.ndarray, pred: np.ndarray, masked_ids: np.ndarray, tubelet: int, patch: int,
                norm_pix: bool = True, eps: float = 1e-6) -> np.ndarray:
    """Video (T, H, W, C) in [0, 1]: visible patches from `original`, masked ones from the model's `pred`.

    `pred` (M, tubelet*patch*patch*C) holds predictions for the tokens `masked_ids`. With `norm_pix` the
    predictions are normalised patches, mapped back with the ground-truth patch mean and (unbiased) std, the
    VideoMAE reference's visualisation; callers should say so wherever the figure is shown.
    """
    t, h, w, c = original.shape
    tokens = patchify(np.asarray(original, np.float32), tubelet, patch)
    tokens = tokens.reshape(tokens.shape[0], -1, c)
    pred = np.asarray(pred, np.float32).reshape(len(masked_ids), -1, c)
    if norm_pix:
        mean = tokens.mean(axis=1, keepdims=True)[masked_ids]
        std = tokens.std(axis=1, ddof=1, keepdims=True)[masked_ids]
        pred = pred * (std + eps) + mean
    tokens[masked_ids] = pred
    return np.clip(unpatchify(tokens.reshape(tokens.shape[0], -1), tubelet, patch, t, h, w), 0.0, 1.0)


def mask_video(
    video: np.ndarray, mask_thw: np.ndarray, tubelet: int, patch: int, fill: float = 0.5
) -> np.ndarray:
    """Returns a copy of video (T, H, W, C) with the patches where `mask_thw` is True set to grey.

    `mask_thw` is boolean over tokens, shaped (T // tubelet, H // patch, W // patch); `fill` is
    in [0, 1] pixel units (scaled to 0..255 for uint8 video).
    """
    grid = grid_shape(video.shape[:3], tubelet, patch)
    mask_thw = np.asarray(mask_thw, dtype=bool)
    if mask_thw.shape != grid:
        raise ValueError(f"mask of shape {mask_thw.shape} does not match the token grid {grid}")
    pixel_mask = mask_thw.repeat(tubelet, 0).repeat(patch, 1).repeat(patch, 2)
    out = video.copy()
    out[pixel_mask] = round(fill * 255) if video.dtype == np.uint8 else fill
    return out


def _to_uint8(video: np.ndarray, name: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, H, W, 3), got {video.shape}")
    if video.dtype == np.uint8:
        return video
    # Reconstructions overshoot [0, 1]; clip rather than wrap around.
    return (np.clip(video.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def reconstruction_figure(
    original: np.ndarray,
    masked: np.ndarray,
    reconstruction: np.ndarray,
    path: str | os.PathLike,
    frames: int = 4,
    title: str | None = None,
) -> None:
    """Writes a PNG grid: rows original / masked input / reconstruction, `frames` columns.

    Inputs are (T, H, W, 3), uint8 or float in [0, 1], all of the same shape. Columns are
    evenly spaced frames (at most T), each cell upscaled (nearest) to at least 96 px tall.
    The PNG is written to `path + ".tmp"` and renamed, so `path` is never a partial file.
    """
    videos = [
        _to_uint8(v, name)
        for v, name in zip((original, masked, reconstruction), ("original", "masked", "reconstruction"), strict=False)
    ]
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"original, masked and reconstruction must share one shape, got {shapes}")
    t, h, w, _ = videos[0].shape
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    columns = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    scale = max(1, math.ceil(_MIN_CELL_HEIGHT / h))
    cell_h, cell_w = h * scale, w * scale

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(measure, label, font)[0] for label in _ROW_LABELS) + 2 * _PAD
    line_h = max(_text_size(measure, text, font)[1] for text in (*_ROW_LABELS, "frame 0")) + 2 * _PAD
    title_h = line_h if title else 0
    width = label_w + len(columns) * (cell_w + _PAD) + _PAD
    height = title_h + line_h + len(videos) * (cell_h + _PAD) + _PAD

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((_PAD, _PAD), title, fill="black", font=font)
    top = title_h + line_h
    for col, frame_index in enumerate(columns):
        draw.text((label_w + col * (cell_w + _PAD), title_h + _PAD), f"frame {frame_index}",
                  fill="black", font=font)
    for row, (label, video) in enumerate(zip(_ROW_LABELS, videos, strict=False)):
        y = top + row * (cell_h + _PAD)
        label_h = _text_size(draw, label, font)[1]
        draw.text((_PAD, y + (cell_h - label_h) // 2), label, fill="black", font=font)
        for col, frame_index in enumerate(columns):
            cell = video[frame_index].repeat(scale, 0).repeat(scale, 1)
            image.paste(Image.fromarray(cell), (label_w + col * (cell_w + _PAD), y))

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = path + ".tmp"
    try:
        image.save(tmp_path, format="PNG")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
