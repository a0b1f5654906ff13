"""VideoPrism: a factorised video ViT (a spatial ViT on each frame, then a temporal one over frames) and its text tower.

Zhao et al., ICML 2024 (google-deepmind/videoprism), as transformers' VideoPrism classes compute it
(modeling_videoprism.py, transformers 5.24):

- Vision encoder (`VideoPrismVisionModel`, head "none"): each frame cut into 18 x 18 patches (a Conv3d of tubelet
  (1, p, p), here the equivalent linear map of (h, w, c)-ordered patch pixels), plus a learned spatial position table
  (no CLS token); `spatial_depth` blocks over each frame's tokens and a LayerNorm; then the frames of every patch
  position, plus a learned temporal table, through `temporal_depth` blocks and a LayerNorm. Outputs
  "last_hidden_state" (B, T * h * w, D), frame-major, and transformers' pre-norm "last_spatial_hidden_state"
  (B * T, h * w, D) and "last_temporal_hidden_state" (B * h * w, T, D).
- Blocks: pre-norm (LN, attention, residual; LN, MLP, residual) with q, k, v and output biases, attention logits
  soft-capped as cap * tanh(logits / cap) (cap 50) before the softmax (`attention.capped_attention`), exact-GELU MLPs
  (ReLU in the text tower). Every LayerNorm is Praxis-style: its stored scale is gamma - 1 (`scale_offset` 1.0).
- Video model (`VideoPrismVideoModel`, head "video"): `num_auxiliary_layers` more blocks over the encoder's tokens,
  then the attention pooler (`AttentionPooler`), a LayerNorm and, with `l2_normalize`, x / sqrt(|x|^2 + 1e-6):
  "video_embeds" (B, D); "last_hidden_state" is then the auxiliary blocks' output, as transformers'.
- Classifier (`VideoPrismForVideoClassification`, head "classification"): the pooler over the encoder's tokens (no
  auxiliary blocks), its LayerNorm, a linear head: "logits".
- Text tower (`VideoPrismTextModel`): token embeddings x sqrt(D) plus a fixed sin | cos table (kept as the parameter
  `text/position_table`, which training leaves fixed: `frozen_prefixes`), a learned class token x sqrt(D) appended
  after the tokens, causal self-attention that skips padding, a LayerNorm; the class token's output, L2-normalised, is
  the text embedding. transformers masks only when given an attention mask (without one it attends both ways); the
  official tower and VideoPrismTokenizer's inputs are causal and masked, which vidjax always is.
- Video-text model (`VideoPrismClipModel`, head "clip"): the video model and the text tower; `model(video,
  input_ids, attention_mask)` gives "video_embeds" (Bv, D), "text_embeds" (Bt, D), "similarity" (Bv, Bt) their
  cosines, and transformers' "logits_per_video" = softmax of the similarity over the videos (axis 0) and
  "logits_per_text" = softmax of its transpose over the texts (axis 0). transformers has no learned temperature (its
  forward takes an optional `temperature` dividing the similarity, none by default); vidjax's clip model keeps one
  for training, the parameter `logit_scale` = log(1 / temperature), started at `config.model.temperature_init`
  (CLIP's 0.07: the official code releases no temperature) and read, capped at MAX_LOGIT_SCALE, by
  `Model.contrastive_scale` (the contrastive task's loss); the similarities and logits above do not use it.
- `freeze_encoder` (a head other than "none"): the vision encoder runs without drop path and its output is cut from
  the gradient; `frozen_prefixes` names its parameters, which the optimizer then leaves alone (the official colab's
  recipe: an attention-pooler classifier trained on the frozen encoder).

Inputs are channels-last float videos `(batch, frames, height, width, 3)` of exactly `num_frames` x `image_size`
(the position tables' grid; `resize_positions` adapts a checkpoint to others), normalised with
`config.pixel_mean/pixel_std` (0 and 1: VideoPrism reads pixels in [0, 1]).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.models import LayerLayout, Traits, layers
from vidjax.models.positions import resize_grid
from vidjax.ops import attention
from vidjax.patches import patchify
from vidjax.sharding import constrain

# Sizes: name -> (width, spatial depth, temporal depth, heads, MLP width, text depth). B, L and g as published
# (google-deepmind/videoprism models.py CONFIGS; B and L have public weights, B at 16 frames, L at 8, both 288 px);
# "Mu" is vidjax's tiny size for tests and laptop runs.
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mu": (96, 4, 2, 3, 384, 2),
    "B": (768, 12, 4, 12, 3072, 12),
    "L": (1024, 24, 4, 16, 4096, 12),
    "g": (1408, 40, 4, 16, 6144, 16),
}
HEADS = ("none", "video", "classification", "clip")
# The pooler's query scale: 1 / softplus(0), so that a zero per-dimension scale scales by 1 / sqrt(head_dim).
R_SOFTPLUS_0 = 1.442695041
L2_EPS = 1e-6  # transformers' l2norm: x * rsqrt(sum(x^2) + eps)
# The learned temperature's logit scale (1 / temperature) is capped at 100, as CLIP's (Radford et al., 2021).
MAX_LOGIT_SCALE = math.log(100.0)
ENCODER = "encoder"  # the vision encoder's parameter subtree, which `freeze_encoder` holds fixed
RESIDUAL = ("act_batch", "act_length", "act_embed")

TRAITS = Traits(layer_layout=LayerLayout(
    # The encoder and a classifier; a video model's auxiliary blocks after them.
    blocks=((("encoder", "spatial", "blocks"), ("encoder", "temporal", "blocks")),
            (("encoder", "spatial", "blocks"), ("encoder", "temporal", "blocks"), ("auxiliary", "blocks"))),
    embedding=(("encoder", "patch_embed"), ("encoder", "spatial_pos_embed")),
    # The spatial stack's norm and the temporal stack's table lead into the temporal stack, the encoder's closing
    # norm into a video model's auxiliary blocks (a classifier's is a head parameter).
    between={("encoder", "spatial_norm"): ("encoder", "temporal", "blocks"),
             ("encoder", "temporal_pos_embed"): ("encoder", "temporal", "blocks"),
             ("encoder", "temporal_norm"): ("auxiliary", "blocks")},
    head=(("encoder", "temporal_norm"), ("pooler",), ("pooler_norm",), ("head",))))


def dims(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """The sizes of `cfg`'s model: the variant's (SIZE/PATCH), with its nonzero keys."""
    size, patch = layers.parse_variant(cfg.variant, SIZES)
    width, spatial, temporal, heads, mlp, text = SIZES[size]
    return dict(width=cfg.width or width, spatial_depth=cfg.spatial_depth or spatial,
                temporal_depth=cfg.temporal_depth or temporal, num_heads=cfg.num_heads or heads,
                mlp_dim=cfg.mlp_dim or (mlp if not cfg.width or cfg.width == width else 4 * cfg.width), patch=patch,
                text_depth=cfg.text_depth or text)


def grid(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(frames, patches per side) of the clips `cfg`'s position tables cover."""
    patch = dims(cfg)["patch"]
    if cfg.image_size % patch:
        raise ConfigError(f"config.model.image_size={cfg.image_size} is not a multiple of the patch size {patch}.")
    return int(cfg.num_frames), int(cfg.image_size) // patch


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """The text tower's fixed (length, dim) table: sin of position x 10000^(-2i/dim) in the first half, cos in the
    second (transformers' `create_sinusoidal_positions`; converted checkpoints carry the reference's own table)."""
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def initial_logit_scale(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The clip model's `logit_scale` before training: log(1 / config.model.temperature_init), float32 ()."""
    if not cfg.temperature_init > 0:
        raise ConfigError(f"config.model.temperature_init={cfg.temperature_init} must be > 0 (the contrastive "
                          f"temperature training starts from; CLIP's 0.07).")
    return np.asarray(math.log(1.0 / cfg.temperature_init), np.float32)


def _lecun(rngs, shape: tuple[int, ...], names: tuple[str | None, ...]) -> nnx.Param:
    """A table drawn as transformers initialises VideoPrism's (lecun normal over its last axis)."""
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2)
    return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=names)


