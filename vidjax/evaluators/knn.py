"""SVT's k-NN: DINO's weighted k-NN (cosine, k neighbours, temperature) on the backbone's CLS features after its
final norm (the teacher's, the weights evaluations use). The scored split's clips are classified against those of
the bank split (the training split), both read as eval clips (centre crop, config.data.num_frames at
sampling_rate). Metrics knn_top1 and knn_top5. By default a fresh run also scores its random initial weights once
(`init`: knn_top1_init), so every run shows what training added.

Options: k (default config.svt.knn_k), temperature (config.svt.knn_temperature), bank (the split the neighbours come
from: "train").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import metrics
from vidjax.evaluators import base


class Evaluator(base.Evaluator):
    requires = {"model_name": "svt"}
    options = {"k": None, "temperature": None, "bank": "train"}
    evaluates_init = True

    @classmethod
    def problems(cls, config: ml_collections.ConfigDict, options: Mapping[str, Any], where: str) -> list[str]:
        if options.get("bank", "train") not in base.SPLITS:
            return [f"{where}.bank={options['bank']!r}: the neighbours come from one of {', '.join(base.SPLITS)}."]
        return []

    def check(self) -> None:
        super().check()
        self.context.source(self.settings["bank"], self.data)

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"features": (B, D) the backbone's CLS token after its final norm, "label" when the data has labels},
        and the batch's "valid" and "decode_failures" rows."""
        video = batch["video"]
        if video.ndim == 6:  # several eval views: their features averaged
            b, v = video.shape[:2]
            features = model.backbone(video.reshape(b * v, *video.shape[2:]))["last_hidden_state"][:, 0]
            features = features.astype(jnp.float32).reshape(b, v, -1).mean(1)
        else:
            features = model.backbone(video)["last_hidden_state"][:, 0].astype(jnp.float32)
        passed = {k: batch[k] for k in ("label", "valid", "decode_failures") if k in batch}
        return {"features": features, **passed}

    def run(self, params):
        """As `Evaluator.run`, the bank's features gathered first (all of its split)."""
        self.bank = self.gather(params, self.context.source(self.settings["bank"], self.data), 0)
        yield from super().run(params)

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        bank = self.bank
        if "label" not in outputs or "label" not in bank:
            raise ValueError("SVT's evaluation is a k-NN classifier: it needs labelled eval and training splits "
                             "(their `label` column) and the training split's features.")
        s = self.config.svt
        num_classes = int(max(self.config.data.num_classes, bank["label"].max() + 1, outputs["label"].max() + 1))
        scores = metrics.knn_classify(bank["features"], bank["label"].astype(np.int64), outputs["features"],
                                      num_classes, k=min(int(self.setting("k", s.knn_k)), len(bank["label"])),
                                      temperature=self.setting("temperature", s.knn_temperature))
        return {"knn_top1": metrics.top_k_accuracy(scores, outputs["label"], 1),
                "knn_top5": metrics.top_k_accuracy(scores, outputs["label"], min(5, num_classes))}
