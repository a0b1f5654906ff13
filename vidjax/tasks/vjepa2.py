"""V-JEPA 2 self-supervised pre-training (Assran et al., 2025): the encoder learns by predicting, in latent space, the
features an EMA target encoder gives the masked spacetime regions of a clip (`vidjax.models.vjepa2`).

One step, as the official `app/vjepa/train.py` `train_step` (facebookresearch/vjepa2 c2963a4, L424-478):
  1. the input path draws, for every clip, one (context, target) pair of token indices per entry of
     config.vjepa2.masks (`vidjax.data.multiblock`: the official multi-block masks, short-range and long-range
     spatial blocks repeated over time), under the batch keys "context_ids_i" / "target_ids_i", with fixed lengths
     (`multiblock.MultiblockSpec.fixed`, the official batch minimum's typical counts) so every batch has one shape;
  2. `Teacher.before_update`: the target encoder (state["ema_params"]'s encoder) runs the whole clip; its tokens,
     layer-normed without scale or bias (`F.layer_norm`, eps 1e-5), taken at each pair's target indices, become the
     batch's "target_features_i";
  3. the loss: for each pair, the context encoder runs the visible tokens only (`Encoder(keep_ids=...)`, each at its
     own rotary position), the predictor (its mask token i) predicts the features at the target indices, and the
     loss is the mean |prediction - target| ** loss_exp / loss_exp (L1 with the published loss_exp 1), averaged
     over the pairs;
  4. the update: AdamW, no gradient clipping, weight decay on the weight matrices only (the reference's parameter
     groups, `train.optim.decay_mask`); learning rate on `optimizer.schedule="wsd"` (warm-up from start_lr, constant,
     linear cool-down);
  5. the target encoder follows with a momentum linear from config.vjepa2.ema[0] to ema[1] over the run
     (`Teacher.ema_schedule`; published 0.99925 constant).
Logged every step: `target_std`, the per-dimension standard deviation of the (layer-normed) target features over
the batch's tokens, averaged over the dimensions: it falls to 0 if the target encoder collapses to one output.

Evaluation: the attentive probe (`vidjax.evaluators.attentive`) on the frozen target encoder's tokens, trained on the
training split and scored on the eval split, `eval_attentive_top1`; a fresh run scores its random initial weights
once too (`eval_attentive_top1_init`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax.config_lib import ConfigError
from vidjax.data import multiblock
from vidjax.models import layers
from vidjax.models import vjepa2 as vjepa2_model
from vidjax.patches import grid_shape
from vidjax.tasks import base, presentation, readout

TARGET_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm's default, as the official target normalisation


def grid(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The token grid (t', h', w') of a training clip: config.data's frames and size over the model's tubelet and
    patch."""
    patch = vjepa2_model.dims(config.model)["patch"]
    return grid_shape((int(config.data.num_frames), int(config.data.image_size), int(config.data.image_size)),
                      int(config.model.tubelet_size), patch)


def mask_spec(config: ml_collections.ConfigDict) -> multiblock.MultiblockSpec:
    """The multi-block masks of config.vjepa2 over the training clip's grid, with their fixed lengths (`keep`, one
    (context, target) pair per mask entry; () = the official batch minimum's typical counts at
    config.vjepa2.keep_batch_size, `multiblock.official_keep`)."""
    s = config.vjepa2
    masks = tuple(multiblock.BlockMask(**dict(entry)) for entry in s.masks)
    if s.keep:
        return multiblock.MultiblockSpec(grid=grid(config), masks=masks,
                                         keep=tuple(tuple(int(v) for v in pair) for pair in s.keep))
    return multiblock.MultiblockSpec.fixed(grid(config), masks, batch_size=int(s.keep_batch_size))


@dataclasses.dataclass(frozen=True)
class MaskFields:
    """The input workers' per-clip masks (`TrainingSpec.element_fields`): {"context_ids_i", "target_ids_i"} int32
    (length,) each, drawn with the element's generator. The official collator draws one block size per batch; here
    each clip draws its own (the same rules, one clip a call)."""

    spec: multiblock.MultiblockSpec

    def __call__(self, element: dict, rng: np.random.Generator | None) -> dict:
        return {key: value[0] for key, value in self.spec.draw(rng, 1).items()}


def num_pairs(config: ml_collections.ConfigDict) -> int:
    return len(config.vjepa2.masks)


class Teacher(base.Teacher):
    """The EMA target encoder: its layer-normed features at the target positions before the loss, their spread and
    the momentum after the update."""

    def ema_schedule(self, config: ml_collections.ConfigDict, total_steps: int):
        start, end = (float(v) for v in config.vjepa2.ema)
        steps = max(int(total_steps), 1)
        return lambda step: start + (end - start) * jnp.minimum(step, steps) / steps

    def before_update(self, config: ml_collections.ConfigDict, setup, state: dict, batch: dict
                      ) -> tuple[dict, dict]:
        target_encoder = nnx.merge(setup.graphdef, state["ema_params"]).encoder
        # Each token's features to mean 0 and variance 1, no scale or bias (the official target norm).
        features = jax.lax.stop_gradient(layers.layer_norm(target_encoder(batch["video"]).astype(jnp.float32),
                                                           1.0, 0.0, TARGET_NORM_EPS))
        fields = {f"target_features_{i}": vjepa2_model.gather(features, batch[f"target_ids_{i}"])
                  for i in range(num_pairs(config))}
        spread = jnp.mean(jnp.std(features.reshape(-1, features.shape[-1]), axis=0))
        return fields, {"target_std": spread}

    def after_update(self, config: ml_collections.ConfigDict, setup, state: dict, carry: dict) -> tuple[dict, dict]:
        momentum = self.ema_schedule(config, setup.total_steps)(state["step"])
        return {}, {"target_std": carry["target_std"], "target_momentum": momentum}


