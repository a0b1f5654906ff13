"""Mixup and CutMix of video batches in JAX, with timm's batch-mode semantics; jit-able, runs inside the train step.

As timm's `Mixup(mode="batch")`, which the VideoMAE and VideoMamba fine-tuning recipes use: with probability
`prob` the whole batch is mixed with itself reversed along the batch axis (sample i with sample B-1-i), either by
mixup (`x = lam x + (1 - lam) x_flipped`, lam ~ Beta(mixup_alpha, mixup_alpha)) or by CutMix (a box of area
fraction about 1 - lam, lam ~ Beta(cutmix_alpha, cutmix_alpha), pasted from the reversed batch, lam then corrected
to the box's true area); when both alphas are > 0, CutMix is picked with probability `switch_prob`. Labels are
smoothed first (timm: off = smoothing / C, on = 1 - smoothing + off) and mixed with the same lam.

Video-specific: the CutMix box is the same on every frame (a spatial box through the whole clip), so the pasted
region is a tube and lam is its share of every frame. All randomness comes from the `rng` key (jax.random), so a
step's mixing is fixed by the key the trainer folds from the step number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_labels(labels: jax.Array, num_classes: int | None, smoothing: float) -> jax.Array:
    """float32 (B, C) targets: int labels (B,) one-hot, or soft / multi-hot (B, C) as given; then label smoothing.

    Smoothing maps y to y * (1 - smoothing) + smoothing / C: for a one-hot row, timm's on = 1 - smoothing + off and
    off = smoothing / C.
    """
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.ndim != 1:
            raise ValueError(f"Integer labels must be class indices shaped (batch,), got shape {labels.shape}; "
                             f"pass soft or multi-hot labels as float (batch, classes).")
        if not num_classes:
            raise ValueError("Integer labels need num_classes (the number of classes of the head) to be one-hot "
                             "encoded; pass num_classes=config.model.num_classes.")
        y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    else:
        if labels.ndim != 2:
            raise ValueError(f"Float labels must be soft or multi-hot targets shaped (batch, classes), got shape "
                             f"{labels.shape}; pass class indices as int (batch,).")
        if num_classes and labels.shape[1] != num_classes:
            raise ValueError(f"The labels have {labels.shape[1]} classes but num_classes={num_classes}; they must "
                             f"agree (or leave num_classes=None for float labels).")
        y = labels.astype(jnp.float32)
    if smoothing:
        y = y * (1.0 - smoothing) + smoothing / y.shape[1]
    return y


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """(bool box (height, width), lam corrected to the box's area) for a CutMix area fraction of about 1 - lam.

    timm's `rand_bbox`: sides int(size * sqrt(1 - lam)), centre uniform over the frame, the box clipped to the
    frame (so it can be smaller than asked); the corrected lam is 1 - box area / frame area.
    """
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    rng_y, rng_x = jax.random.split(rng)
    cy = jax.random.randint(rng_y, (), 0, height)
    cx = jax.random.randint(rng_x, (), 0, width)
    top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height), jnp.arange(width)
    box_HW = (((rows >= top) & (rows < bottom))[:, None]) & (((cols >= left) & (cols < right))[None, :])
    area = (bottom - top) * (right - left)
    return box_HW, 1.0 - area.astype(jnp.float32) / (height * width)


def mix(rng: jax.Array, video: jax.Array, labels: jax.Array, *, mixup_alpha: float, cutmix_alpha: float,
        prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.0,
        num_classes: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(mixed video (B, T, H, W, C) in the input dtype, soft labels float32 (B, classes)); see the module docstring.

    `video` is the normalised float batch, `labels` int class indices (B,) (then `num_classes` is required) or
    float soft / multi-hot targets (B, classes). The keyword arguments are Python numbers, fixed at trace time.
    Alphas of 0 disable mixup / CutMix; both 0 (or prob 0) leave the video unchanged and return the smoothed
    labels. The soft labels are lam * y + (1 - lam) * y_flipped, with y the smoothed labels.
    """
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns it off), got {value}.")
    for name, value in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {value}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    if video.ndim != 5:
        raise ValueError(f"mix expects a video batch (batch, frames, height, width, channels), got shape "
                         f"{video.shape}.")
    y = smooth_labels(labels, num_classes, label_smoothing)
    if y.shape[0] != video.shape[0]:
        raise ValueError(f"The batch has {video.shape[0]} videos but {y.shape[0]} labels.")
    if (mixup_alpha == 0 and cutmix_alpha == 0) or prob == 0:
        return video, y

    _, _, height, width, _ = video.shape
    rng_apply, rng_switch, rng_mixup, rng_cutmix, rng_box = jax.random.split(rng, 5)
    apply = jax.random.uniform(rng_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(rng_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mixup = jax.random.beta(rng_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
    lam_cutmix = jax.random.beta(rng_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)
    box_HW, lam_box = cutmix_box(rng_box, lam_cutmix, height, width)

    # One blend covers every case: the weight of each sample's own pixels is lam everywhere (mixup), 0 inside the
    # box and 1 outside it (CutMix, exact copies), or 1 everywhere (not mixed this step).
    own_HW = jnp.where(apply, jnp.where(use_cutmix, 1.0 - box_HW.astype(jnp.float32), lam_mixup), 1.0)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mixup), 1.0)
    own = own_HW.astype(video.dtype)[None, None, :, :, None]
    mixed = own * video + (1 - own) * video[::-1]
    return mixed, lam * y + (1.0 - lam) * y[::-1]
