"""Unmasked-teacher distillation (UMT, Li et al. 2023; VideoMamba's masked pre-training): a student video encoder
learns to give, from a part of a clip's tokens, the features a frozen teacher gives those tokens from the whole clip
(`vidjax.models.distill`).

One step, as OpenGVLab/unmasked_teacher's `engine_for_pretraining_umt.train_one_epoch`:
  1. the teacher (config.distill.teacher: a converted CLIP or SigLIP vision tower, a training run, a Hub name; held
     fixed) runs the whole clip under `stop_gradient`: the clip renormalised to the teacher's statistics, its frames
     taken evenly to the teacher's count (every tubelet-th for a per-frame teacher) and resized to the teacher's size
     (bicubic, as UMT's `interpolate`); it gives its last `num_layers` blocks' tokens and the attention over each
     time slice's tokens (`layer_targets`);
  2. the mask (config.distill.mask_type): "attention" keeps, in each time slice of each clip, the same count of its
     tokens drawn without replacement in proportion to the teacher's attention (UMT's `torch.multinomial`; here the
     Gumbel top-k, the same distribution: `attention_mask`); "random" the same count uniformly; "tube" the input
     path's tube masks (the same positions in every slice). Each masks int((1 - keep_ratio) x h' x w') tokens a
     slice: `patches.MaskSpec`'s count, so every clip keeps exactly as many;
  3. the loss: the student runs the visible tokens only, its last `num_layers` blocks' tokens go through the alignment
     heads, and config.distill.loss "cosine" is the mean of 2 - 2 cos(student, teacher) over the layers and the
     visible tokens (UMT's "l2", features at unit length), "mse" their mean squared difference.
The teacher's grid of tokens must be the student's; a config where it is not is refused at start-up, naming the
teacher sizes that would match.

Evaluation: the attentive probe (`vidjax.evaluators.attentive`) on the student's tokens; a fresh run scores its random
initial weights once too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax.config_lib import ConfigError
from vidjax.models import distill as distill_model
from vidjax.models import traits
from vidjax.models.videomae import split_mask
from vidjax.patches import MaskSpec
from vidjax.tasks import base, presentation, readout

MASK_TYPES = ("attention", "random", "tube")
LOSSES = ("cosine", "mse")


def attention_mask(rng: jax.Array, attention: jax.Array, keep: int) -> jax.Array:
    """bool (B, T x N), True = masked: in each of the T slices of each clip, `keep` of its N tokens kept, drawn
    without replacement with probabilities in proportion to `attention` (B, T, N) (non-negative; each draw among the
    tokens left). The Gumbel top-k: the `keep` largest of log(attention) + Gumbel noise are such a draw (UMT's
    `torch.multinomial(attn, N)[:, :keep]`). A token of zero attention is kept only when fewer than `keep` have any."""
    b, t, n = attention.shape
    logits = jnp.log(jnp.maximum(attention.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
    scores = logits + jax.random.gumbel(rng, attention.shape)
    ranks = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
    return (ranks >= keep).reshape(b, t * n)


def masked_per_slice(config: ml_collections.ConfigDict, grid: tuple[int, int, int]) -> int:
    """The tokens masked in each time slice of the student's token grid: int((1 - keep_ratio) x h' x w'), as
    `patches.MaskSpec` counts them (0 with keep_ratio 1: the whole clip)."""
    return int((1.0 - float(config.distill.keep_ratio)) * grid[1] * grid[2])


def teacher_clip(video: jax.Array, student_stats: tuple, teacher_stats: tuple, frames: int, size: int) -> jax.Array:
    """The student's normalised clip (B, T, H, W, 3) as the teacher takes it: renormalised from the student's (mean,
    std) to the teacher's, `frames` of its T taken evenly (every T / frames-th), resized to `size` (bicubic)."""
    (mean_s, std_s), (mean_t, std_t) = student_stats, teacher_stats
    x = video.astype(jnp.float32)
    if (mean_s, std_s) != (mean_t, std_t):
        x = (x * jnp.asarray(std_s) + jnp.asarray(mean_s) - jnp.asarray(mean_t)) / jnp.asarray(std_t)
    x = x[:, :: x.shape[1] // frames][:, :frames]
    if x.shape[2:4] != (size, size):
        x = jax.image.resize(x, (*x.shape[:2], size, size, 3), method="cubic")
    return x


class Training(base.TrainingSpec):
    name = "distill"
    head = None  # the model is `vidjax.models.distill` (student, teacher, alignment heads)
    model_name, recipe = "distill", "configs/umt.py"
    pads_eval = True
    evaluator = "attentive"  # vidjax.evaluators.attentive: an attentive probe on the student's tokens

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        if "distill" not in config:
            return ["config.task='distill' needs a config.distill block (teacher, mask, keep ratio, loss): start "
                    "from configs/umt.py."]
        d, problems = config.distill, []
        if not d.teacher:
            problems.append("config.distill.teacher is empty: name the frozen teacher (a converted CLIP or SigLIP "
                            "vision tower, a training run or a Hub name; `python -m vidjax.convert --from_hf "
                            "openai/clip-vit-base-patch16 --out DIR` makes one).")
        if d.mask_type not in MASK_TYPES:
            problems.append(f"config.distill.mask_type={d.mask_type!r}: choose one of {', '.join(MASK_TYPES)}.")
        if d.loss not in LOSSES:
            problems.append(f"config.distill.loss={d.loss!r}: choose one of {', '.join(LOSSES)}.")
        if not 0.0 < float(d.keep_ratio) <= 1.0:
            problems.append(f"config.distill.keep_ratio={d.keep_ratio} is the share of each time slice's tokens the "
                            f"student sees: give a value in (0, 1] (UMT's 0.2: 80% masked).")
        try:
            distill_model.check_roles(config.model)
            takes = traits(config.model.student_name).distill_masks
            if d.mask_type in MASK_TYPES and d.mask_type not in takes and float(d.keep_ratio) < 1.0:
                problems.append(f"config.distill.mask_type={d.mask_type!r}: a {config.model.student_name} student "
                                f"takes {' or '.join(takes)} masks only (the tokens its attention can run on): use "
                                f"--config.distill.mask_type={takes[0]}, or keep_ratio 1.0 for the whole clip.")
            problem = distill_model.grid_problem(config.model)
            if problem:
                problems.append(problem)
            elif 0.0 < float(d.keep_ratio) < 1.0 and d.mask_type in MASK_TYPES:
                grid = tuple(distill_model.abstract(config.model).student.distill_grid)
                if masked_per_slice(config, grid) == 0:
                    problems.append(f"config.distill.keep_ratio={d.keep_ratio} masks no token of a "
                                    f"{grid[1]}x{grid[2]} slice: lower it, or 1.0 for the whole clip.")
        except ConfigError as err:
            problems.append(str(err))
        if int(config.model.num_layers) < 1:
            problems.append(f"config.model.num_layers={config.model.num_layers}: align at least the last block.")
        return problems

    def init_targets(self, config: ml_collections.ConfigDict) -> list[base.InitTarget]:
        """The teacher, from config.distill.teacher (its architecture taken; its clip the run's); the whole model
        from config.init_from when set."""
        targets = super().init_targets(config)
        try:
            distill_model.check_roles(config.model)
        except ConfigError:
            return targets  # the model's families are the problem (config_problems says so), not the checkpoint
        if config.distill.teacher:
            targets.append(base.InitTarget("config.distill.teacher", config.distill.teacher,
                                           config.model.teacher_name, (distill_model.TEACHER,),
                                           (distill_model.TEACHER,)))
        return targets

    def masks(self, config: ml_collections.ConfigDict, model) -> MaskSpec | None:
        """Tube masks are drawn by the input path; attention and random masks in the step (None here)."""
        if config.distill.mask_type != "tube" or float(config.distill.keep_ratio) >= 1.0:
            return None
        if model is None:
            raise ValueError("tube masks are drawn over the student's token grid: pass the model (an abstract one "
                             "will do) to input_spec.")
        grid = tuple(int(v) for v in model.student.distill_grid)
        return MaskSpec(grid=grid, ratio=1.0 - float(config.distill.keep_ratio))

    # ---- training ----
    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        d, m = config.distill, config.model
        student_stats = (tuple(m.student.pixel_mean), tuple(m.student.pixel_std))
        teacher_stats = (tuple(m.teacher.pixel_mean), tuple(m.teacher.pixel_std))
        frames, size = int(m.teacher.num_frames), int(m.teacher.image_size)

        def distillation(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            video = batch["video"]
            mask_rng, rng = jax.random.split(rng if rng is not None else jax.random.key(0))
            clip = teacher_clip(video, student_stats, teacher_stats, frames, size)
            targets, attention = jax.lax.stop_gradient(model.teacher.layer_targets(clip, model.num_layers))
            grid = model.student.distill_grid
            per_slice = masked_per_slice(config, grid)
            if d.mask_type == "tube" and per_slice:
                mask = batch["mask"]
            else:
                weights = attention if d.mask_type == "attention" else jnp.ones_like(attention)
                mask = attention_mask(mask_rng, weights, grid[1] * grid[2] - per_slice)
            visible, _ = split_mask(mask, per_slice * grid[0])
            student = model.aligned(video, visible, rng)  # (layers, B, K, target)
            target = jnp.take_along_axis(targets.astype(jnp.float32), visible[None, :, :, None], axis=2)
            if m.l2_normalize:
                target = target / jnp.linalg.norm(target, axis=-1, keepdims=True)
            if d.loss == "cosine":
                loss = jnp.mean(2.0 - 2.0 * jnp.sum(student * target, axis=-1))
            else:
                loss = jnp.mean(jnp.square(student - target))
            return loss, {"kept_tokens": jnp.asarray(visible.shape[1], jnp.float32)}

        return distillation


class Readout(readout.Readout):
    """Its checkpoints are read through the student's features (`python -m vidjax.extract`, the probes) and
    fine-tuned through `init_from`."""

    name = Training.name


def default_config() -> ml_collections.ConfigDict:
    """The config.distill block: UMT-B/16's published settings (its exp/pretraining/b16_ptk710_f8_res224.sh)."""
    return ml_collections.ConfigDict(dict(
        teacher="",  # the frozen teacher: a converted CLIP / SigLIP tower, a training run, a Hub name
        mask_type="attention",  # attention | random | tube
        keep_ratio=0.2,  # the share of each time slice's tokens the student sees (UMT's mask_ratio 0.8)
        loss="cosine",  # cosine (2 - 2 cos, UMT's "l2") | mse
    ))


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(name=Training.name, checkpoint_kind="an unmasked-teacher distillation",
                                         purpose="unmasked-teacher distillation (UMT)")
