"""A linear probe on any encoder's frozen tokens, mean-pooled: the features `python -m vidjax.extract --pool=mean`
writes and `python -m vidjax.probe --probe=linear` fits, here on a run's own weights. The tokens come from the part
of the model the attentive probe reads (`vidjax.models.tokens_part`: a VideoMAE pre-training's or a distillation's
student encoder, SVT's backbone, ...) after its final norm; their mean over the tokens (and over the eval views) is
one vector a clip. The bank split's vectors (the training split) train a linear layer (`vidjax.evaluators.probes`:
features standardised by the bank's statistics, AdamW, softmax cross-entropy), which then classifies the scored
split's clips. Metrics linear_top1 and linear_top5. By default a fresh run also scores its random initial weights once
(`init`: linear_top1_init): the comparison a pre-training's linear probe is read by.

Options (`python -m vidjax.probe`'s flags; defaults `probes.DEFAULTS["linear"]`): bank ("train"), epochs (100), lr
(1e-3), weight_decay (1e-4), batch_size (256), seed (the probe's initialisation and minibatches; default
config.seed).
"""

from __future__ import annotations

import jax
import numpy as np

from vidjax import metrics
from vidjax.evaluators import attentive, probes


class Evaluator(attentive.Evaluator):
    options = {"bank": "train", **probes.DEFAULTS["linear"], "seed": None}

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"features": the mean of the model's tokens, float32 (B, D), "label" when the data has labels}, and the
        batch's "valid" and "decode_failures" rows."""
        out = super().batch_outputs(model, batch)
        return {"features": out.pop("tokens").mean(axis=1), **out}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        bank, s = self.bank, self.settings
        num_classes = self.num_classes(outputs, "The linear probe")
        scores = probes.train_probe(
            probes.CLASS_LABELS, bank["features"], bank["label"].astype(np.int64), outputs["features"],
            num_outputs=num_classes, probe="linear", epochs=s["epochs"], lr=s["lr"], weight_decay=s["weight_decay"],
            batch_size=s["batch_size"], seed=int(self.setting("seed", self.config.seed)))
        return {"linear_top1": metrics.top_k_accuracy(scores, outputs["label"], 1),
                "linear_top5": metrics.top_k_accuracy(scores, outputs["label"], min(5, num_classes))}
