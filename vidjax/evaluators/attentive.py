"""The attentive probe, V-JEPA 2's evaluation of a frozen encoder, on any video model: the tokens (B, N, D) of the
bank split's clips (the training split) train a cross-attention pooler and a linear layer
(`vidjax.evaluators.probes`, the probe `python -m vidjax.probe --probe=attentive` fits), which then classifies the
scored split's clips. Both splits are read as eval clips (centre views, config.data.num_frames at sampling_rate);
several eval views of a clip are read side by side as one sequence of tokens, as V-JEPA 2 joins its clips' segments.
The tokens come from the part of the model `vidjax.models.tokens_part` names (a VideoMAE pre-training's encoder,
SVT's backbone, a captioner's video encoder, else the model itself: V-JEPA 2, a classifier's encoder) after its final
norm, evaluated with the run's evaluation weights (the EMA where the run keeps one). Metrics attentive_top1 and
attentive_top5 (top-k with k = 5, or the number of classes where fewer); the splits need a `label` column. By default
a fresh run also scores its random initial weights once (`init`: attentive_top1_init), so every run shows what
training added.

The bank's tokens are held in host memory (N x tokens x D float32): a bank for small sets, or a subset's list
(`data`). The same options and seed give the same probe, so a run's figures compare across steps and with the
initial weights'.

Options (the probe's, named as `python -m vidjax.probe`'s flags; defaults `probes.DEFAULTS["attentive"]`, and
`vidjax.evaluators.probes` lists V-JEPA 2's published settings beside them): bank (the split the probe trains on:
"train"), heads (0: 16, or the largest divisor of the token width below 16), depth (the pooler's blocks, the last the
cross-attention one: 1), epochs (30), lr (AdamW's peak, cosine-decayed to 0: 0.01), weight_decay (0.01), batch_size
(clips per probe step: 16; config.batch_size still batches the encoder's forward passes), seed (the probe's
initialisation and minibatches; default config.seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import metrics, models
from vidjax.evaluators import base, probes


class Evaluator(base.BankEvaluator):
    options = {"bank": "train", "heads": 0, "depth": 1, **probes.DEFAULTS["attentive"], "seed": None}
    evaluates_init = True
    bank_role = "the probe's training clips"

    @classmethod
    def problems(cls, config: ml_collections.ConfigDict, options: Mapping[str, Any], where: str) -> list[str]:
        problems = super().problems(config, options, where)
        for key, least in ((k, n) for k, n in (("heads", 0), ("depth", 1), ("epochs", 1), ("batch_size", 1))
                           if k in cls.options):  # (a subclass's probe may have no pooler: `linear`)
            value = options.get(key, cls.options[key])
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                problems.append(f"{where}.{key}={value!r} must be a whole number >= {least}.")
        for key, positive in (("lr", True), ("weight_decay", False)):
            value = options.get(key, cls.options[key])
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (positive and not value):
                problems.append(f"{where}.{key}={value!r} must be a number " + ("above 0." if positive else ">= 0."))
        seed = options.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            problems.append(f"{where}.seed={seed!r} must be a whole number (default: config.seed).")
        try:
            models.tokens_part(config.model_name, config.model)
        except ValueError as err:
            problems.append(f"{where}: {err}")
        return problems

    def __init__(self, context: base.EvalContext, **kwargs):
        super().__init__(context, **kwargs)
        self.part = models.tokens_part(self.config.model_name, self.config.model)

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"tokens": the model's tokens, float32 (B, N, D) (B, V x N, D over V eval views), "label" when the data
        has labels}, and the batch's "valid" and "decode_failures" rows."""
        video = batch["video"]
        if video.ndim == 6:  # several eval views: their tokens side by side
            b, v = video.shape[:2]
            tokens = models.video_tokens(model, self.part, video.reshape(b * v, *video.shape[2:]))
            tokens = tokens.reshape(b, v * tokens.shape[1], tokens.shape[2])
        else:
            tokens = models.video_tokens(model, self.part, video)
        passed = {k: batch[k] for k in ("label", "valid", "decode_failures") if k in batch}
        return {"tokens": tokens.astype(jnp.float32), **passed}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        bank, s = self.bank, self.settings
        num_classes = self.num_classes(outputs, "The attentive probe")
        heads = probes.attentive_heads(bank["tokens"].shape[-1], s["heads"], where=f"config.evals.{self.name}.heads")
        scores = probes.train_probe(
            probes.CLASS_LABELS, bank["tokens"], bank["label"].astype(np.int64), outputs["tokens"],
            num_outputs=num_classes, probe="attentive", heads=heads, depth=s["depth"], epochs=s["epochs"],
            lr=s["lr"], weight_decay=s["weight_decay"], batch_size=s["batch_size"],
            seed=int(self.setting("seed", self.config.seed)))
        return {"attentive_top1": metrics.top_k_accuracy(scores, outputs["label"], 1),
                "attentive_top5": metrics.top_k_accuracy(scores, outputs["label"], min(5, num_classes))}
