"""What a VideoMAE pre-training checkpoint reconstructs of a video's middle clip, drawn as a PNG grid and a GIF
(`vidjax.visualize_lib`): what `python -m vidjax.visualize` writes and the demo shows (`render`).

The mask follows the checkpoint's own masks (`mask_spec`): the `patches.MaskSpec` its config.model and token grid
make, by which its pre-training drew every clip's masks, drawn here as the input pipeline draws it (a tube mask,
`pipeline.tube_mask` of the spec's grid and ratio); a caller may give another ratio (visualize's --mask_ratio).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vidjax import pretrained, visualize_lib
from vidjax.data import pipeline
from vidjax.patches import MaskSpec


def mask_spec(model: pretrained.Pretrained, mask_ratio: float | None = None) -> MaskSpec:
    """The masks a pre-training checkpoint was trained with (`MaskSpec.of` its config.model over its encoder's
    token grid); with `mask_ratio`, those with that share of each frame's positions hidden instead (a ConfigError
    when it hides none or all of them)."""
    masks = MaskSpec.of(model.config, model.model.encoder.grid)
    return masks if mask_ratio is None else dataclasses.replace(masks, ratio=float(mask_ratio))


def render(model: pretrained.Pretrained, video: str, prefix: str, *, mask_ratio: float | None = None,
           use_true_stats: bool = False, seed: int = 0, frames: int = 8,
           fps: float = 4.0, sampling_rate: int | None = None) -> dict:
    """Writes PREFIX.png and PREFIX.gif of the middle clip of `video` masked by `mask_spec(model, mask_ratio)` (the
    checkpoint's own ratio by default), its mask drawn with `seed`; returns {"png", "gif", "title", "loss",
    "num_frames"}. Raises `decode.VideoDecodeError` for a video that does not decode."""
    clip = model.read_views(video, sampling_rate=sampling_rate)[0]
    encoder = model.model.encoder
    masks = mask_spec(model, mask_ratio)
    mask = pipeline.tube_mask(np.random.default_rng(seed), masks.grid, masks.ratio)
    out = model.forward(model.preprocess(clip[None]), mask[None])
    norm_pix = bool(model.config.norm_pix_loss)
    original = clip.astype(np.float32) / 255.0
    recon = visualize_lib.reconstruct(original, np.asarray(out["pred"][0]), np.asarray(out["masked_ids"][0]),
                                      encoder.tubelet, encoder.patch, norm_pix=norm_pix, true_stats=use_true_stats)
    masked = visualize_lib.mask_video(original, mask.reshape(masks.grid), encoder.tubelet, encoder.patch)
    title = (f"{model.model_name} {model.config.variant}, {os.path.basename(video)}, {masks.ratio:.0%} of patches "
             f"masked; {visualize_lib.stats_note(norm_pix, use_true_stats)}")
    png, gif = f"{prefix}.png", f"{prefix}.gif"
    visualize_lib.reconstruction_figure(original, masked, recon, png, frames=frames, title=title)
    visualize_lib.reconstruction_gif(original, masked, recon, gif, fps=fps)
    return {"png": png, "gif": gif, "title": title, "loss": float(out["loss"]), "num_frames": len(clip)}
