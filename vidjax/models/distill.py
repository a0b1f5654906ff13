"""Unmasked-teacher distillation's model (UMT, Li et al. 2023): a student video encoder that sees a part of a clip's
tokens, a frozen teacher encoder that sees all of it, and per-layer heads aligning the student's tokens with the
teacher's at the same positions (`vidjax.tasks.distill` trains it).

As OpenGVLab/unmasked_teacher's `PretrainVisionTransformer` (single_modality/models/modeling_pretrain_umt.py):

- `student_name`: a family whose traits list the "student" role (`Traits.distill`): its `layer_tokens(video,
  visible_ids, k, rng)` gives the last k blocks' tokens at the visible positions, each through its final norm
  (VideoMAE's encoder, built with its norm: head "none", no mean pooling);
- `teacher_name`: a family with the "teacher" role: its `layer_targets(video, k)` gives the last k blocks' tokens over
  the whole clip (CLIP's through `ln_post` and `proj`) and the attention that says which tokens matter
  (`vidjax.models.image_encoder`, or a VideoMAE's own). Its parameters are the subtree "teacher", which training
  leaves alone (`frozen_prefixes`), loaded from `config.distill.teacher` at start-up;
- `align`: per aligned layer, the reference's `Linear_Decoder`: a linear map from the student's width to the
  teacher's, a LayerNorm, then (`l2_normalize`) unit length; the student's tokens get the fixed sin-cos positions of
  their grid places first (`clip_pos_embed`). The heads are not kept for fine-tuning: `init_from` reads the student.

`model(video)` is the student's own output (its tokens: what `extract`, the probes and `init_from` read).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.models import ParamKeys, Traits, available, get_model, layers, traits

STUDENT, TEACHER = "student", "teacher"  # the parameter subtrees


def _tokens_part(cfg: ml_collections.ConfigDict) -> str:
    """A distillation's clip tokens are its student's."""
    return STUDENT


def _parts(cfg: ml_collections.ConfigDict) -> dict:
    """The student is a whole model of its family: `init_from` and `load` read a distillation's checkpoint as it."""
    return {STUDENT: (cfg.student_name, cfg.student)}


TRAITS = Traits(tokens_part=_tokens_part, parts=_parts)


def frozen_prefixes(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The teacher's parameters: training never changes them (no gradient is taken through it either)."""
    return (TEACHER,)


def check_roles(cfg: ml_collections.ConfigDict) -> None:
    """A ConfigError unless the student's family can be a student and the teacher's a teacher (`Traits.distill`)."""
    for role, name in ((STUDENT, cfg.student_name), (TEACHER, cfg.teacher_name)):
        try:
            roles = traits(name).distill
        except ValueError as err:
            raise ConfigError(f"config.model.{role}_name: {err}") from None
        if role not in roles:
            able = "a student or teacher" if roles else "part of a distillation"
            what = "an encoder that gives its tokens layer by layer" if role == TEACHER else \
                "an encoder that can be given some of its tokens"
            raise ConfigError(f"config.model.{role}_name={name!r} cannot be the {role}: a {name} model is not {able} "
                              f"here; the {role} must be {what} ({', '.join(families(role))}).")


def families(role: str) -> list[str]:
    """The model families that can take `role` ("student" or "teacher")."""
    return [name for name in available() if role in traits(name).distill]


class Align(nnx.Module):
    """UMT's `Linear_Decoder`: Dense(width -> target) then LayerNorm, and unit length with `l2_normalize`."""

    def __init__(self, width: int, target: int, *, eps: float, l2_normalize: bool, choices: platform.Choices,
                 rngs: nnx.Rngs):
        self.proj = layers.Dense(width, target, ("embed", None), kernel_init=nnx.initializers.xavier_uniform(),
                                 choices=choices, rngs=rngs)
        self.norm = layers.LayerNorm(target, eps, choices=choices, rngs=rngs)
        self.l2_normalize = l2_normalize

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(self.proj(x.astype(jnp.float32)))
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True) if self.l2_normalize else y


