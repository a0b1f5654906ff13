"""Multi-label tagging: metrics loss (the binary cross-entropy of the view-averaged sigmoid scores) and mAP over
the classes with a positive (`vidjax.metrics.multilabel_metrics`, the Charades protocol)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidjax.evaluators import head


class Evaluator(head.HeadEvaluator):
    requires = {"target_key": "labels"}

    def per_example_loss(self, scores: jax.Array, target: jax.Array) -> jax.Array:
        p = jnp.clip(scores, 1e-7, 1 - 1e-7)
        return -jnp.mean(target * jnp.log(p) + (1 - target) * jnp.log(1 - p), axis=-1)
