"""Regression: batch["targets"] float (B, K), K values per video (valence / arousal, velocities); mean squared error
or 1 - concordance correlation (config.loss.regression); evaluated by `vidjax.evaluators.regression` (ccc per
target, ccc_mean and mse)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import losses, metrics
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline
from vidjax.tasks import base, presentation, readout

REGRESSION_LOSSES = ("mse", "ccc")


class Training(base.HeadTraining):
    name = "regression"
    target_key = "targets"
    synthetic_task = "targets"
    evaluator = "regression"

    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = super().config_problems(config)
        names = pipeline.target_names(config.data)
        if len(names) != config.model.num_classes:
            problems.append(f"config.task='regression' with {len(names)} targets ({', '.join(names)}) but "
                            f"config.model.num_classes={config.model.num_classes}; set num_classes to the number "
                            f"of regression targets (config.data.targets names them).")
        return problems

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        regression_loss = config.loss.regression
        if regression_loss not in REGRESSION_LOSSES:
            raise ConfigError(f"config.loss.regression must be one of {', '.join(REGRESSION_LOSSES)}; got "
                              f"{regression_loss!r}.")

        def loss_fn(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            values = model(batch["video"], rng=rng)["logits"].astype(jnp.float32)
            targets = batch["targets"].astype(jnp.float32)
            mse = jnp.mean(jnp.square(values - targets))
            ccc = jnp.mean(losses.batch_ccc(values, targets))
            return (mse if regression_loss == "mse" else 1.0 - ccc), {"mse": mse, "ccc": ccc}

        return loss_fn

    def metadata(self, config: ml_collections.ConfigDict, train_source) -> dict:
        return {"class_names": None, "target_names": pipeline.target_names(config.data)}


class Readout(readout.HeadReadout):
    name = Training.name
    target_key = Training.target_key
    output_kind = "target"
    probe_standardises_targets = True

    def scores(self, logits: jax.Array) -> jax.Array:
        return logits

    def task_metrics(self, scores, targets, target_names=None) -> dict[str, float]:
        return metrics.regression_metrics(scores, targets, target_names)

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        return {"values": {name: float(v) for name, v in zip(names, np.asarray(scores, np.float64), strict=True)}}

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        return readout.aligned_lines([(name, f"{value:.4f}") for name, value in prediction["values"].items()], indent)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(outputs - targets))


@dataclasses.dataclass(frozen=True)
class Presentation(presentation.HeadPresentation):
    """Each target's value, not a ranking."""

    ranks_labels: bool = False

    def shown_scores(self, prediction: dict) -> dict[str, float]:
        return dict(prediction["values"])

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        return list(names)

    def timeline_cells(self, prediction: dict) -> list:
        return [round(v, 4) for v in prediction["values"].values()]


TRAINING = Training()
READOUT = Readout()
PRESENTATION = Presentation(name=Training.name, description="the value of each target",
                            examples=Training.synthetic_task, purpose="video regression", hf_problem_type="regression")