class Block(nnx.Module):
    """Pre-norm block with soft-capped attention: x + Attn(LN(x)), then x + MLP(LN(x)); Praxis-style norms.

    Called as `block(x, rng=)` (vision), or `block(x, mask, rng=)` with a bool attention mask (text), returning
    (x, mask) so the mask rides along the blocks' carry (`layers.run_blocks`)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float, cap: float, relu: bool = False,
                 drop_path: float = 0.0, qkv_bias: str = "qkv", dtype=jnp.float32, choices: platform.Choices,
                 rngs: nnx.Rngs):
        self.norm1 = layers.LayerNorm(dim, eps, choices=choices, scale_offset=1.0, rngs=rngs)
        self.attn = layers.Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, choices=choices, rngs=rngs)
        self.norm2 = layers.LayerNorm(dim, eps, choices=choices, scale_offset=1.0, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, relu=relu, choices=choices, rngs=rngs)
        self.cap = float(cap)
        self.drop_path = drop_path

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, rng: jax.Array | None = None):
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)

        def attend(q, k, v):
            return attention.capped_attention(q, k, v, self.cap, mask)

        x = constrain(x, RESIDUAL)
        x = constrain(x + layers.drop_path(self.attn(self.norm1(x), attend=attend), self.drop_path, rng_attn),
                      RESIDUAL)
        x = constrain(x + layers.drop_path(self.mlp(self.norm2(x)), self.drop_path, rng_mlp), RESIDUAL)
        return x if mask is None else (x, mask)


class Stack(nnx.Module):
    """`depth` `Block`s with drop-path rates rising linearly to `drop_path`, unrolled or scanned (`scan`), each
    rematerialised as `remat` says (`layers.run_blocks`)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, *, cfg: ml_collections.ConfigDict,
                 relu: bool = False, choices: platform.Choices, rngs: nnx.Rngs):
        rates = np.linspace(0.0, cfg.drop_path, depth) if depth > 1 else np.array([cfg.drop_path] * depth)
        self.remat = layers.check_remat(cfg.remat)
        self.scan = bool(cfg.scan_layers)
        self.block_gradients = choices.need("block_gradients")
        dtype = jnp.dtype(cfg.dtype)
        self.blocks = layers.make_blocks(
            lambda rate, rngs: Block(dim, num_heads, mlp_dim, eps=cfg.ln_eps, cap=cfg.attn_logit_cap, relu=relu,
                                     drop_path=rate, qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices, rngs=rngs),
            rates, scan=self.scan, rngs=rngs)

    def __call__(self, x, rng: jax.Array | None = None):
        """`x`: tokens (B, N, D), or (tokens, mask) for masked attention (then a tuple comes back)."""
        return layers.run_blocks(self.blocks, x, rng, remat=self.remat, scan=self.scan,
                                 block_gradients=self.block_gradients)


