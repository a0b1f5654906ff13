"""Masked-video reconstruction figures (PNG grid, animated GIF) and the mask and un-normalisation helpers they need.

Numpy + PIL only. A VideoMAE model trained with the normalised-pixel loss predicts each masked patch normalised by
that patch's own mean and std, which the masked input hides. `reconstruct` maps predictions back to pixels either
with the true statistics (the reference's figures: a peek at the answer) or, by default for honest figures, with
statistics estimated from the visible patches (`visible_patch_stats`); `stats_note` words the choice for a title.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from vidjax.fileio import atomic_output
from vidjax.patches import grid_shape, patchify, unpatchify

_MIN_CELL_HEIGHT = 96
_PAD = 4
_ROW_LABELS = ("original", "masked input", "reconstruction")
NEIGHBOURS = 4  # visible patches that estimate a masked patch's mean and std


def visible_patch_stats(original: np.ndarray, masked_ids: np.ndarray, tubelet: int, patch: int,
                        neighbours: int = NEIGHBOURS, hidden_ids: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of each masked token, estimated from the visible tokens only: (M, 1, C) each.

    For masked token m at grid position (t', i, j), the `neighbours` visible tokens of the same time slice t'
    nearest to (i, j) (Euclidean distance on the patch grid; ties go to the earlier token) are averaged: the
    estimate is the mean of their per-channel means and the mean of their per-channel (unbiased) stds. A slice
    with no visible token (possible only with masks other than tube masks) borrows from the whole clip's visible
    tokens, nearest in (t', i, j). Fewer visible candidates than `neighbours`: all of them. `hidden_ids` (default
    `masked_ids`): every token the model did not see, when it predicts only some (VideoMAE V2's decoder masking).
    """
    t, h, w, c = original.shape
    grid = grid_shape((t, h, w), tubelet, patch)
    tokens = patchify(np.asarray(original, np.float32), tubelet, patch)
    tokens = tokens.reshape(tokens.shape[0], -1, c)
    means, stds = tokens.mean(axis=1), tokens.std(axis=1, ddof=1)  # (N, C)
    masked_ids = np.asarray(masked_ids, np.int64)
    visible = np.ones(len(tokens), bool)
    visible[masked_ids if hidden_ids is None else np.asarray(hidden_ids, np.int64)] = False
    if not visible.any():
        raise ValueError("every token is masked; there are no visible patches to estimate statistics from")
    coords = np.stack(np.unravel_index(np.arange(len(tokens)), grid), axis=-1).astype(np.float64)
    vis_ids = np.flatnonzero(visible)
    est_mean = np.empty((len(masked_ids), c), np.float32)
    est_std = np.empty((len(masked_ids), c), np.float32)
    for row, m in enumerate(masked_ids):
        same_slice = vis_ids[coords[vis_ids, 0] == coords[m, 0]]
        candidates = same_slice if len(same_slice) else vis_ids
        dist = np.sum(np.square(coords[candidates] - coords[m]), axis=1)
        nearest = candidates[np.argsort(dist, kind="stable")[:neighbours]]
        est_mean[row], est_std[row] = means[nearest].mean(axis=0), stds[nearest].mean(axis=0)
    return est_mean[:, None], est_std[:, None]


def stats_note(norm_pix: bool, true_stats: bool, neighbours: int = NEIGHBOURS) -> str:
    """How a figure's masked patches were mapped back to pixels, for its title."""
    if not norm_pix:
        return "the model predicts pixels directly"
    if true_stats:
        return "masked patches un-normalised with their TRUE mean/std (peeks at the hidden pixels)"
    return f"masked patches un-normalised with mean/std estimated from the {neighbours} nearest visible patches"


def reconstruct(original: np.ndarray, pred: np.ndarray, masked_ids: np.ndarray, tubelet: int, patch: int,
                norm_pix: bool = True, eps: float = 1e-6, true_stats: bool = False,
                neighbours: int = NEIGHBOURS, hidden_ids: np.ndarray | None = None, fill: float = 0.5) -> np.ndarray:
    """Video (T, H, W, C) in [0, 1]: visible patches from `original`, masked ones from the model's `pred`.

    `pred` (M, tubelet*patch*patch*C) holds predictions for the tokens `masked_ids`. With `norm_pix` the
    predictions are normalised patches, mapped back with a per-patch mean and (unbiased) std: the ground truth's
    with `true_stats` (the VideoMAE reference's visualisation, which uses pixels the model never saw), else the
    estimate of `visible_patch_stats`. Callers should say which in the figure (`stats_note`). `hidden_ids`: the
    tokens the model did not see when it predicts only some of them (`masked_ids` a subset; VideoMAE V2's decoder
    masking): the statistics come from the others, and hidden tokens without a prediction are grey (`fill`).
    """
    t, h, w, c = original.shape
    tokens = patchify(np.asarray(original, np.float32), tubelet, patch)
    tokens = tokens.reshape(tokens.shape[0], -1, c)
    pred = np.asarray(pred, np.float32).reshape(len(masked_ids), -1, c)
    if norm_pix:
        if true_stats:
            mean = tokens.mean(axis=1, keepdims=True)[masked_ids]
            std = tokens.std(axis=1, ddof=1, keepdims=True)[masked_ids]
        else:
            mean, std = visible_patch_stats(original, masked_ids, tubelet, patch, neighbours, hidden_ids)
        pred = pred * (std + eps) + mean
    if hidden_ids is not None:
        tokens[np.asarray(hidden_ids, np.int64)] = fill
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


