"""Masked pre-training (VideoMAE): the model reconstructs the tubes batch["mask"] hides (with VideoMAE V2's dual
masking, batch["decoder_mask"], only those at the positions it leaves); evaluated by
`vidjax.evaluators.reconstruction`: its loss, estimated on whole eval batches, and at the end of a run a
reconstruction figure of the first eval clip."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vidjax.tasks import base


class Pretrain(base.Task):
    name = "pretrain"
    head = "pretrain"
    pads_eval = False  # a loss estimate: the eval split is trimmed to whole batches
    evaluator = "reconstruction"
    # How its results are shown and shared (`base.Task`).
    demo_output = "reconstruction"
    checkpoint_kind = "a pre-training"
    purpose = "VideoMAE pre-training (masked reconstruction)"

    def demo_description(self, top_k: int) -> str:
        return "the masked reconstruction of the middle clip (VideoMAE pre-training, no head)"

    def mask_grid(self, model) -> tuple[int, int, int]:
        return model.encoder.grid

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        def masked_reconstruction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            return model(batch["video"], batch["mask"], decoder_mask=batch.get("decoder_mask"), rng=rng)["loss"], {}

        return masked_reconstruction


TASK = Pretrain()
