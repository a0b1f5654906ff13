"""Classification: one class per video. Metrics loss (the cross-entropy of the view-averaged probabilities), top1,
top5 and macro_f1 (`vidjax.metrics.classification_metrics`); the end of training draws the confusion matrix
(confusion_matrix.png), as does `python -m vidjax.evaluate --out`.

Options: label_space ("" = the head's own classes; k400 / k600 / k700 = a K710 head's outputs mapped to that
release's classes, as VideoMAE V2's official code evaluates its K710 models; default config.eval_label_space) and
figure (default config.figure).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import metrics
from vidjax.data import kinetics
from vidjax.evaluators import head

LABEL_SPACES = ("k400", "k600", "k700")


def confusion_figure(outputs: dict[str, np.ndarray], class_names: Sequence[str] | None, path: str,
                     title: str) -> None:
    """The confusion matrix of whole-split classification outputs, as a PNG at `path`."""
    metrics.confusion_matrix_figure(metrics.confusion_matrix(outputs["scores"], outputs["label"]), class_names, path,
                                    title=title)


class Evaluator(head.HeadEvaluator):
    requires = {"target_key": "label", "head": "classification"}
    options = {"label_space": None, "figure": None}

    @classmethod
    def problems(cls, config: ml_collections.ConfigDict, options: Mapping[str, Any], where: str) -> list[str]:
        problems = []
        own = options.get("label_space") is not None
        space = options["label_space"] if own else config.get("eval_label_space", "")
        key = f"{where}.label_space" if own else "config.eval_label_space"
        if space:
            if space not in LABEL_SPACES:
                problems.append(f"{key}={space!r}; choose '' (the head's own classes) or k400, k600 or k700 (a K710 "
                                f"head's outputs mapped to that release's classes).")
            elif config.model.num_classes != 710:
                problems.append(f"{key}={space!r} maps a K710 head's 710 outputs to {space}'s classes, but "
                                f"config.model.num_classes={config.model.num_classes}; set it to 710, or leave "
                                f"{key.rsplit('.', 1)[-1]} empty to score the head's own classes.")
        return problems

    def columns(self) -> np.ndarray | None:
        """With a label space (k400 / k600 / k700), the K710 outputs of that release's classes, in its order
        (VideoMAE V2's label_710to*.json)."""
        space = self.setting("label_space", self.config.get("eval_label_space", ""))
        return kinetics.label_map("k710", space) if space else None

    def per_example_loss(self, scores: jax.Array, target: jax.Array) -> jax.Array:
        picked = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        return -jnp.log(jnp.maximum(picked, 1e-12))

    def figures(self, params, step: int) -> list[str]:
        if not self.setting("figure", self.config.figure) or jax.process_index() != 0:
            return []
        config = self.config
        path = os.path.join(self.context.workdir, self.file_name("confusion_matrix", "png"))
        confusion_figure(self.outputs, self.context.metadata.get("class_names"), path,
                         title=f"{config.model_name} {config.model.variant}, step {step}, {self.name} top-1 "
                               f"{self.result['top1']:.3f}")
        return [path]

    def figure(self, path: str, title: str) -> bool:
        confusion_figure(self.outputs, getattr(self.source, "class_names", None), path,
                         title=f"{title}: top-1 {self.result['top1']:.3f}")
        return True