class Encoder(nnx.Module):
    """The factorised vision encoder (`VideoPrismVisionModel`): spatial blocks per frame, temporal blocks per patch
    position."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, choices: platform.Choices, rngs: nnx.Rngs):
        d = dims(cfg)
        self.width, self.patch = d["width"], d["patch"]
        self.frames, side = grid(cfg)
        dtype = jnp.dtype(cfg.dtype)
        lecun = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        self.patch_embed = layers.Dense(self.patch * self.patch * 3, self.width, (None, "embed"), dtype=dtype,
                                        kernel_init=lecun, choices=choices, rngs=rngs)
        self.spatial_pos_embed = _lecun(rngs, (side * side, self.width), (None, "embed"))
        self.spatial = Stack(self.width, d["spatial_depth"], d["num_heads"], d["mlp_dim"], cfg=cfg, choices=choices,
                             rngs=rngs)
        self.spatial_norm = layers.LayerNorm(self.width, cfg.ln_eps, choices=choices, scale_offset=1.0, rngs=rngs)
        self.temporal_pos_embed = _lecun(rngs, (self.frames, self.width), (None, "embed"))
        self.temporal = Stack(self.width, d["temporal_depth"], d["num_heads"], d["mlp_dim"], cfg=cfg,
                              choices=choices, rngs=rngs)
        self.temporal_norm = layers.LayerNorm(self.width, cfg.ln_eps, choices=choices, scale_offset=1.0, rngs=rngs)

    def __call__(self, video_BTHWC: jax.Array, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        if video_BTHWC.ndim != 5 or video_BTHWC.shape[-1] != 3:
            raise ValueError(f"VideoPrism expects videos shaped (batch, frames, height, width, 3) channels-last; got "
                             f"{tuple(video_BTHWC.shape)}.")
        b, t, h, w, _ = video_BTHWC.shape
        n = self.spatial_pos_embed.shape[0]
        if t != self.frames or h != w or (h // self.patch) ** 2 != n or h % self.patch:
            side = math.isqrt(n) * self.patch
            raise ValueError(f"This VideoPrism takes clips of {self.frames} frames x {side} x {side} px (its position "
                             f"tables' grid); got {t} x {h} x {w}. Adapt the checkpoint with --num_frames / "
                             f"--image_size (pretrained.load(..., num_frames=, image_size=)).")
        rng_s, rng_t = jax.random.split(rng) if rng is not None else (None, None)
        x = self.patch_embed(patchify(video_BTHWC, 1, self.patch)).reshape(b * t, n, self.width)
        x = x + self.spatial_pos_embed[...].astype(x.dtype)
        spatial = self.spatial(x, rng_s)
        x = self.spatial_norm(spatial).reshape(b, t, n, self.width)
        x = jnp.swapaxes(x, 1, 2).reshape(b * n, t, self.width) + self.temporal_pos_embed[...].astype(x.dtype)
        temporal = self.temporal(x, rng_t)
        x = self.temporal_norm(temporal).reshape(b, n, t, self.width)
        x = jnp.swapaxes(x, 1, 2).reshape(b, t * n, self.width)
        return {"last_hidden_state": x, "last_spatial_hidden_state": spatial, "last_temporal_hidden_state": temporal}


class AttentionPooler(nnx.Module):
    """Tokens (B, N, D) -> (B, D): one learned query attends to them through `inner`-wide heads (q, k, v: D ->
    inner; output: inner -> D), the query scaled per dimension by R_SOFTPLUS_0 * softplus(per_dim_scale) / sqrt(
    head_dim) (transformers' `VideoPrismMultiheadAttentionPoolingHead`; no logit cap)."""

    def __init__(self, dim: int, num_heads: int, inner: int, *, bias: bool, dtype, choices: platform.Choices,
                 rngs: nnx.Rngs):
        if inner % num_heads:
            raise ValueError(f"The pooler's width {inner} (config.model.mlp_dim) is not divisible by "
                             f"num_heads={num_heads}.")
        hd = inner // num_heads
        xavier = nnx.initializers.xavier_uniform()
        zeros = nnx.initializers.zeros
        self.query = nnx.Param(jax.random.truncated_normal(rngs.params(), -2, 2, (dim,)) * dim ** -0.5,
                               out_sharding=("embed",))
        self.q = nnx.Param(xavier(rngs.params(), (dim, inner), jnp.float32).reshape(dim, num_heads, hd),
                           out_sharding=("embed", "heads", "head_dim"))
        self.kv = nnx.Param(xavier(rngs.params(), (dim, 2 * inner), jnp.float32).reshape(dim, 2, num_heads, hd),
                            out_sharding=("embed", None, "heads", "head_dim"))
        self.q_bias = nnx.Param(zeros(rngs.params(), (num_heads, hd)), out_sharding=("heads", "head_dim")) \
            if bias else None
        self.kv_bias = nnx.Param(zeros(rngs.params(), (2, num_heads, hd)), out_sharding=(None, "heads", "head_dim")) \
            if bias else None
        self.per_dim_scale = nnx.Param(jnp.zeros((hd,), jnp.float32), out_sharding=("head_dim",))
        self.proj = nnx.Param(xavier(rngs.params(), (inner, dim), jnp.float32).reshape(num_heads, hd, dim),
                              out_sharding=("heads", "head_dim", "embed"))
        self.proj_bias = nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=("embed",))
        self.dtype = dtype
        self.implementation = choices.need("attention_impl")
        self.projection_form = choices.need("projection_form")

    def __call__(self, x_BND: jax.Array) -> jax.Array:
        dt, form = self.dtype, self.projection_form
        query = jnp.broadcast_to(self.query[...].astype(dt), (x_BND.shape[0], 1, x_BND.shape[-1]))
        q = layers.project(query, self.q[...], form=form)
        kv = layers.project(x_BND.astype(dt), self.kv[...], form=form)
        if self.q_bias is not None:
            q, kv = q + self.q_bias[...].astype(dt), kv + self.kv_bias[...].astype(dt)
        # The house attention divides by sqrt(head_dim) itself; the rest of the reference's query scale goes here.
        q = q * (R_SOFTPLUS_0 * jax.nn.softplus(self.per_dim_scale[...])).astype(dt)
        out = attention.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], self.implementation)
        y = layers.project(out.astype(dt), self.proj[...], 2, form=form) + self.proj_bias[...].astype(dt)
        return y[:, 0]


