"""SVT self-supervised pre-training (Ranasinghe et al., CVPR 2022): a student and an EMA teacher of
`vidjax.models.svt` matched DINO-style across views of one clip that differ in size, extent and frame rate.

One step, as SVT's train_ssl.py `train_one_epoch`:
  1. the training element arrives as the views of `config.svt` (`vidjax.data.views`: 2 global, N local), grouped
     by shape under "views_{T}x{size}" keys;
  2. `Teacher.before_update`: the teacher (state["ema_params"]) runs the global views; its logits, centred by
     state["center"] and divided by the teacher temperature, become the batch's "teacher_targets" (B, 2, K);
  3. the loss: the student runs every view (one backbone call per view shape) and `losses.dino_loss` averages the
     cross-entropy over every (teacher view, other student view) pair;
  4. the update: per-tensor gradient clipping (config.optimizer.grad_clip 3.0, grad_clip_mode "per_tensor"), the
     DINO head's last layer held fixed for the first config.svt.freeze_last_layer_epochs (`Teacher.hold`: no
     gradient, no update, no weight decay), AdamW with the weight decay on a cosine
     (config.optimizer.weight_decay_end);
  5. `Teacher.after_update`: the teacher follows the student with a momentum on a cosine from
     config.svt.teacher_momentum to 1 (the trainer's EMA, `Teacher.ema_schedule`); the centre is an EMA
     (config.svt.center_momentum) of the teacher's mean output over the global batch.
The teacher's output entropy (centred and sharpened, `losses.teacher_entropy`) is logged every step: it rises to
log(out_dim) when the targets turn uniform; and the entropy of its batch-mean output (`losses.teacher_batch_entropy`;
with config.grad_accum_steps, the mean of each micro-batch's), which falls to 0 when one output dimension takes over:
the two collapses centring and sharpening hold off.

Evaluation (`vidjax.evaluators.knn`) is DINO's weighted k-NN (cosine, config.svt.knn_k neighbours, temperature
config.svt.knn_temperature) on the teacher backbone's CLS features: the eval split's clips are classified against
the training split's, both read as eval clips (centre crop, `config.data.num_frames` at `sampling_rate`):
`eval_knn_top1`, `eval_knn_top5`. A fresh run also scores its random-init teacher once (`eval_knn_top1_init`), so
every run shows what training added.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import losses
from vidjax.data import views
from vidjax.tasks import base, presentation, readout


def view_spec(config: ml_collections.ConfigDict) -> views.ViewSpec:
    """The views of config.svt: globals of config.data's clip (num_frames at sampling_rate, image_size), locals of
    svt.local_size; frame counts from svt.global_frames / local_frames (0: num_frames), or the reference's RAND_FR
    counts with svt.rand_fr."""
    s, d = config.svt, config.data
    if s.rand_fr:
        global_frames, local_frames = views.RAND_FR_GLOBAL_FRAMES, views.RAND_FR_LOCAL_FRAMES
    else:
        global_frames = tuple(int(n) or None for n in s.global_frames) or (None, None)
        local_frames = tuple(int(n) or None for n in s.local_frames) or (None,) * int(s.num_local)
    return views.ViewSpec(
        num_frames=d.num_frames, sampling_rate=d.sampling_rate, global_frames=global_frames,
        local_frames=local_frames, global_size=d.image_size, local_size=s.local_size,
        global_scale=tuple(s.global_scale), local_scale=tuple(s.local_scale), global_shift=s.global_shift,
        local_fraction=s.local_fraction, flip_p=s.flip_p, jitter_p=s.jitter_p, brightness=s.brightness,
        contrast=s.contrast, saturation=s.saturation, hue=s.hue, grayscale_p=s.grayscale_p,
        interpolation=s.interpolation)


def view_list(config: ml_collections.ConfigDict, batch: dict, global_only: bool = False) -> list[jax.Array]:
    """The views of a batch's group arrays as a list in spec order (globals first), each (B, T, H, W, 3)."""
    spec = view_spec(config)
    by_view: dict[int, jax.Array] = {}
    for group in views.view_groups(spec):
        for j, view in enumerate(group.views):
            if not global_only or spec.is_global(view):
                by_view[view] = batch[group.key][:, j]
    return [by_view[v] for v in sorted(by_view)]


