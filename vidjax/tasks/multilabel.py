"""Multi-label tagging: batch["labels"] multi-hot float (B, C); sigmoid binary cross-entropy with optional positive
weights and mixup / cutmix; evaluated by `vidjax.evaluators.multilabel` (mAP); predictions list the classes above
a threshold."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax import losses, metrics
from vidjax.config_lib import ConfigError
from vidjax.tasks import base, presentation, readout


class Training(base.HeadTraining):
    name = "multilabel"
    target_key = "labels"
    synthetic_task = "labels"
    counts_classes = True
    mixes = True
    evaluator = "multilabel"

    def loss_weights(self, config: ml_collections.ConfigDict, source):
        """Positive weights from config.loss.pos_weight; "balanced" is negatives / positives per class (1 for a class
        with no positive)."""
        if config.loss.class_weights:
            raise ConfigError(f"config.loss.class_weights applies to task='classification', not {self.name!r}.")
        c = config.data.num_classes

        def balanced() -> np.ndarray:
            labels = base.label_matrix(source, self.target_key, c)
            pos = labels.sum(0)
            return np.where(pos > 0, (len(labels) - pos) / np.maximum(pos, 1), 1.0).astype(np.float32)

        return None, base.weights_from_config(config.loss.pos_weight, "pos_weight", c, balanced)

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        pw = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)

        def loss_fn(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            logits = model(batch["video"], rng=rng)["logits"].astype(jnp.float32)
            targets = batch.get("soft_targets", batch["labels"])
            return losses.weighted_bce(logits, targets, pw).mean(), {}

        return loss_fn


class Readout(readout.HeadReadout):
    name = Training.name
    target_key = Training.target_key

    def scores(self, logits: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(logits)

    def task_metrics(self, scores, targets, target_names=None) -> dict[str, float]:
        return metrics.multilabel_metrics(scores, targets)

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        return {**super().describe(scores, names, top_k, threshold), "threshold": threshold,
                "above_threshold": [r for r in self.ranked(scores, names) if r["score"] >= threshold]}

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        ranked, note = prediction["above_threshold"], []
        if not ranked:
            note = [f"{indent}(no class scores >= {prediction['threshold']:g}; the highest:)"]
            ranked = prediction["top_k"]
        return note + readout.aligned_lines([(r["label"], f"{r['score']:.3f}") for r in ranked], indent)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(outputs, targets))


@dataclasses.dataclass(frozen=True)
class Presentation(presentation.HeadPresentation):
    """The demo's timeline lists the classes over the threshold."""

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        return [f"classes scoring >= {threshold:g}", "top score"]

    def timeline_cells(self, prediction: dict) -> list:
        present = ", ".join(row["label"] for row in prediction["above_threshold"]) or "(none)"
        return [present, round(prediction["top_k"][0][self.score_name], 4)]


TRAINING = Training()
READOUT = Readout()
PRESENTATION = Presentation(
    name=Training.name, description="the {top_k} highest per-class scores (sigmoid)", examples=Training.synthetic_task,
    score_name=Readout.score_name, purpose="multi-label video classification", hub_pipeline_tag="video-classification",
    hf_problem_type="multi_label_classification", score_function="sigmoid")
