"""Numpy video transforms on uint8 (T, H, W, 3) clips: resizing, cropping, flipping (normalising is on device)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _check_video(video: np.ndarray) -> None:
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape (T, H, W, 3), got shape {video.shape}")


def _crop_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_short_side(video: np.ndarray, size: int) -> np.ndarray:
    """Resizes each frame (bilinear) so its shorter side is `size`, keeping the aspect ratio."""
    _check_video(video)
    t, h, w, _ = video.shape
    if min(h, w) == size:
        return video
    if h <= w:
        new_h, new_w = size, max(1, round(w * size / h))
    else:
        new_h, new_w = max(1, round(h * size / w)), size
    out = np.empty((t, new_h, new_w, 3), dtype=np.uint8)
    for i in range(t):
        out[i] = np.asarray(Image.fromarray(video[i]).resize((new_w, new_h), Image.Resampling.BILINEAR))
    return out


def _check_crop(video: np.ndarray, crop_h: int, crop_w: int) -> None:
    _check_video(video)
    h, w = video.shape[1:3]
    if crop_h > h or crop_w > w:
        raise ValueError(
            f"crop {crop_h}x{crop_w} is larger than the {h}x{w} frames; resize the short side "
            "to at least the crop size first"
        )


def random_crop(video: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crops the same random `size` (int or (h, w)) window from every frame."""
    crop_h, crop_w = _crop_size(size)
    _check_crop(video, crop_h, crop_w)
    h, w = video.shape[1:3]
    top = int(rng.integers(0, h - crop_h + 1))
    left = int(rng.integers(0, w - crop_w + 1))
    return video[:, top : top + crop_h, left : left + crop_w]


def center_crop(video: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crops the central `size` (int or (h, w)) window from every frame."""
    crop_h, crop_w = _crop_size(size)
    _check_crop(video, crop_h, crop_w)
    h, w = video.shape[1:3]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return video[:, top : top + crop_h, left : left + crop_w]


def random_flip(video: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Flips every frame left-right, together, with probability `p`."""
    _check_video(video)
    if rng.random() < p:
        return video[:, :, ::-1]
    return video