class Teacher(base.Teacher):
    """The EMA teacher: its targets from the global views before the loss, the centre and the logged entropies after
    the update, the DINO head's last layer held fixed at the start."""

    def ema_schedule(self, config: ml_collections.ConfigDict, total_steps: int):
        return losses.teacher_momentum_schedule(total_steps, base=config.svt.teacher_momentum)

    def extra_state(self, config: ml_collections.ConfigDict) -> dict:
        return {"center": jnp.zeros((int(config.model.out_dim),), jnp.float32)}

    def _teacher_temp(self, config: ml_collections.ConfigDict, setup, step: jax.Array) -> jax.Array:
        s = config.svt
        return losses.teacher_temp_schedule(setup.steps_per_epoch, s.warmup_teacher_temp_epochs,
                                            s.warmup_teacher_temp, s.teacher_temp)(step)

    def before_update(self, config: ml_collections.ConfigDict, setup, state: dict, batch: dict
                      ) -> tuple[dict, dict]:
        teacher = nnx.merge(setup.graphdef, state["ema_params"])
        logits = jax.lax.stop_gradient(teacher.views(view_list(config, batch, global_only=True)))
        temp = self._teacher_temp(config, setup, state["step"])
        targets = jnp.stack([(t.astype(jnp.float32) - state["center"]) / temp for t in logits], axis=1)
        carry = {"teacher_mean": jnp.mean(jnp.concatenate(logits, axis=0).astype(jnp.float32), axis=0),
                 "teacher_entropy": losses.teacher_entropy(logits, state["center"], temp),
                 "teacher_batch_entropy": losses.teacher_batch_entropy(logits, state["center"], temp),
                 "teacher_temp": temp}
        return {"teacher_targets": targets}, carry

    def hold(self, config: ml_collections.ConfigDict, setup, tree, step: jax.Array):
        """The DINO head's last layer is held fixed for the first svt.freeze_last_layer_epochs epochs (DINO's
        `cancel_gradients_last_layer`: training is unstable if it moves while the rest is random)."""
        freeze_steps = int(round(config.svt.freeze_last_layer_epochs * setup.steps_per_epoch))
        if freeze_steps <= 0:
            return tree
        held = step < freeze_steps
        last = jax.tree.map(lambda x: jnp.where(held, jnp.zeros_like(x), x), tree["head"]["last_layer"])
        return {**tree, "head": {**tree["head"], "last_layer": last}}

    def after_update(self, config: ml_collections.ConfigDict, setup, state: dict, carry: dict) -> tuple[dict, dict]:
        center = losses.update_center(state["center"], carry["teacher_mean"][None], config.svt.center_momentum)
        momentum = self.ema_schedule(config, setup.total_steps)(state["step"])
        return {"center": center}, {"teacher_entropy": carry["teacher_entropy"],
                                    "teacher_batch_entropy": carry["teacher_batch_entropy"],
                                    "teacher_temp": carry["teacher_temp"], "teacher_momentum": momentum}


class Training(base.TrainingSpec):
    name = "svt"
    head = None  # the model is `vidjax.models.svt` (backbone + DINO head), not a head choice of a video model
    model_name, recipe = "svt", "configs/svt_k400.py"
    pads_eval = True
    evaluator = "knn"  # vidjax.evaluators.knn: the k-NN of the teacher's features, the initial weights' too
    teacher = Teacher()

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = []
        if "svt" not in config:
            problems.append("config.task='svt' needs a config.svt block (views, temperatures, momenta, k-NN): start "
                            "from configs/svt_k400.py.")
            return problems
        try:
            view_spec(config)
        except ValueError as err:
            problems.append(f"config.svt: {err}")
        if config.optimizer.ema_decay:
            problems.append(f"config.optimizer.ema_decay={config.optimizer.ema_decay}: SVT's teacher is the moving "
                            f"average, on config.svt.teacher_momentum's cosine; set ema_decay to 0.")
        if not 0 <= config.svt.teacher_momentum <= 1 or not 0 <= config.svt.center_momentum < 1:
            problems.append(f"config.svt.teacher_momentum={config.svt.teacher_momentum} must be in [0, 1] and "
                            f"center_momentum={config.svt.center_momentum} in [0, 1).")
        if min(config.svt.student_temp, config.svt.teacher_temp, config.svt.warmup_teacher_temp) <= 0:
            problems.append("config.svt: student_temp, teacher_temp and warmup_teacher_temp must be > 0.")
        if config.svt.knn_k < 1 or config.svt.knn_temperature <= 0:
            problems.append(f"config.svt.knn_k={config.svt.knn_k} must be >= 1 and knn_temperature="
                            f"{config.svt.knn_temperature} > 0.")
        return problems

    def view_spec(self, config: ml_collections.ConfigDict) -> views.ViewSpec:
        return view_spec(config)

    # ---- training ----
    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        student_temp = config.svt.student_temp

        def self_distillation(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            student = model.views(view_list(config, batch), rng=rng)
            targets = batch["teacher_targets"]  # centred and sharpened already: temperature 1, centre 0 here
            teacher = [targets[:, i] for i in range(targets.shape[1])]
            loss = losses.dino_loss(student, teacher, jnp.zeros(targets.shape[-1], jnp.float32),
                                    student_temp=student_temp, teacher_temp=1.0)
            return loss, {}

        return self_distillation


class Readout(readout.Readout):
    """Its checkpoints are read through their features (`python -m vidjax.extract`, the k-NN evaluator)."""

    name = Training.name


def default_config() -> ml_collections.ConfigDict:
    """The config.svt block: SVT's published settings (kahnchana/svt train_ssl.py defaults and its 8x32 Kinetics
    recipe). Views: 2 global of the data's clip and `num_local` local ones of `local_size` px, with the augmentation
    of `vidjax.data.views`; frame counts 0 = config.data.num_frames, or the reference's RAND_FR with rand_fr."""
    return ml_collections.ConfigDict(dict(
        num_local=8, local_size=96,
        global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
        rand_fr=False,  # the reference's DATA.RAND_FR: globals 4 and 8 frames, locals 2, 2, 4, 4, 8, 8, 16, 16
        global_frames=(), local_frames=(),  # explicit frame counts per view (0 = num_frames); () = the defaults
        global_shift=5, local_fraction=8,  # the globals lie at the window's ends; locals span 1/8 of it
        flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.0, grayscale_p=0.2,
        interpolation="bicubic",
        student_temp=0.1,
        teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0,
        center_momentum=0.9,
        teacher_momentum=0.996,  # the teacher's EMA momentum, on a cosine to 1 over the run
        freeze_last_layer_epochs=1.0,
        knn_k=20, knn_temperature=0.07,
    ))


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(name=Training.name, checkpoint_kind="an SVT self-supervised")