def predict_targets(model, video: jax.Array, context_ids: jax.Array, target_ids: jax.Array, mask_index: int,
                    rng: jax.Array | None = None) -> jax.Array:
    """The predictor's features (B, n_target, D) at `target_ids` from the context encoder's tokens of the visible
    `context_ids` alone (the official `forward_context`), with the predictor's mask token `mask_index`."""
    rng_enc, rng_pred = jax.random.split(rng) if rng is not None else (None, None)
    _, h, w = model.encoder.grid(video)
    context = model.encoder(video, rng_enc, keep_ids=context_ids)
    return model.predictor(context, context_ids, target_ids, (h, w), mask_index=mask_index, rng=rng_pred)


class Training(base.TrainingSpec):
    name = "vjepa2"
    head = "none"  # the encoder and predictor of `vidjax.models.vjepa2`, no classifier
    model_name, recipe = "vjepa2", "configs/vjepa2.py"
    pads_eval = True
    evaluator = "attentive"  # vidjax.evaluators.attentive: an attentive probe on the frozen target encoder
    teacher = Teacher()

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        if "vjepa2" not in config:
            return ["config.task='vjepa2' needs a config.vjepa2 block (masks, EMA momenta, loss exponent): start from "
                    "configs/vjepa2.py."]
        problems = []
        s = config.vjepa2
        if config.optimizer.ema_decay:
            problems.append(f"config.optimizer.ema_decay={config.optimizer.ema_decay}: V-JEPA 2's target encoder is "
                            f"the moving average, on config.vjepa2.ema's schedule; set ema_decay to 0.")
        if len(s.ema) != 2 or not all(0 <= float(v) <= 1 for v in s.ema):
            problems.append(f"config.vjepa2.ema={tuple(s.ema)} must be two momenta in [0, 1] (start, end).")
        if s.loss_exp <= 0:
            problems.append(f"config.vjepa2.loss_exp={s.loss_exp} must be > 0 (1: L1, the published loss).")
        if not s.masks:
            problems.append("config.vjepa2.masks is empty: give at least one multi-block mask entry "
                            "(vidjax.data.multiblock.VJEPA2_MASKS are the published ones).")
        elif int(config.model.num_mask_tokens) < len(s.masks):
            problems.append(f"config.model.num_mask_tokens={config.model.num_mask_tokens} but config.vjepa2.masks "
                            f"has {len(s.masks)} entries: the predictor keeps one mask token per entry; set "
                            f"--config.model.num_mask_tokens={len(s.masks)}.")
        if s.keep and len(s.keep) != len(s.masks):
            problems.append(f"config.vjepa2.keep has {len(s.keep)} (context, target) pairs for {len(s.masks)} mask "
                            f"entries; give one pair per entry, or () for the official counts.")
        if not config.model.predictor:
            problems.append("config.model.predictor=False: pre-training needs the predictor; set it to True.")
        if config.data.num_samples != 1:
            problems.append(f"config.data.num_samples={config.data.num_samples}: V-JEPA 2 draws one set of masks a "
                            f"clip and takes one clip a video; set it to 1.")
        if not problems:
            try:
                mask_spec(config)
            except (ConfigError, ValueError, TypeError) as err:
                problems.append(f"config.vjepa2.masks: {err}")
        return problems

    # ---- what the input path gives it ----
    def element_fields(self, config: ml_collections.ConfigDict, train: bool) -> MaskFields | None:
        return MaskFields(mask_spec(config)) if train else None

    # ---- training ----
    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        pairs, loss_exp = num_pairs(config), float(config.vjepa2.loss_exp)

        def latent_prediction(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            rngs = jax.random.split(rng, pairs) if rng is not None else [None] * pairs
            metrics, total = {}, 0.0
            for i in range(pairs):
                predicted = predict_targets(model, batch["video"], batch[f"context_ids_{i}"],
                                            batch[f"target_ids_{i}"], i, rngs[i]).astype(jnp.float32)
                error = jnp.abs(predicted - batch[f"target_features_{i}"])
                loss = jnp.mean(error if loss_exp == 1 else error ** loss_exp) / loss_exp
                metrics[f"loss_mask_{i}"] = loss
                total = total + loss
            return total / pairs, metrics

        return latent_prediction


class Readout(readout.Readout):
    """Its checkpoints are read through their features (`python -m vidjax.extract`, `probe`, the attentive
    evaluator) or the predictor (`vidjax.pretrained.load(...).forward(video, context_ids=, target_ids=)`)."""

    name = Training.name


def default_config() -> ml_collections.ConfigDict:
    """The config.vjepa2 block: the published pre-training's masks, EMA momenta and loss (configs/train/vitl16/
    pretrain-256px-16f.yaml of facebookresearch/vjepa2; the same in vith16 and vitg16)."""
    return ml_collections.ConfigDict(dict(
        # The multi-block mask entries (`multiblock.BlockMask` keys): short-range (8 blocks of 15% of a frame) and
        # long-range (2 blocks of 70%), aspect ratios 0.75-1.5, every block spanning the whole clip.
        masks=[dataclasses.asdict(m) for m in multiblock.VJEPA2_MASKS],
        keep=(),  # fixed (context, target) lengths per entry; () = the official batch minimum's typical counts
        keep_batch_size=multiblock.OFFICIAL_BATCH_SIZE,  # the per-GPU batch those counts are the minimum over
        ema=(0.99925, 0.99925),  # the target encoder's momentum, linear from [0] to [1] over the run
        loss_exp=1.0,  # |prediction - target| ** loss_exp / loss_exp: 1 = L1
    ))


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(name=Training.name, checkpoint_kind="a V-JEPA 2 self-supervised")
