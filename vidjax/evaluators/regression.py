"""Regression: metrics loss (the mean squared error of the view-averaged values), ccc_<target> per target,
ccc_mean and mse (`vidjax.metrics.regression_metrics`, the AVEC protocol)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidjax.evaluators import head


class Evaluator(head.HeadEvaluator):
    requires = {"target_key": "targets"}

    def per_example_loss(self, scores: jax.Array, target: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(scores - target), axis=-1)
