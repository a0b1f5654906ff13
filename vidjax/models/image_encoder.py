"""Image encoders run frame by frame: the vision towers of CLIP and SigLIP, as teachers and as frame-wise baselines.

As transformers computes them (`CLIPVisionModel`, the vision tower of `CLIPModel`, `SiglipVisionModel`):

- CLIP (`kind="clip"`, Radford et al. 2021): a patch embedding without bias, a class token, a learned position table
  over [class, patches], a LayerNorm before the blocks ("pre_layrnorm"), pre-norm blocks with q/k/v/out biases and
  quick GELU (x * sigmoid(1.702 x)), and a LayerNorm after them ("post_layernorm") that gives the pooled output from
  the class token; `CLIPModel`'s `visual_projection` (no bias) maps it to the joint space (`projection_dim`).
- SigLIP (`kind="siglip"`, Zhai et al. 2023): a patch embedding with bias, no class token, a position table over the
  patches, pre-norm blocks with tanh GELU, the final LayerNorm over every token, and a multi-head attention-pooling
  head (one learned probe attends over the tokens, then an MLP with its own LayerNorm) that gives the pooled output.

A clip (B, T, H, W, 3) is encoded as B x T images. `model(video)` -> {"last_hidden_state" (B, T x patches, width):
every frame's patch tokens after the final LayerNorm (the tokens `extract` and the attentive probe read), and with
`head="classification"` "logits" from the frames' mean pooled output}. `images(pixels)` gives transformers' outputs
for images (the parity tests' view); `layer_targets(video, k)` the last `k` blocks' patch tokens through the final
LayerNorm (and the projection, where there is one), and the attention each frame's summary pays its patches, which
unmasked-teacher distillation reads (UMT: its teacher's `ln_post` and `proj` over the returned layers, and the class
token's attention in the last block).

The attention map: CLIP's is the class token's attention over the patches in the last block (its softmax over
[class, patches], the class column dropped), SigLIP's the pooling probe's over the patches; both averaged over the
heads, as `torch.nn.MultiheadAttention` averages its weights.

Another resolution (`resize_positions`: `convert --image_size`, or a teacher's config.model.teacher.image_size, e.g.
CLIP-L/14 at 196 px for a /16 student's 14x14 grid at 224, as UMT-L runs it): the position table's patch rows are
resized bicubically over the grid (align_corners=False), CLIP's class row kept, as transformers'
`interpolate_pos_encoding` and UMT's teacher loading do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.models import Traits, layers
from vidjax.models.positions import resize_grid
from vidjax.patches import patchify

KINDS = ("clip", "siglip")
HEADS = ("none", "classification")
# The processors' statistics: OpenAI CLIP's (CLIPImageProcessor) and SigLIP's (SiglipImageProcessor, 0.5 each).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def dims(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """(width, depth, num_heads, mlp_dim, patch) of `cfg`: the variant's ViT size with its nonzero keys."""
    return layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)


def _head_attention(q_BHK: jax.Array, k_BNHK: jax.Array) -> jax.Array:
    """Softmax attention weights (B, H, N) of one query a head over N keys, float32."""
    scores = jnp.einsum("bhk,bnhk->bhn", q_BHK.astype(jnp.float32), k_BNHK.astype(jnp.float32))
    return jax.nn.softmax(scores * q_BHK.shape[-1] ** -0.5, axis=-1)


