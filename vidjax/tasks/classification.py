"""Classification: one class per video, batch["label"] int (B,); softmax cross-entropy with label smoothing, mixup /
cutmix soft targets and optional class weights; evaluated by `vidjax.evaluators.classification` (top1, top5,
macro_f1 and a confusion matrix)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax import metrics
from vidjax.config_lib import ConfigError
from vidjax.tasks import base, presentation, readout


class Training(base.HeadTraining):
    name = "classification"
    target_key = "label"
    synthetic_task = "label"
    counts_classes = True
    names_classes = True
    mixes = True
    evaluator = "classification"

    def loss_weights(self, config: ml_collections.ConfigDict, source):
        """Class weights from config.loss.class_weights; "balanced" is N / (C * count_c) (scikit-learn's; classes
        with no example get 0)."""
        if config.loss.pos_weight:
            raise ConfigError(f"config.loss.pos_weight applies to task='multilabel', not {self.name!r}.")
        c = config.data.num_classes

        def balanced() -> np.ndarray:
            counts = base.label_matrix(source, self.target_key, c).sum(0)
            return np.where(counts > 0, counts.sum() / (c * np.maximum(counts, 1)), 0.0).astype(np.float32)

        return base.weights_from_config(config.loss.class_weights, "class_weights", c, balanced), None

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        smoothing = config.optimizer.label_smoothing
        cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

        def loss_fn(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            logits = model(batch["video"], rng=rng)["logits"].astype(jnp.float32)
            label = batch["label"]
            targets = batch.get("soft_targets")  # mixup / cutmix
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

        return loss_fn

    def mix_label_smoothing(self, config: ml_collections.ConfigDict) -> float:
        """The label smoothing mixup applies to the targets it mixes."""
        return config.optimizer.label_smoothing


class Readout(readout.HeadReadout):
    name = Training.name
    target_key = Training.target_key
    kinetics_label_spaces = True
    score_name = "probability"
    scores_name = "probabilities"

    def scores(self, logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, axis=-1)

    def task_metrics(self, scores, targets, target_names=None) -> dict[str, float]:
        return metrics.classification_metrics(scores, targets)

    def probe_targets(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, np.int32)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.HeadPresentation(
    name=Training.name, description="the top {top_k} classes and their probabilities", examples=Training.synthetic_task,
    score_name=Readout.score_name, purpose="video classification", hub_pipeline_tag="video-classification",
    score_function="softmax")
