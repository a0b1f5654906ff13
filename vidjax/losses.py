"""Per-task losses: each maps (model, device batch, rng) to (scalar loss, dict of scalar metrics)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vidjax.config_lib import ConfigError

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def normalize_video(video_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x/255 - mean) / std, done on the device inside the jitted step."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (video_u8.astype(jnp.float32) / 255.0 - mean) / std


def masked_reconstruction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
    out = model(batch["video"], batch["mask"], rng=rng)
    return out["loss"], {}


def make_classification(label_smoothing: float) -> LossFn:
    def classification(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        logits = model(batch["video"], rng=rng)["logits"]
        labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
        if label_smoothing:
            labels = optax.smooth_labels(labels, label_smoothing)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, labels))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"accuracy": accuracy}
    return classification


def multiview_classification(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
    """Eval over several views per video (B, V, T, H, W, 3): softmax per view, probabilities averaged, then scored.

    Averaging probabilities, not logits, is what the published test protocols do (VideoMAE: 5 clips x 3 crops).
    """
    video = batch["video"]
    b, v = video.shape[:2]
    logits = model(video.reshape(b * v, *video.shape[2:]), rng=rng)["logits"]
    probs = jnp.mean(jax.nn.softmax(logits.reshape(b, v, -1), axis=-1), axis=1)
    picked = jnp.take_along_axis(probs, batch["label"][:, None], axis=1)[:, 0]
    loss = -jnp.mean(jnp.log(jnp.maximum(picked, 1e-12)))
    return loss, {"accuracy": jnp.mean(jnp.argmax(probs, -1) == batch["label"])}


def get_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
    """The loss of `config.task`; the trainer is otherwise the same for every task."""
    if config.task == "pretrain":
        return masked_reconstruction
    if config.task == "classification":
        return make_classification(config.optimizer.label_smoothing)
    raise ConfigError(f"config.task must be 'pretrain' or 'classification', got {config.task!r}.")