class Model(nnx.Module):
    """The student, the frozen teacher and the alignment heads (the module docstring)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        check_roles(cfg)
        choices = platform.choices(cfg.student, platform.TRANSFORMER_FIELDS)
        self.num_layers = int(cfg.num_layers)
        self.student = get_model(cfg.student_name).Model(cfg.student, rngs=rngs)
        self.teacher = get_model(cfg.teacher_name).Model(cfg.teacher, rngs=rngs)
        width, target = self.student.distill_width, self.teacher.target_width
        self.align = nnx.List([Align(width, target, eps=cfg.align_eps, l2_normalize=cfg.l2_normalize,
                                     choices=choices, rngs=rngs) for _ in range(self.num_layers)])
        self.width = width

    def __call__(self, video: jax.Array, *, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        return self.student(video, rng=rng)

    def aligned(self, video: jax.Array, visible_ids: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """(layers, B, K, target) float32: the student's last blocks' tokens at `visible_ids` (B, K), with their
        places' sin-cos positions, through each layer's head."""
        tokens = self.student.layer_tokens(video, visible_ids, self.num_layers, rng)
        grid = self.student.distill_grid
        table = jnp.asarray(layers.sincos_table(grid[0] * grid[1] * grid[2], self.width))
        positions = jnp.take(table, visible_ids, axis=0)
        return jnp.stack([head(x.astype(jnp.float32) + positions) for head, x in zip(self.align, tokens,
                                                                                     strict=True)])


def default_config(student_name: str = "videomae", teacher_name: str = "image_encoder") -> ml_collections.ConfigDict:
    """The model block of a distillation: `student_name`'s and `teacher_name`'s default blocks (the student without a
    head; a VideoMAE one built with its final norm; a CLIP ViT-B/16 teacher), one aligned layer."""
    student = get_model(student_name).default_config()
    student.head = "none"  # its tokens only; a VideoMAE's encoder keeps its final norm (no mean pooling)
    if "use_mean_pooling" in student:
        student.use_mean_pooling = False
    return ml_collections.ConfigDict(dict(
        student_name=student_name, student=student,
        teacher_name=teacher_name, teacher=get_model(teacher_name).default_config(),
        num_layers=1,  # the teacher's and student's last blocks aligned (UMT-B: 6; VideoMamba's: 1)
        l2_normalize=True,  # the heads' outputs (and the teacher's tokens) at unit length: UMT's clip_norm_type "l2"
        align_eps=1e-6,
        dtype="float32",
    ))


def clip_spec(cfg: ml_collections.ConfigDict) -> dict:
    """The clips a distillation takes: its student's (the teacher's are cut from them in the step)."""
    s = cfg.student
    return dict(num_frames=int(s.num_frames), image_size=int(s.image_size),
                mean=tuple(float(v) for v in s.pixel_mean), std=tuple(float(v) for v in s.pixel_std))


def abstract(cfg: ml_collections.ConfigDict) -> Model:
    """The model of block `cfg` with abstract parameters (shapes only; nothing is computed)."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Model(cfg, rngs=ParamKeys(0)))


def grid_problem(cfg: ml_collections.ConfigDict) -> str | None:
    """Why the teacher's tokens cannot be matched to the student's, one place each, naming the teacher sizes that
    would match; None when they can. The teacher sees the student's clip with its frames taken evenly to the
    teacher's config.model.teacher.num_frames and resized to its image_size."""
    model = abstract(cfg)
    student, teacher = tuple(model.student.distill_grid), tuple(model.teacher.target_grid)
    frames, size = int(cfg.teacher.num_frames), int(cfg.teacher.image_size)
    per_token = (frames // teacher[0], size // teacher[1])
    if int(cfg.student.num_frames) % frames:
        return (f"config.model.teacher.num_frames={frames} does not divide the student's {cfg.student.num_frames} "
                f"frames (the teacher takes every n-th of them): set it to {student[0] * per_token[0]}.")
    if student != teacher:
        return (f"the teacher gives a {'x'.join(map(str, teacher))} grid of tokens (frames x rows x columns) for its "
                f"clip of {frames} frames at {size} px, the student a {'x'.join(map(str, student))} one, so its "
                f"tokens cannot be matched place by place: set --config.model.teacher.num_frames="
                f"{student[0] * per_token[0]} --config.model.teacher.image_size={student[1] * per_token[1]} (or a "
                f"student whose grid is the teacher's).")
    return None