class TextEncoder(nnx.Module):
    """The text tower (`VideoPrismTextModel`): token ids -> L2-normalised embeddings of the class token."""

    def __init__(self, cfg: ml_collections.ConfigDict, width: int, num_heads: int, mlp_dim: int, depth: int, *,
                 choices: platform.Choices, rngs: nnx.Rngs):
        self.width = width
        std = width ** -0.5
        self.token_embed = nnx.Param(std * jax.random.normal(rngs.params(), (cfg.vocab_size, width)),
                                     out_sharding=(None, "embed"))
        table = sinusoid_table(cfg.max_text_length, width)
        self.position_table = nnx.Param(jnp.asarray(table), out_sharding=(None, "embed"))
        self.cls_token = nnx.Param(std * jax.random.normal(rngs.params(), (width,)), out_sharding=("embed",))
        self.blocks = Stack(width, depth, num_heads, mlp_dim, cfg=cfg, relu=True, choices=choices, rngs=rngs)
        self.norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, scale_offset=1.0, rngs=rngs)
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """`input_ids` int (B, L), L at most config.model.max_text_length; `attention_mask` (B, L), 1 = token (None:
        every token). Gives "text_last_hidden_state" (B, L + 1, D) (the class token last) and "text_embeds" (B, D)."""
        b, length = input_ids.shape
        limit = self.position_table.shape[0]
        if length > limit:
            raise ValueError(f"This VideoPrism text tower takes at most {limit} tokens (config.model.max_text_length);"
                             f" got {length}.")
        scale = math.sqrt(self.width)
        x = jnp.take(self.token_embed[...], input_ids, axis=0) * scale + self.position_table[:length]
        cls = jnp.broadcast_to(self.cls_token[...] * scale, (b, 1, self.width))
        x = jnp.concatenate([x, cls], axis=1).astype(self.dtype)
        keys = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
        keys = jnp.concatenate([keys, jnp.ones((b, 1), bool)], axis=1)
        causal = jnp.tril(jnp.ones((length + 1, length + 1), bool))
        mask = causal[None, None] & keys[:, None, None, :]
        x, _ = self.blocks((x, mask), rng)
        x = self.norm(x)
        return {"text_last_hidden_state": x, "text_embeds": x[:, -1]}


