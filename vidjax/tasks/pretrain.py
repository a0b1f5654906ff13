"""Masked pre-training (VideoMAE): the model reconstructs the tubes batch["mask"] hides (with VideoMAE V2's dual
masking, batch["decoder_mask"], only those at the positions it leaves); its loss is the task's only metric,
estimated on whole eval batches; the run ends with a reconstruction figure of the first eval clip."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from vidjax import losses, sharding, visualize_lib
from vidjax.data import pipeline
from vidjax.tasks import base


class Pretrain(base.Task):
    name = "pretrain"
    head = "pretrain"
    pads_eval = False  # a loss estimate: the eval split is trimmed to whole batches

    def mask_grid(self, model) -> tuple[int, int, int]:
        return model.encoder.grid

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        def masked_reconstruction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            return model(batch["video"], batch["mask"], decoder_mask=batch.get("decoder_mask"), rng=rng)["loss"], {}

        return masked_reconstruction

    def eval_outputs(self, config: ml_collections.ConfigDict, model, batch: dict) -> dict[str, jax.Array]:
        """{"loss": (,)}: the masked reconstruction loss of the batch, and its "decode_failures" rows."""
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        loss = model(batch["video"], batch["mask"], decoder_mask=batch.get("decoder_mask"))["loss"]
        return {"loss": loss, **passed}

    def split_metrics(self, outputs: dict[str, np.ndarray], context: base.SplitContext) -> dict[str, float]:
        return {"loss": float(np.mean(outputs["loss"]))}

    def training_figures(self, end: base.TrainingEnd) -> list[str]:
        if not end.config.figure:
            return []
        path = os.path.join(end.workdir, "reconstruction.png")
        write_reconstruction_figure(end.config, end.setup, end.params, end.eval_source, end.mask_grid, path)
        return [path]


def write_reconstruction_figure(config: ml_collections.ConfigDict, setup, params, eval_source, mask_grid,
                                path: str) -> None:
    """Original / masked input / reconstruction of the first eval clip, as a PNG (written by process 0)."""
    ds = pipeline.make_dataset(config, "eval", eval_source, process_index=jax.process_index(),
                               process_count=jax.process_count(), mask_grid=mask_grid)
    local = next(iter(ds))
    mean, std = config.model.pixel_mean, config.model.pixel_std

    def predict(params, video, mask, decoder_mask):
        out = nnx.merge(setup.graphdef, params)(losses.normalize_video(video, mean, std), mask,
                                                decoder_mask=decoder_mask)
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
    masked = visualize_lib.mask_video(original, local["mask"][0].reshape(mask_grid), encoder.tubelet, encoder.patch)
    title = (f"{config.model_name} {config.model.variant}, eval clip 0, mask {config.model.mask_ratio:.0%}; "
             f"{visualize_lib.stats_note(config.model.norm_pix_loss, False)}")
    if "decoded_ids" in out:
        title += (f"; decoder mask {config.model.decoder_mask_type} {config.model.decoder_mask_ratio:.0%} (grey: "
                  f"masked and not decoded)")
    visualize_lib.reconstruction_figure(original, masked, recon, path, title=title)


TASK = Pretrain()