def text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines at most `width` px wide (a longer single word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(draw, f"{lines[-1]} {word}", font)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _three_videos(original, masked, reconstruction) -> list[np.ndarray]:
    videos = [_to_uint8(v, name) for v, name in zip((original, masked, reconstruction),
                                                   ("original", "masked", "reconstruction"), strict=True)]
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"original, masked and reconstruction must share one shape, got {shapes}")
    return videos


def save_image(image: Image.Image, path: str | os.PathLike, **kwargs) -> None:
    """Writes the image atomically (`fileio.atomic_output`): `path` is never a partial file."""
    kwargs.setdefault("format", Image.registered_extensions()[os.path.splitext(os.fspath(path))[1].lower()])
    with atomic_output(path, "wb") as f:
        image.save(f, **kwargs)


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
    The title is wrapped to the figure's width and also stored as the PNG's "Title" text chunk.
    The PNG is written to `path + ".tmp"` and renamed, so `path` is never a partial file.
    """
    videos = _three_videos(original, masked, reconstruction)
    t, h, w, _ = videos[0].shape
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    columns = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    scale = max(1, math.ceil(_MIN_CELL_HEIGHT / h))
    cell_h, cell_w = h * scale, w * scale

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(text_size(measure, label, font)[0] for label in _ROW_LABELS) + 2 * _PAD
    line_h = max(text_size(measure, text, font)[1] for text in (*_ROW_LABELS, "frame 0")) + 2 * _PAD
    width = label_w + len(columns) * (cell_w + _PAD) + _PAD
    title_lines = _wrap(measure, title, font, width - 2 * _PAD) if title else []
    title_h = line_h * len(title_lines)
    height = title_h + line_h + len(videos) * (cell_h + _PAD) + _PAD

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(title_lines):
        draw.text((_PAD, _PAD + i * line_h), line, fill="black", font=font)
    top = title_h + line_h
    for col, frame_index in enumerate(columns):
        draw.text((label_w + col * (cell_w + _PAD), title_h + _PAD), f"frame {frame_index}",
                  fill="black", font=font)
    for row, (label, video) in enumerate(zip(_ROW_LABELS, videos, strict=False)):
        y = top + row * (cell_h + _PAD)
        label_h = text_size(draw, label, font)[1]
        draw.text((_PAD, y + (cell_h - label_h) // 2), label, fill="black", font=font)
        for col, frame_index in enumerate(columns):
            cell = video[frame_index].repeat(scale, 0).repeat(scale, 1)
            image.paste(Image.fromarray(cell), (label_w + col * (cell_w + _PAD), y))

    info = PngImagePlugin.PngInfo()
    if title:
        info.add_text("Title", title)
    save_image(image, path, format="PNG", pnginfo=info)


def reconstruction_gif(
    original: np.ndarray,
    masked: np.ndarray,
    reconstruction: np.ndarray,
    path: str | os.PathLike,
    fps: float = 4.0,
) -> None:
    """Writes an animated GIF, one frame per video frame: original | masked input | reconstruction side by side.

    Inputs as for `reconstruction_figure`; panels upscaled (nearest) to at least 96 px tall under a label row;
    loops forever at `fps` frames per second. Written atomically like the PNG. (GIF writers merge consecutive
    identical frames, so a still video gives fewer frames.)
    """
    videos = _three_videos(original, masked, reconstruction)
    t, h, w, _ = videos[0].shape
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    scale = max(1, math.ceil(_MIN_CELL_HEIGHT / h))
    cell_h, cell_w = h * scale, w * scale
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(text_size(measure, label, font)[1] for label in _ROW_LABELS) + 2 * _PAD
    width, height = len(videos) * (cell_w + _PAD) + _PAD, line_h + cell_h + _PAD
    template = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(template)
    for col, label in enumerate(_ROW_LABELS):
        draw.text((_PAD + col * (cell_w + _PAD), _PAD), label, fill="black", font=font)
    images = []
    for frame_index in range(t):
        image = template.copy()
        for col, video in enumerate(videos):
            cell = video[frame_index].repeat(scale, 0).repeat(scale, 1)
            image.paste(Image.fromarray(cell), (_PAD + col * (cell_w + _PAD), line_h))
        images.append(image)
    save_image(images[0], path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
          loop=0)