class Model(nnx.Module):
    """VideoPrism with the head `config.model.head` names (the module docstring): "none" the vision encoder,
    "video" the video model (auxiliary blocks, pooler, embeddings), "classification" a classifier, "clip" the
    video-text model.

    `model(video)` -> {"last_hidden_state", "last_spatial_hidden_state", "last_temporal_hidden_state"} (+
    "video_embeds" for "video" and "clip", "logits" (B, num_classes) float32 for "classification");
    `model(video, input_ids, attention_mask)` of a "clip" model adds "text_embeds", "similarity",
    "logits_per_video" and "logits_per_text"; `model.text(input_ids, attention_mask)` is the text tower alone.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.head not in HEADS:
            raise ConfigError(f"config.model.head must be one of {', '.join(HEADS)} for VideoPrism, got {cfg.head!r}.")
        if cfg.qkv_bias not in ("qkv", "none"):
            raise ConfigError(f"config.model.qkv_bias={cfg.qkv_bias!r}; VideoPrism has q, k and v biases or none "
                              f"('qkv' or 'none').")
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        d = dims(cfg)
        width, heads, mlp = d["width"], d["num_heads"], d["mlp_dim"]
        dtype = jnp.dtype(cfg.dtype)
        self.head_kind = cfg.head
        self.l2 = bool(cfg.l2_normalize)
        self.freeze_encoder = bool(cfg.freeze_encoder) and cfg.head != "none"
        self.encoder = Encoder(cfg, choices=choices, rngs=rngs)
        pooled = cfg.head != "none"
        self.auxiliary = Stack(width, cfg.num_auxiliary_layers, heads, mlp, cfg=cfg, choices=choices, rngs=rngs) \
            if cfg.head in ("video", "clip") and cfg.num_auxiliary_layers else None
        self.pooler = AttentionPooler(width, heads, mlp, bias=cfg.qkv_bias == "qkv", dtype=dtype, choices=choices,
                                      rngs=rngs) if pooled else None
        self.pooler_norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, scale_offset=1.0, rngs=rngs) \
            if pooled else None
        self.head = layers.Dense(width, cfg.num_classes, ("embed", "classes"), choices=choices, rngs=rngs) \
            if cfg.head == "classification" else None
        self.text = TextEncoder(cfg, width, heads, mlp, d["text_depth"], choices=choices, rngs=rngs) \
            if cfg.head == "clip" else None
        self.logit_scale = nnx.Param(jnp.asarray(initial_logit_scale(cfg)), out_sharding=()) \
            if cfg.head == "clip" else None

    def __call__(self, video: jax.Array, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 *, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        rng_enc, rng_aux, rng_text = jax.random.split(rng, 3) if rng is not None else (None, None, None)
        out = self.encoder(video, None if self.freeze_encoder else rng_enc)
        if self.pooler is None:
            return out
        if self.freeze_encoder:
            out["last_hidden_state"] = jax.lax.stop_gradient(out["last_hidden_state"])
        x = out["last_hidden_state"]
        if self.auxiliary is not None:
            x = out["last_hidden_state"] = self.auxiliary(x, rng_aux)
        pooled = self.pooler_norm(self.pooler(x)).astype(jnp.float32)
        if self.head is not None:
            out["logits"] = self.head(pooled).astype(jnp.float32)
            return out
        out["video_embeds"] = l2_normalize(pooled) if self.l2 else pooled
        if input_ids is None:
            return out
        if self.text is None:
            raise ValueError("This VideoPrism has no text tower (config.model.head is not 'clip'); it takes no "
                             "input_ids.")
        text = self.text_embeddings(input_ids, attention_mask, rng=rng_text)
        out.update(text)
        out.update(similarities(out["video_embeds"], text["text_embeds"]))
        return out

    def contrastive_scale(self) -> jax.Array:
        """The learned 1 / temperature the contrastive loss multiplies the similarities by: exp(logit_scale), at
        most exp(MAX_LOGIT_SCALE) = 100, float32 ()."""
        if self.logit_scale is None:
            raise ValueError("This VideoPrism has no learned temperature (config.model.head is not 'clip').")
        return jnp.exp(jnp.minimum(self.logit_scale[...].astype(jnp.float32), MAX_LOGIT_SCALE))

    def text_embeddings(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                        rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """The text tower's "text_last_hidden_state" and "text_embeds" (L2-normalised with config.model.
        l2_normalize), float32."""
        if self.text is None:
            raise ValueError("This VideoPrism has no text tower (config.model.head is not 'clip').")
        out = self.text(input_ids, attention_mask, rng)
        embeds = out["text_embeds"].astype(jnp.float32)
        return {"text_last_hidden_state": out["text_last_hidden_state"],
                "text_embeds": l2_normalize(embeds) if self.l2 else embeds}


def similarities(video_embeds: jax.Array, text_embeds: jax.Array) -> dict[str, jax.Array]:
    """"similarity" (Bv, Bt) = video_embeds . text_embeds, and transformers' `VideoPrismClipModel` logits: softmax of
    the similarity over the videos ("logits_per_video", (Bv, Bt)) and of its transpose over the texts
    ("logits_per_text", (Bt, Bv))."""
    sim = jnp.einsum("vd,td->vt", video_embeds.astype(jnp.float32), text_embeds.astype(jnp.float32))
    return {"similarity": sim, "logits_per_video": jax.nn.softmax(sim, axis=0),
            "logits_per_text": jax.nn.softmax(sim.T, axis=0)}


def frozen_prefixes(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The parameters training keeps fixed: the text tower's sin | cos position table (fixed in the reference), and
    the vision encoder with `freeze_encoder` (a head other than "none")."""
    frozen = (ENCODER,) if cfg.get("freeze_encoder") and cfg.head != "none" else ()
    return frozen + (("text/position_table",) if cfg.head == "clip" else ())


