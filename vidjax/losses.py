"""Loss maths the tasks share: input normalisation, batch concordance correlation, weighted binary cross-entropy,
and DINO self-distillation (SVT): the multi-view loss, the teacher's centre, EMA and schedules, a collapse monitor.

Each task's loss (and its eval outputs) lives in its module, `vidjax.tasks.<task>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def normalize_video(video_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x/255 - mean) / std, done on the device inside the jitted step."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (video_u8.astype(jnp.float32) / 255.0 - mean) / std


def batch_ccc(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Concordance correlation per column of (B, K) predictions and targets, over the batch (population moments)."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    denom = pred.var(0) + target.var(0) + (pm - tm) ** 2
    return 2 * cov / jnp.maximum(denom, 1e-8)


def weighted_bce(logits: jax.Array, targets: jax.Array, pos_weight: jax.Array | None = None) -> jax.Array:
    """Elementwise sigmoid binary cross-entropy; `pos_weight` (C,) scales the positive term (PyTorch semantics)."""
    pos = targets * jax.nn.softplus(-logits)
    if pos_weight is not None:
        pos = pos * pos_weight
    return pos + (1.0 - targets) * jax.nn.softplus(logits)


# ----------------------------------------------------------------------------------- DINO self-distillation (SVT)
# As SVT's train_ssl.py (`DINOLoss`, the EMA in `train_one_epoch`) and its utils.py `cosine_scheduler`, which are
# DINO's (facebookresearch/dino main_dino.py, utils.py).

Schedule = Callable[[jax.Array | int], jax.Array]


def _rows(logits: jax.Array | Sequence[jax.Array], name: str) -> jax.Array:
    """Views' logits (each (B, K)) stacked into one (N, K) float32 array of rows."""
    views = [logits] if hasattr(logits, "ndim") else list(logits)
    if not views or any(v.ndim != 2 or v.shape[1] != views[0].shape[1] for v in views):
        raise ValueError(f"{name} must be one (B, K) array or a non-empty list of them with one K; got shapes "
                         f"{[tuple(v.shape) for v in views]}.")
    return jnp.concatenate(views, axis=0).astype(jnp.float32)


def dino_loss(student_logits: Sequence[jax.Array], teacher_logits: Sequence[jax.Array], center: jax.Array,
              student_temp: float = 0.1, teacher_temp: float | jax.Array = 0.04) -> jax.Array:
    """DINO's multi-view cross-entropy: a float32 scalar.

    `student_logits`: the student's (B, K) logits per view, the global views first (SVT: 2 global then 8 local);
    `teacher_logits`: the teacher's (B, K) per global view, in the same order; `center` (K,).
    For every pair (teacher view iq, student view v) with v != iq, the cross-entropy
    sum_k -softmax((t_iq - center) / teacher_temp)_k * log_softmax(s_v / student_temp)_k is averaged over the batch;
    the result is the mean over those pairs. Student view iq is the teacher's own view iq (the same crop), so that
    pair is skipped: with 2 global and N local views there are 2 * (N + 2) - 2 pairs. No gradient reaches the
    teacher's logits (the reference detaches them). `teacher_temp` may be a traced value from
    `teacher_temp_schedule`.
    """
    if not student_logits or not teacher_logits:
        raise ValueError(f"dino_loss needs student and teacher views; got {len(student_logits)} student and "
                         f"{len(teacher_logits)} teacher views.")
    if len(teacher_logits) > len(student_logits):
        raise ValueError(f"dino_loss: {len(teacher_logits)} teacher views but only {len(student_logits)} student "
                         f"views; the teacher sees the global views, which the student sees too, first.")
    shape = tuple(teacher_logits[0].shape)
    shapes = [tuple(x.shape) for x in (*student_logits, *teacher_logits)]
    if len(shape) != 2 or any(s != shape for s in shapes):
        raise ValueError(f"dino_loss needs (B, K) logits of one shape for every view; got student "
                         f"{shapes[:len(student_logits)]} and teacher {shapes[len(student_logits):]}.")
    log_p = [jax.nn.log_softmax(s.astype(jnp.float32) / student_temp, axis=-1) for s in student_logits]
    center = center.astype(jnp.float32)
    total, terms = jnp.float32(0.0), 0
    for iq, t in enumerate(teacher_logits):
        # Centring (minus a running mean of the teacher's outputs) keeps one dimension from dominating and the low
        # temperature sharpens: together they keep the targets from collapsing to a constant or to uniform.
        q = jax.lax.stop_gradient(jax.nn.softmax((t.astype(jnp.float32) - center) / teacher_temp, axis=-1))
        for v, log_p_v in enumerate(log_p):
            if v == iq:
                continue
            total = total + jnp.mean(jnp.sum(-q * log_p_v, axis=-1))
            terms += 1
    return total / terms


def update_center(center: jax.Array, teacher_logits: jax.Array | Sequence[jax.Array],
                  momentum: float = 0.9) -> jax.Array:
    """The next centre: center * momentum + (1 - momentum) * the mean of the teacher's output rows (all its views).

    The reference sums the rows over its local batch, all-reduces the sum across GPUs and divides by the global
    row count. With global jax arrays (the batch sharded over devices) the mean here is already over the global
    batch, so it is that same quantity: no explicit collective is needed. No gradient flows through it.
    """
    batch_center = jnp.mean(_rows(teacher_logits, "teacher_logits"), axis=0)
    new = center.astype(jnp.float32) * momentum + batch_center * (1.0 - momentum)
    return jax.lax.stop_gradient(new).astype(center.dtype)


