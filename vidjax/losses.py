"""Per-task losses and evaluation outputs.

Training: `get_loss_fn(config, class_weights, pos_weight)` maps (model, device batch, rng) to (scalar loss, dict of
scalar metrics). Evaluation: `eval_outputs(config, model, batch)` gives per-example scores (softmax probabilities,
sigmoid scores or regressed values, averaged over a video's views) and losses, from which the evaluator computes
whole-split metrics (vidjax.metrics).

Tasks and their targets in a batch:
  pretrain        VideoMAE masked reconstruction (batch["mask"])
  classification  batch["label"] int (B,); softmax cross-entropy, label smoothing, optional class weights
  multilabel      batch["labels"] multi-hot float (B, C); sigmoid binary cross-entropy, optional positive weights
  regression      batch["targets"] float (B, K); mean squared error, or 1 - concordance correlation (CCC)
With mixup / cutmix the train step puts mixed soft targets in batch["soft_targets"], used in place of the above.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax.config_lib import ConfigError

TASKS = ("pretrain", "classification", "multilabel", "regression")
TARGET_KEYS = {"classification": "label", "multilabel": "labels", "regression": "targets"}
REGRESSION_LOSSES = ("mse", "ccc")

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def normalize_video(video_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x/255 - mean) / std, done on the device inside the jitted step."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (video_u8.astype(jnp.float32) / 255.0 - mean) / std


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"config.task must be one of {', '.join(TASKS)}; got {task!r}.")


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


def masked_reconstruction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
    out = model(batch["video"], batch["mask"], rng=rng)
    return out["loss"], {}


def get_loss_fn(config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> LossFn:
    """The training loss of `config.task`; the trainer is otherwise the same for every task."""
    check_task(config.task)
    if config.task == "pretrain":
        return masked_reconstruction
    smoothing = config.optimizer.label_smoothing
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    pw = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    regression_loss = config.loss.regression
    if regression_loss not in REGRESSION_LOSSES:
        raise ConfigError(f"config.loss.regression must be one of {', '.join(REGRESSION_LOSSES)}; got "
                          f"{regression_loss!r}.")

    def loss_fn(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        logits = model(batch["video"], rng=rng)["logits"].astype(jnp.float32)
        if config.task == "classification":
            label = batch["label"]
            targets = batch.get("soft_targets")
            if targets is None:
                targets = jax.nn.one_hot(label, logits.shape[-1])
                if smoothing:
                    targets = optax.smooth_labels(targets, smoothing)
            if cw is None:
                loss = optax.softmax_cross_entropy(logits, targets).mean()
            else:
                # -sum_i sum_c w_c y_ic log p_ic / sum_i sum_c w_c y_ic: with one-hot targets PyTorch's weighted
                # mean, sum_i w_(y_i) l_i / sum_i w_(y_i); smoothed or mixed targets weight each class's term.
                weighted = targets * cw
                nll = -jnp.sum(weighted * jax.nn.log_softmax(logits), axis=-1)
                loss = jnp.sum(nll) / jnp.maximum(jnp.sum(weighted), 1e-12)
            return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == label)}
        if config.task == "multilabel":
            targets = batch.get("soft_targets", batch["labels"])
            return weighted_bce(logits, targets, pw).mean(), {}
        targets = batch["targets"].astype(jnp.float32)
        mse = jnp.mean(jnp.square(logits - targets))
        ccc = jnp.mean(batch_ccc(logits, targets))
        return (mse if regression_loss == "mse" else 1.0 - ccc), {"mse": mse, "ccc": ccc}

    return loss_fn


def task_scores(task: str, logits: jax.Array) -> jax.Array:
    """What a head's logits mean per task: softmax probabilities, per-class sigmoid scores, or the values."""
    if task == "classification":
        return jax.nn.softmax(logits, axis=-1)
    if task == "multilabel":
        return jax.nn.sigmoid(logits)
    return logits


def eval_outputs(config: ml_collections.ConfigDict, model, batch: dict) -> dict[str, jax.Array]:
    """Per-example evaluation outputs of a normalised batch (one view (B, T, H, W, 3) or several (B, V, ...)).

    Returns {"scores": (B, C or K), "loss": (B,)}, the batch's targets under their key, and its "valid" and
    "decode_failures" rows when it has them. Over several views the
    softmax probabilities (classification), sigmoid scores (multilabel) or values (regression) are averaged, as
    the published multi-view test protocols do (VideoMAE: 5 clips x 3 crops); the loss is then computed from the
    averaged scores. Pre-training returns {"loss": (,)} (the masked reconstruction loss of the batch).
    """
    check_task(config.task)
    video = batch["video"]
    passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
    if config.task == "pretrain":
        return {"loss": model(video, batch["mask"])["loss"], **passed}
    views = video.shape[1] if video.ndim == 6 else 1
    b = video.shape[0]
    logits = model(video.reshape(b * views, *video.shape[-4:]))["logits"].astype(jnp.float32)
    logits = logits.reshape(b, views, -1)
    key = TARGET_KEYS[config.task]
    target = batch[key]
    scores = task_scores(config.task, logits).mean(1)
    if config.task == "classification":
        picked = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        loss = -jnp.log(jnp.maximum(picked, 1e-12))
    elif config.task == "multilabel":
        p = jnp.clip(scores, 1e-7, 1 - 1e-7)
        loss = -jnp.mean(target * jnp.log(p) + (1 - target) * jnp.log(1 - p), axis=-1)
    else:
        loss = jnp.mean(jnp.square(scores - target), axis=-1)
    return {"scores": scores, "loss": loss, key: target, **passed}
