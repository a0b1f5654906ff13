"""Masked pre-training (VideoMAE): the model reconstructs the tubes batch["mask"] hides (with VideoMAE V2's dual
masking, batch["decoder_mask"], only those at the positions it leaves); evaluated by
`vidjax.evaluators.reconstruction`: its loss, estimated on whole eval batches, and at the end of a run a
reconstruction figure of the first eval clip.

The masks follow one line: config.model (mask_ratio, decoder_mask_type, decoder_mask_ratio) and the model's token
grid make the `vidjax.patches.MaskSpec` of the input spec (`Training.masks`), by which the input path draws them and
from which the loss and the reconstruction evaluator hand the model its counts (`Training.reconstruct`).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vidjax.patches import MaskSpec
from vidjax.tasks import base, presentation, readout


class Training(base.TrainingSpec):
    name = "pretrain"
    head = "pretrain"
    pads_eval = False  # a loss estimate: the eval split is trimmed to whole batches
    evaluator = "reconstruction"

    def masks(self, config: ml_collections.ConfigDict, model) -> MaskSpec:
        if model is None:
            raise ValueError("pre-training draws its masks over the model's token grid: pass the model (an abstract "
                             "one will do) to input_spec.")
        return MaskSpec.of(config.model, model.encoder.grid)

    def reconstruct(self, config: ml_collections.ConfigDict, model, batch: dict, rng: jax.Array | None = None
                    ) -> dict[str, jax.Array]:
        masks = self.masks(config, model)
        return model(batch["video"], batch["mask"], decoder_mask=batch.get("decoder_mask"), rng=rng,
                     num_masked=masks.num_masked, num_decoded=masks.num_decoded)

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        def masked_reconstruction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            return self.reconstruct(config, model, batch, rng)["loss"], {}

        return masked_reconstruction


class Readout(readout.Readout):
    """No head to read: its checkpoints are read through their reconstructions (`python -m vidjax.visualize`, the
    demo) or their features (`python -m vidjax.extract`)."""

    name = Training.name


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(
    name=Training.name, demo_output="reconstruction", demo_head=Training.head,
    description="the masked reconstruction of the middle clip (VideoMAE pre-training, no head)",
    checkpoint_kind="a pre-training", purpose="VideoMAE pre-training (masked reconstruction)")