class PoolingHead(nnx.Module):
    """SigLIP's multi-head attention pooling: a learned probe attends over the tokens (q/k/v/out projections with
    biases), then + MLP(LN(.)); (pooled (B, width), the probe's attention (B, tokens) averaged over the heads)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float, dtype, choices: platform.Choices,
                 rngs: nnx.Rngs):
        hd = dim // num_heads
        xavier = nnx.initializers.xavier_uniform()
        zeros = jnp.zeros
        self.probe = nnx.Param(0.02 * jax.random.normal(rngs.params(), (dim,)), out_sharding=("embed",))
        # q, k and v in one kernel, as torch.nn.MultiheadAttention's in_proj_weight holds them.
        self.qkv = nnx.Param(xavier(rngs.params(), (dim, 3 * dim), jnp.float32).reshape(dim, 3, num_heads, hd),
                             out_sharding=("embed", None, "heads", "head_dim"))
        self.qkv_b = nnx.Param(zeros((3, num_heads, hd), jnp.float32), out_sharding=(None, "heads", "head_dim"))
        self.proj = nnx.Param(xavier(rngs.params(), (dim, dim), jnp.float32).reshape(num_heads, hd, dim),
                              out_sharding=("heads", "head_dim", "embed"))
        self.proj_bias = nnx.Param(zeros((dim,), jnp.float32), out_sharding=("embed",))
        self.norm = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, approximate_gelu=True, choices=choices, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x_BND: jax.Array) -> tuple[jax.Array, jax.Array]:
        dt = self.dtype
        qkv, bias = self.qkv[...].astype(dt), self.qkv_b[...].astype(dt)
        q = jnp.einsum("d,dhk->hk", self.probe[...].astype(dt), qkv[:, 0]) + bias[0]
        kv = jnp.einsum("bnd,dshk->bnshk", x_BND.astype(dt), qkv[:, 1:]) + bias[1:]
        weights = _head_attention(jnp.broadcast_to(q, (x_BND.shape[0], *q.shape)), kv[:, :, 0])
        out = jnp.einsum("bhn,bnhk->bhk", weights.astype(dt), kv[:, :, 1])
        y = jnp.einsum("bhk,hkd->bd", out, self.proj[...].astype(dt)) + self.proj_bias[...].astype(dt)
        return y + self.mlp(self.norm(y)), weights.mean(axis=1)


class Model(nnx.Module):
    """A CLIP or SigLIP vision tower (`config.model.kind`), applied to each frame of a clip (the module docstring)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.kind not in KINDS:
            raise ValueError(f"config.model.kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}.")
        if cfg.head not in HEADS:
            raise ValueError(f"config.model.head must be one of {', '.join(HEADS)} for an image encoder, got "
                             f"{cfg.head!r}.")
        d = dims(cfg)
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        dtype = jnp.dtype(cfg.dtype)
        width, patch = d["width"], d["patch"]
        if cfg.image_size % patch:
            raise ValueError(f"config.model.image_size={cfg.image_size} is not a multiple of the patch {patch}.")
        self.kind, self.patch, self.width, self.num_heads = cfg.kind, patch, width, d["num_heads"]
        self.image_size, self.num_frames = int(cfg.image_size), int(cfg.num_frames)
        self.projection_dim = int(cfg.projection_dim)
        self.head_kind = cfg.head
        clip = cfg.kind == "clip"
        self.patch_embed = layers.Dense(patch * patch * 3, width, (None, "embed"), use_bias=not clip, dtype=dtype,
                                        choices=choices, rngs=rngs)
        positions = (cfg.image_size // patch) ** 2 + (1 if clip else 0)
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (positions, width)),
                                   out_sharding=("positions", "embed"))
        if clip:
            # Not `cls_token`: a clip's tokens here are patches alone (`pooling.has_cls_token` reads that name).
            self.class_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (width,)), out_sharding=("embed",))
            self.pre_norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, rngs=rngs)
        self.transformer = layers.Transformer(width, d["depth"], d["num_heads"], d["mlp_dim"], eps=cfg.ln_eps,
                                              qkv_bias="qkv", dtype=dtype, choices=choices,
                                              approximate_gelu=not clip, quick_gelu=clip, remat=cfg.remat,
                                              rngs=rngs)
        self.post_norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, rngs=rngs)
        self.pool = (None if clip else PoolingHead(width, d["num_heads"], d["mlp_dim"], eps=cfg.ln_eps, dtype=dtype,
                                                   choices=choices, rngs=rngs))
        self.projection = (layers.Dense(width, cfg.projection_dim, ("embed", None), use_bias=False, dtype=dtype,
                                        choices=choices, rngs=rngs) if cfg.projection_dim else None)
        self.head = (layers.Dense(width, cfg.num_classes, ("embed", "classes"), choices=choices, rngs=rngs)
                     if cfg.head == "classification" else None)

    # --------------------------------------------------------------------------------------------- per image

    def _embed(self, pixels_BHWC: jax.Array) -> jax.Array:
        x = self.patch_embed(patchify(pixels_BHWC[:, None], 1, self.patch))
        if self.kind == "clip":
            cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.pos_embed[...].astype(x.dtype)
        return self.pre_norm(x) if self.kind == "clip" else x

    def _states(self, x: jax.Array) -> list[jax.Array]:
        """[the blocks' input, the output of each block], block by block (the whole list is traced; what a caller
        does not read is dropped by the compiler)."""
        states = [x]
        for block in self.transformer.blocks:
            states.append(block(states[-1]))
        return states

    def _class_attention(self, before_last: jax.Array) -> jax.Array:
        """CLIP: the class token's attention (B, patches) over the patches in the last block, averaged over heads."""
        last = list(self.transformer.blocks)[-1]
        weights = last.attn.probabilities(last.norm1(before_last), jnp.array([0]))  # (B, heads, 1, 1 + patches)
        return weights.mean(axis=1)[:, 0, 1:]

    def _summary(self, x: jax.Array, before_last: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """(each image's pooled output (B, width), its attention over its patches (B, patches); CLIP's needs
        `before_last`, the last block's input, and is None without it)."""
        if self.kind == "clip":
            pooled = self.post_norm(x[:, 0])
            return pooled, None if before_last is None else self._class_attention(before_last)
        return self.pool(self.post_norm(x))

    def images(self, pixels_BHWC: jax.Array) -> dict[str, jax.Array]:
        """transformers' outputs for images (B, H, W, 3), normalised: "last_hidden_state" (CLIP: the blocks' output,
        class token first; SigLIP: after the final LayerNorm), "pooler_output", "attention" (B, patches) and, with a
        projection, "image_embeds" (CLIPModel's `get_image_features`)."""
        states = self._states(self._embed(pixels_BHWC))
        x = states[-1]
        pooled, attention = self._summary(x, states[-2])
        out = {"last_hidden_state": x if self.kind == "clip" else self.post_norm(x), "pooler_output": pooled,
               "attention": attention}
        if self.projection is not None:
            out["image_embeds"] = self.projection(pooled)
        return out

    # --------------------------------------------------------------------------------------------- per clip

    def _frames(self, video: jax.Array) -> jax.Array:
        return video.reshape(-1, *video.shape[2:])

    def __call__(self, video: jax.Array, *, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        b, t = video.shape[:2]
        x = self.transformer(self._embed(self._frames(video)), rng)
        patches = x[:, 1:] if self.kind == "clip" else x
        out = {"last_hidden_state": self.post_norm(patches).reshape(b, -1, self.width)}
        if self.head is not None:
            pooled, _ = self._summary(x, None)
            out["logits"] = self.head(pooled.reshape(b, t, -1).mean(axis=1).astype(jnp.float32)).astype(jnp.float32)
        return out

    # ---- as a distillation's teacher (`vidjax.models.distill`) ----
    @property
    def target_width(self) -> int:
        """The width of `layer_targets`' tokens: the projection's, else the tower's."""
        return self.projection_dim or self.width

    @property
    def target_grid(self) -> tuple[int, int, int]:
        """`layer_targets`' token grid for the clips of its config: (frames, rows, columns of patches)."""
        side = self.image_size // self.patch
        return (self.num_frames, side, side)

    def layer_targets(self, video: jax.Array, num_layers: int) -> tuple[jax.Array, jax.Array]:
        """(the last `num_layers` blocks' patch tokens through the final LayerNorm and the projection (where there is
        one), (num_layers, B, T x patches, width or projection_dim), first to last; the attention of each frame's
        summary over its patches (B, T, patches), float32)."""
        b, t = video.shape[:2]
        states = self._states(self._embed(self._frames(video)))
        if not 1 <= num_layers < len(states):
            raise ValueError(f"num_layers={num_layers} must be between 1 and the encoder's {len(states) - 1} blocks.")
        _, attention = self._summary(states[-1], states[-2])
        start = 1 if self.kind == "clip" else 0
        tokens = []
        for y in states[-num_layers:]:
            y = self.post_norm(y[:, start:])
            if self.projection is not None:
                y = self.projection(y)
            tokens.append(y.reshape(b, -1, y.shape[-1]))
        return jnp.stack(tokens), attention.astype(jnp.float32).reshape(b, t, -1)


def resize_positions(params: dict[str, np.ndarray], src: ml_collections.ConfigDict,
                     dst: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Params of a tower built with `src` made valid for `dst`'s image_size (the module docstring); frames need
    nothing (each is encoded alone). A table of the same grid is returned unchanged."""
    patch = dims(src)["patch"]
    if dims(dst)["patch"] != patch:
        raise ValueError(f"resize_positions cannot change the patch size ({src.variant} -> {dst.variant}).")
    if dst.image_size % patch:
        raise ValueError(f"{dst.image_size} px is not a multiple of the patch {patch}: give a multiple of {patch}.")
    side, new_side = src.image_size // patch, dst.image_size // patch
    if side == new_side:
        return dict(params)
    table = np.asarray(params["pos_embed"], np.float32)
    extra = 1 if src.kind == "clip" else 0  # CLIP's class row stays as it is
    resized = resize_grid(table[extra:], (side, side), (new_side, new_side), "cubic")
    return dict(params, pos_embed=np.concatenate([table[:extra], resized]))


def default_config() -> ml_collections.ConfigDict:
    """The model block of an image encoder: OpenAI CLIP ViT-B/16's vision tower at 224 px, on 8-frame clips."""
    return ml_collections.ConfigDict(dict(
        kind="clip",  # clip | siglip
        variant="B/16",  # SIZE/PATCH, SIZE a ViT size (layers.VIT_SIZES)
        width=0, depth=0, num_heads=0, mlp_dim=0,  # 0 = the variant's
        image_size=224,  # the images the position table is for
        num_frames=8,  # frames of a clip, each encoded alone
        projection_dim=0,  # CLIPModel's visual projection to the joint space; 0: none
        head="none",  # none | classification (a linear head on the frames' mean pooled output)
        num_classes=400,
        ln_eps=1e-5,  # CLIP's; SigLIP's is 1e-6
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
    ))


TRAITS = Traits(distill=("teacher",))