def ema_update(teacher_params, student_params, momentum: float | jax.Array):
    """The teacher's next parameters: teacher * momentum + (1 - momentum) * student, leaf by leaf, in the teacher's
    dtypes. Both trees must have one structure (nnx.State or pure dicts of the same model).

    The teacher is not trained by gradients: it is this moving average of the student. The student's parameters
    are read under stop_gradient here, and callers evaluate the teacher under stop_gradient (or outside the
    differentiated function), so no gradient path reaches the teacher.
    """
    def average(t, s):
        return (t * momentum + (1.0 - momentum) * jax.lax.stop_gradient(s)).astype(t.dtype)

    return jax.tree.map(average, teacher_params, student_params)


def cosine_schedule(base_value: float, final_value: float, total_steps: int) -> Schedule:
    """step -> final + (base - final) * (1 + cos(pi * step / total_steps)) / 2: DINO's `cosine_scheduler` without
    warm-up, as a function (step 0 gives base_value; steps past total_steps give final_value).

    The reference builds the array over iterations 0 .. total_steps - 1, so its last step is just short of
    final_value, as here.
    """
    if total_steps < 1:
        raise ValueError(f"cosine_schedule needs total_steps >= 1, got {total_steps}.")

    def schedule(step):
        progress = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps) / total_steps
        return final_value + 0.5 * (base_value - final_value) * (1.0 + jnp.cos(math.pi * progress))

    return schedule


def teacher_momentum_schedule(total_steps: int, base: float = 0.996) -> Schedule:
    """The teacher's EMA momentum per step: cosine from `base` (SVT's --momentum_teacher 0.996) up to 1."""
    return cosine_schedule(base, 1.0, total_steps)


def weight_decay_schedule(total_steps: int, start: float = 0.04, end: float = 0.4) -> Schedule:
    """The weight decay per step: cosine from `start` to `end` (SVT's --weight_decay 0.04, --weight_decay_end 0.4)."""
    return cosine_schedule(start, end, total_steps)


def teacher_temp_schedule(steps_per_epoch: int, warmup_epochs: int = 0, warmup_temp: float = 0.04,
                          temp: float = 0.04) -> Schedule:
    """The teacher temperature per step, constant within an epoch as in the reference: epoch e < warmup_epochs
    takes `np.linspace(warmup_temp, temp, warmup_epochs)[e]`, later epochs `temp`.

    SVT's defaults (--warmup_teacher_temp 0.04, --teacher_temp 0.04, --warmup_teacher_temp_epochs 0) make it the
    constant 0.04. Note linspace's end point: the last warm-up epoch already has `temp`.
    """
    if steps_per_epoch < 1 or warmup_epochs < 0:
        raise ValueError(f"teacher_temp_schedule needs steps_per_epoch >= 1 and warmup_epochs >= 0; got "
                         f"{steps_per_epoch} and {warmup_epochs}.")

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        fraction = epoch.astype(jnp.float32) / max(warmup_epochs - 1, 1)
        warming = warmup_temp + (temp - warmup_temp) * fraction
        return jnp.where(epoch < warmup_epochs, warming, jnp.float32(temp))

    return schedule


def teacher_entropy(teacher_logits: jax.Array | Sequence[jax.Array], center: jax.Array,
                    teacher_temp: float | jax.Array = 0.04) -> jax.Array:
    """Mean entropy (nats) of the teacher's centred, sharpened distributions over all its output rows.

    A collapse monitor, as DINO's paper tracks it: log K when the targets are uniform (where centring alone leads),
    0 when each is one-hot (where sharpening alone leads, one dimension dominating, or a healthy sharp target:
    `teacher_batch_entropy` tells the two apart); training that learns stays between.
    """
    rows = _rows(teacher_logits, "teacher_logits")
    log_q = jax.nn.log_softmax((rows - center.astype(jnp.float32)) / teacher_temp, axis=-1)
    return jnp.mean(-jnp.sum(jnp.exp(log_q) * log_q, axis=-1))


def teacher_batch_entropy(teacher_logits: jax.Array | Sequence[jax.Array], center: jax.Array,
                          teacher_temp: float | jax.Array = 0.04) -> jax.Array:
    """Entropy (nats) of the teacher's centred, sharpened distributions averaged over all its output rows.

    The other side of `teacher_entropy`: 0 when every row puts its mass on the same output (one dimension taking
    over, the collapse), log K when the rows together use every output evenly. Sharp rows spread over many outputs
    (low `teacher_entropy`, high batch entropy) are what learning looks like.
    """
    rows = _rows(teacher_logits, "teacher_logits")
    mean_q = jnp.mean(jax.nn.softmax((rows - center.astype(jnp.float32)) / teacher_temp, axis=-1), axis=0)
    return -jnp.sum(mean_q * jnp.log(jnp.maximum(mean_q, jnp.finfo(jnp.float32).tiny)))