def resize_positions(params: dict[str, np.ndarray], src: ml_collections.ConfigDict,
                     dst: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flat params of a model built with `src`, with the spatial table resized bilinearly to `dst`'s grid of patches
    and the temporal table linearly to its frames (the official encoder's `jax.image.resize`; transformers'
    interpolation is antialiased, which differs when shrinking)."""
    (t_src, s_src), (t_dst, s_dst) = grid(src), grid(dst)
    out = dict(params)
    out["encoder/spatial_pos_embed"] = resize_grid(params["encoder/spatial_pos_embed"], (s_src, s_src),
                                                   (s_dst, s_dst), "linear")
    out["encoder/temporal_pos_embed"] = resize_grid(params["encoder/temporal_pos_embed"], (t_src,), (t_dst,),
                                                    "linear")
    return out


def default_config() -> ml_collections.ConfigDict:
    """The model block of a VideoPrism config: the public base model (B/18, 16 frames x 288 px), encoder only."""
    return ml_collections.ConfigDict(dict(
        variant="B/18",  # SIZE/PATCH, SIZE one of SIZES (B: 16 frames, L: 8 frames as published; Mu for small runs)
        width=0, spatial_depth=0, temporal_depth=0, num_heads=0, mlp_dim=0, text_depth=0,  # 0 = the variant's
        num_frames=16, image_size=288,  # the position tables' grid
        head="none",  # none (vision encoder) | video (+ auxiliary blocks, pooler, embeddings) | classification | clip
        num_classes=400,
        num_auxiliary_layers=2,  # the video model's blocks between the encoder and the pooler
        attn_logit_cap=50.0,  # attention logits capped as cap * tanh(logits / cap); 0 = none
        l2_normalize=True,  # video and text embeddings L2-normalised (transformers' apply_l2norm)
        vocab_size=32000, max_text_length=64,  # the text tower (head "clip")
        temperature_init=0.07,  # head "clip": the learned contrastive temperature's start (CLIP's)
        # True: the vision encoder is held fixed (no gradient, no drop path, no update); the pooler, its norm, the
        # head and the auxiliary blocks and text tower of a "video" / "clip" model train
        freeze_encoder=False,
        qkv_bias="qkv",  # "qkv" (the reference) or "none"
        ln_eps=1e-6,
        drop_path=0.0,
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=(0.0, 0.0, 0.0),  # VideoPrism reads pixels in [0, 1]
        pixel_std=(1.0, 1.0, 1.0),
    ))
