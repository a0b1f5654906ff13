"""What the evaluators of a linear head share (classification, multilabel, regression): scores over one view or
several, a per-example loss from the averaged scores, and the task's metrics of scores against targets."""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.data import pipeline
from vidjax.evaluators import base


class HeadEvaluator(base.Evaluator):
    """A head's outputs, read as the task's readout reads them (`HeadReadout.scores`, `HeadReadout.task_metrics`)."""

    @abc.abstractmethod
    def per_example_loss(self, scores: jax.Array, target: jax.Array) -> jax.Array:
        """The loss of each example from its view-averaged scores (B, C) and its targets."""

    def columns(self) -> np.ndarray | None:
        """The head outputs it scores, in the eval split's class order; None = all of them as they are."""
        return None

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"scores": (B, C or K), "loss": (B,)}, the batch's targets under their key, and its "valid" and
        "decode_failures" rows when it has them, from one view (B, T, H, W, 3) or several (B, V, ...). Over several
        views the scores (`Readout.scores`) are averaged, as the published multi-view test protocols do (VideoMAE: 5
        clips x 3 crops); the loss is then computed from the averaged scores."""
        video = batch["video"]
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        views = video.shape[1] if video.ndim == 6 else 1
        b = video.shape[0]
        logits = model(video.reshape(b * views, *video.shape[-4:]))["logits"].astype(jnp.float32)
        columns = self.columns()
        if columns is not None:
            logits = jnp.take(logits, jnp.asarray(columns), axis=-1)
        scores = self.readout.scores(logits.reshape(b, views, -1)).mean(1)
        key = self.readout.target_key
        target = batch[key]
        return {"scores": scores, "loss": self.per_example_loss(scores, target), key: target, **passed}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """loss (the mean per-example loss), then the task's metrics (`HeadReadout.task_metrics`)."""
        names = pipeline.target_names(self.config.data) or None
        result = self.readout.task_metrics(outputs["scores"], outputs[self.readout.target_key], names)
        return {"loss": float(outputs["loss"].mean()), **{k: float(v) for k, v in result.items()}}
