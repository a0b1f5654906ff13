"""Loss maths the tasks share: input normalisation, batch concordance correlation, weighted binary cross-entropy.

Each task's loss (and its eval outputs) lives in its module, `vidjax.tasks.<task>`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize_video(video_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x/255 - mean) / std, done on the device inside the jitted step."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (video_u8.astype(jnp.float32) / 255.0 - mean) / std


def batch_ccc(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Concordance correlation per column of (B, K) predictions and targets, over the batch (population moments)."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    denom = pred.var(0) + target.var(0) + (pm - tm) ** 2
    return 2 * cov / jnp.maximum(denom, 1e-8)


def weighted_bce(logits: jax.Array, targets: jax.Array, pos_weight: jax.Array | None = None) -> jax.Array:
    """Elementwise sigmoid binary cross-entropy; `pos_weight` (C,) scales the positive term (PyTorch semantics)."""
    pos = targets * jax.nn.softplus(-logits)
    if pos_weight is not None:
        pos = pos * pos_weight
    return pos + (1.0 - targets) * jax.nn.softplus(logits)
