"""Masked pre-training (VideoMAE): the masked-reconstruction loss, estimated on whole eval batches (the split is
trimmed to them: `TrainingSpec.pads_eval`), as metric loss; the end of training draws the reconstruction of the first
eval clip (reconstruction.png: original, masked input, reconstruction). Both mask as the task's input spec does and
hand the model the spec's counts: the training spec it was handed reconstructs (`TrainingSpec.reconstruct`).

Options: figure (default config.figure).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from vidjax import losses, sharding, visualize_lib
from vidjax.data import pipeline
from vidjax.evaluators import base


class Evaluator(base.Evaluator):
    requires = {"head": "pretrain"}
    options = {"figure": None}

    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """{"loss": (,)}: the masked reconstruction loss of the batch, and its "decode_failures" rows."""
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        loss = self.spec.reconstruct(self.config, model, batch)["loss"]
        return {"loss": loss, **passed}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {"loss": float(np.mean(outputs["loss"]))}

    def figures(self, params, step: int) -> list[str]:
        if not self.setting("figure", self.config.figure):
            return []
        path = os.path.join(self.context.workdir, self.file_name("reconstruction", "png"))
        write_reconstruction_figure(self.config, self.context.setup, self.spec, params, self.source, path)
        return [path]


def write_reconstruction_figure(config: ml_collections.ConfigDict, setup, spec, params, eval_source,
                                path: str) -> None:
    """Original / masked input / reconstruction of the first eval clip, masked as the task's training spec `spec`
    has the input path mask it, as a PNG (written by process 0)."""
    inputs = spec.input_spec(config, setup.abstract_model)
    masks = inputs.masks
    ds = pipeline.make_dataset(config, "eval", eval_source, inputs, process_index=jax.process_index(),
                               process_count=jax.process_count())
    local = next(iter(ds))
    mean, std = config.model.pixel_mean, config.model.pixel_std

    def predict(params, video, mask, decoder_mask):
        batch = {"video": losses.normalize_video(video, mean, std), "mask": mask, "decoder_mask": decoder_mask}
        out = spec.reconstruct(config, nnx.merge(setup.graphdef, params), batch)
        return {k: out[k][0] for k in ("pred", "masked_ids", "decoded_ids", "loss_mask") if k in out}

    # Only clip 0 is returned, replicated, so every process can read it whatever the mesh.
    predict = jax.jit(predict, out_shardings=sharding.replicated(setup.mesh))
    batch = sharding.global_batch(local, sharding.batch_sharding(setup.mesh))
    out = jax.device_get(predict(params, batch["video"], batch["mask"], batch.get("decoder_mask")))
    if jax.process_index() != 0:
        return
    encoder = setup.abstract_model.encoder
    original = local["video"][0].astype(np.float32) / 255.0
    if "decoded_ids" in out:  # dual masking: predictions at the decoded positions; the masked ones among them drawn
        pred, ids = out["pred"][out["loss_mask"]], out["decoded_ids"][out["loss_mask"]]
    else:
        pred, ids = out["pred"], out["masked_ids"]
    recon = visualize_lib.reconstruct(original, pred, ids, encoder.tubelet, encoder.patch,
                                      norm_pix=config.model.norm_pix_loss, true_stats=False,
                                      hidden_ids=out["masked_ids"])
    masked = visualize_lib.mask_video(original, local["mask"][0].reshape(masks.grid), encoder.tubelet, encoder.patch)
    title = (f"{config.model_name} {config.model.variant}, eval clip 0, mask {masks.ratio:.0%}; "
             f"{visualize_lib.stats_note(config.model.norm_pix_loss, False)}")
    if "decoded_ids" in out:
        title += f"; decoder mask {masks.decoder_kind} {masks.decoder_ratio:.0%} (grey: masked and not decoded)"
    visualize_lib.reconstruction_figure(original, masked, recon, path, title=title)
