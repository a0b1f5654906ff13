"""SVT's k-NN: DINO's weighted k-NN (cosine, k neighbours, temperature) on the backbone's CLS features after its
final norm (the teacher's, the weights evaluations use). The scored split's clips are classified against those of
the bank split (the training split), both read as eval clips (centre crop, config.data.num_frames at
sampling_rate). Metrics knn_top1 and knn_top5. By default a fresh run also scores its random initial weights once
(`init`: knn_top1_init), so every run shows what training added.

Options: k (default config.svt.knn_k), temperature (config.svt.knn_temperature), bank (the split the neighbours come
from: "train").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vidjax import metrics
from vidjax.evaluators import base


class Evaluator(base.BankEvaluator):
    requires = {"model_name": "svt"}
    options = {"k": None, "temperature": None, "bank": "train"}
    evaluates_init = True
    bank_role = "the neighbours"

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

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        bank, s = self.bank, self.config.svt
        num_classes = self.num_classes(outputs, "SVT's k-NN evaluation")
        scores = metrics.knn_classify(bank["features"], bank["label"].astype(np.int64), outputs["features"],
                                      num_classes, k=min(int(self.setting("k", s.knn_k)), len(bank["label"])),
                                      temperature=self.setting("temperature", s.knn_temperature))
        return {"knn_top1": metrics.top_k_accuracy(scores, outputs["label"], 1),
                "knn_top5": metrics.top_k_accuracy(scores, outputs["label"], min(5, num_classes))}
