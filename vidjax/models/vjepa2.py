"""V-JEPA 2: a ViT over tubelet tokens with 3-D rotary positions, and a narrow predictor of masked tokens' features.

Assran et al. 2025 (facebookresearch/vjepa2), as transformers' `VJEPA2Model` and `VJEPA2ForVideoClassification`
compute it (modeling_vjepa2.py):

- Encoder: a Conv3d tubelet embedding (here the equivalent linear map of (t, h, w, c)-ordered patch pixels), pre-norm
  ViT blocks whose attention turns q and k by rotary position embeddings over the token's (t, h, w) grid position
  (`rope_tables`), a final LayerNorm. No position table: any clip length and size works, the rotations follow the
  token grid of the clip given.
- Predictor: the encoder's tokens at the context positions projected to the predictor's width, followed by one
  learned mask token (`mask_tokens[mask_index]`) per target position; narrow ViT blocks with the same rotary
  embedding over those tokens' positions; LayerNorm; the target tokens projected back to the encoder's width.
  transformers sorts the tokens by position before the blocks and back after them; attention with rotary positions
  is equivariant to the order of the tokens, so the result is the same without the sort (to float rounding).
- Classifier (`head="classification"`): an attentive pooler over the encoder's tokens, `num_pooler_layers`
  self-attention blocks then one cross-attention block from a learned query token (q from the raw query; keys and
  values from the normed tokens; no output projection; MLP 4 x width whatever the encoder's), and a linear head.

The rotary embedding (transformers' `rotate_queries_or_keys`): each head's first 3 * d features, d = 2 *
((head_dim // 3) // 2), turn by the frame, row and column index in turn, d features each, the rest pass. Within an
axis' d features, pairs (2i, 2i+1) turn, and feature j's frequency is omega[j mod d/2], omega[i] = 10000^(-i / (d/2))
(the reference repeats the d/2 frequencies rather than interleaving them; kept, since checkpoints learned with it).

Heads: "none" (`VJEPA2Model`: the encoder, and the predictor when `context_ids` and `target_ids` are given) and
"classification". Inputs are channels-last float videos `(batch, frames, height, width, 3)` normalised with
`config.pixel_mean/pixel_std`; a clip of fewer frames than the tubelet is repeated to it, as transformers does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.models import layers
from vidjax.ops import attention
from vidjax.patches import grid_shape, patchify

# ViT sizes of V-JEPA 2: name -> (width, depth, heads). L, H and g as published (configuration_vjepa2.py, the Hub
# configs facebook/vjepa2-vit{l,h,g}-fpc64-256 and -384): ViT-g has 22 heads of 64, not VideoMAE V2's 16 of 88. The
# smaller ViT sizes serve tests and laptop runs.
SIZES: dict[str, tuple[int, int, int]] = {**{k: v for k, v in layers.VIT_SIZES.items() if k != "g"},
                                          "g": (1408, 40, 22)}
MLP_DIMS: dict[str, int] = {"g": 6144}  # ViT-g's mlp_ratio 48/11: int(1408 * 48 / 11)
HEADS = ("none", "classification")


def dims(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """(width, depth, num_heads, mlp_dim, patch) of the encoder of `cfg`: the variant's, with its nonzero keys."""
    size, patch = layers.parse_variant(cfg.variant, SIZES)
    w, d, h = SIZES[size]
    width = cfg.width or w
    mlp = cfg.mlp_dim or (MLP_DIMS.get(size, 4 * w) if width == w else 4 * width)
    return dict(width=width, depth=cfg.depth or d, num_heads=cfg.num_heads or h, mlp_dim=mlp, patch=patch)


def rope_tables(ids: jax.Array, grid_hw: tuple[int, int], head_dim: int) -> tuple[jax.Array, jax.Array] | None:
    """(cos, sin) of V-JEPA 2's rotary embedding (`layers.rotate`) for tokens at flat grid indices `ids` (..., N)
    of a (t, h, w) grid with h x w = `grid_hw`: each (..., N, 3 d), float32, frame angles then row then column
    (the module docstring); None when the heads are too narrow to rotate (d = 0)."""
    d = 2 * ((head_dim // 3) // 2)
    if d == 0:
        return None
    h, w = grid_hw
    ids = jnp.asarray(ids, jnp.int32)
    positions = (ids // (h * w), (ids % (h * w)) // w, ids % w)
    # float32 throughout, as the reference computes omega in the activations' dtype
    omega = np.float32(1.0) / np.float32(10000.0) ** (np.arange(d // 2, dtype=np.float32) / np.float32(d / 2))
    omega = jnp.asarray(omega[np.arange(d) % (d // 2)])
    angles = jnp.concatenate([p.astype(jnp.float32)[..., None] * omega for p in positions], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def gather(x_BND: jax.Array, ids_BK: jax.Array) -> jax.Array:
    """The tokens (B, K, D) of `x_BND` at the flat grid positions `ids_BK` (B, K)."""
    return jnp.take_along_axis(x_BND, ids_BK[..., None].astype(jnp.int32), axis=1)


class Encoder(nnx.Module):
    """Tubelet embedding + ViT blocks with 3-D rotary positions + a final LayerNorm."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, choices: platform.Choices, rngs: nnx.Rngs):
        d = dims(cfg)
        self.width, self.patch, self.tubelet, self.num_heads = d["width"], d["patch"], cfg.tubelet_size, d["num_heads"]
        dtype = jnp.dtype(cfg.dtype)
        # PyTorch's default Conv3d init (kaiming-uniform with a=sqrt(5)) is uniform with variance 1/(3*fan_in).
        conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.patch_embed = layers.Dense(self.tubelet * self.patch * self.patch * 3, self.width, (None, "embed"),
                                        dtype=dtype, kernel_init=conv_init, choices=choices, rngs=rngs)
        self.transformer = layers.Transformer(
            self.width, d["depth"], d["num_heads"], d["mlp_dim"], eps=cfg.ln_eps, drop_path=cfg.drop_path,
            qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices, remat=cfg.remat, scan=cfg.scan_layers, rngs=rngs)
        self.norm = layers.LayerNorm(self.width, cfg.ln_eps, choices=choices, rngs=rngs)

    def grid(self, video_BTHWC: jax.Array) -> tuple[int, int, int]:
        """The (t, h, w) token grid of a clip (after repeating a clip shorter than the tubelet)."""
        t, h, w = video_BTHWC.shape[1:4]
        return grid_shape((max(t, self.tubelet), h, w), self.tubelet, self.patch)

    def __call__(self, video_BTHWC: jax.Array, rng: jax.Array | None = None, keep_ids: jax.Array | None = None
                 ) -> jax.Array:
        """Tokens (B, t*h*w, D) of a clip; with `keep_ids` (int (B, K) flat grid positions), only those tokens
        (B, K, D), each at its own rotary position: the context encoder of pre-training, which sees the visible
        tokens alone (the official encoder's `masks` argument)."""
        if video_BTHWC.ndim != 5 or video_BTHWC.shape[-1] != 3:
            raise ValueError(f"V-JEPA 2 expects videos shaped (batch, frames, height, width, 3) channels-last; got "
                             f"{tuple(video_BTHWC.shape)}.")
        if video_BTHWC.shape[1] < self.tubelet:  # an image or a short clip: frames repeated, as transformers does
            video_BTHWC = jnp.tile(video_BTHWC, (1, self.tubelet, 1, 1, 1))
        t, h, w = self.grid(video_BTHWC)
        x = self.patch_embed(patchify(video_BTHWC, self.tubelet, self.patch))
        ids = jnp.arange(t * h * w)[None]
        if keep_ids is not None:
            x, ids = gather(x, keep_ids), keep_ids
        rope = rope_tables(ids, (h, w), self.width // self.num_heads)
        return self.norm(self.transformer(x, rng, rope=rope))


class Predictor(nnx.Module):
    """The narrow ViT that predicts the encoder's features at target positions from those at context positions."""

    def __init__(self, cfg: ml_collections.ConfigDict, width: int, *, choices: platform.Choices, rngs: nnx.Rngs):
        pw, heads = cfg.predictor_width, cfg.predictor_heads
        dtype = jnp.dtype(cfg.dtype)
        self.num_heads, self.width = heads, pw
        self.embed = layers.Dense(width, pw, ("embed", "decoder_embed"), dtype=dtype, choices=choices, rngs=rngs)
        # zero-initialised, as the reference's `zero_init_mask_tokens` (its default)
        self.mask_tokens = nnx.Param(jnp.zeros((cfg.num_mask_tokens, pw), jnp.float32),
                                     out_sharding=(None, "decoder_embed"))
        self.transformer = layers.Transformer(
            pw, cfg.predictor_depth, heads, cfg.predictor_mlp_dim or 4 * pw, eps=cfg.ln_eps,
            drop_path=cfg.drop_path, qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices, remat=cfg.remat,
            scan=cfg.scan_layers, rngs=rngs)
        self.norm = layers.LayerNorm(pw, cfg.ln_eps, choices=choices, rngs=rngs)
        self.proj = layers.Dense(pw, width, ("decoder_embed", "embed"), dtype=dtype, choices=choices, rngs=rngs)

    def __call__(self, context_BCD: jax.Array, context_ids: jax.Array, target_ids: jax.Array,
                 grid_hw: tuple[int, int], *, mask_index: int = 1, rng: jax.Array | None = None) -> jax.Array:
        """The encoder's tokens at `context_ids` (B, n_context, D) -> predicted features (B, n_target, D) at
        `target_ids` (B, n_target); indices are flat (t, h, w) grid positions, h x w = `grid_hw`."""
        context = self.embed(context_BCD)
        b, n_target = target_ids.shape
        tokens = self.mask_tokens[...]
        token = tokens[mask_index % tokens.shape[0]].astype(context.dtype)
        x = jnp.concatenate([context, jnp.broadcast_to(token, (b, n_target, token.shape[-1]))], axis=1)
        ids = jnp.concatenate([context_ids, target_ids], axis=1)
        x = self.norm(self.transformer(x, rng, rope=rope_tables(ids, grid_hw, self.width // self.num_heads)))
        return self.proj(x[:, context_ids.shape[1]:])


class CrossAttention(nnx.Module):
    """Multi-head attention from query tokens to other tokens, with q, k and v biases and no output projection (the
    reference pooler's cross-attention)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, choices: platform.Choices, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}.")
        hd = dim // num_heads
        xavier = nnx.initializers.xavier_uniform()
        self.q = nnx.Param(xavier(rngs.params(), (dim, dim), jnp.float32).reshape(dim, num_heads, hd),
                           out_sharding=("embed", "heads", "head_dim"))
        self.q_bias = nnx.Param(jnp.zeros((num_heads, hd), jnp.float32), out_sharding=("heads", "head_dim"))
        self.kv = nnx.Param(xavier(rngs.params(), (dim, 2 * dim), jnp.float32).reshape(dim, 2, num_heads, hd),
                            out_sharding=("embed", None, "heads", "head_dim"))
        self.kv_bias = nnx.Param(jnp.zeros((2, num_heads, hd), jnp.float32), out_sharding=(None, "heads", "head_dim"))
        self.dtype = dtype
        self.implementation = choices.need("attention_impl")
        self.projection_form = choices.need("projection_form")

    def __call__(self, queries_BQD: jax.Array, x_BND: jax.Array) -> jax.Array:
        dt, form = self.dtype, self.projection_form
        q = layers.project(queries_BQD.astype(dt), self.q[...], form=form) + self.q_bias[...].astype(dt)
        kv = layers.project(x_BND.astype(dt), self.kv[...], form=form) + self.kv_bias[...].astype(dt)
        out = attention.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], self.implementation)
        return out.reshape(*out.shape[:2], -1)


class CrossAttentionBlock(nnx.Module):
    """queries + CrossAttn(queries, LN(x)), then + MLP(LN(.)): the pooler's last layer."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float, dtype, choices: platform.Choices,
                 rngs: nnx.Rngs):
        self.norm1 = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.attn = CrossAttention(dim, num_heads, dtype=dtype, choices=choices, rngs=rngs)
        self.norm2 = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, choices=choices, rngs=rngs)

    def __call__(self, queries_BQD: jax.Array, x_BND: jax.Array) -> jax.Array:
        y = queries_BQD.astype(x_BND.dtype) + self.attn(queries_BQD, self.norm1(x_BND))
        return y + self.mlp(self.norm2(y))


class AttentivePooler(nnx.Module):
    """Tokens (B, N, D) -> (B, D): `depth` self-attention blocks over the tokens, then a learned query token
    cross-attends to them (`CrossAttentionBlock`), as V-JEPA 2's attentive probe and classifiers pool."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, depth: int, *, eps: float, dtype,
                 choices: platform.Choices, remat: str = "none", scan: bool = False, rngs: nnx.Rngs):
        self.query = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -2, 2, (dim,)),
                               out_sharding=("embed",))
        self.blocks = layers.Transformer(dim, depth, num_heads, mlp_dim, eps=eps, qkv_bias="qkv", dtype=dtype,
                                         choices=choices, remat=remat, scan=scan, rngs=rngs) if depth else None
        self.cross = CrossAttentionBlock(dim, num_heads, mlp_dim, eps=eps, dtype=dtype, choices=choices, rngs=rngs)

    def __call__(self, x_BND: jax.Array) -> jax.Array:
        if self.blocks is not None:
            x_BND = self.blocks(x_BND)
        queries = jnp.broadcast_to(self.query[...], (x_BND.shape[0], 1, x_BND.shape[-1]))
        return self.cross(queries, x_BND)[:, 0]


class Model(nnx.Module):
    """V-JEPA 2: the encoder, the predictor (`config.model.predictor`) and, for `head="classification"`, the
    attentive pooler and linear head.

    `model(video)` -> {"last_hidden_state" (B, tokens, width)} (+ "logits" (B, num_classes) float32 with a head);
    `model(video, context_ids=C, target_ids=T)` (int (B, n_context) and (B, n_target) flat token indices, as
    transformers' `context_mask=[C]`, `target_mask=[T]`) adds "predictor_output" (B, n_target, width), the
    predictor's features at T, and "target_hidden_state" (B, n_target, width), the encoder's tokens there.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.head not in HEADS:
            raise ValueError(f"config.model.head must be one of {', '.join(HEADS)} for V-JEPA 2, got {cfg.head!r}.")
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        self.head_kind = cfg.head
        self.mask_index = int(cfg.mask_index)
        self.encoder = Encoder(cfg, choices=choices, rngs=rngs)
        width, heads, dtype = self.encoder.width, self.encoder.num_heads, jnp.dtype(cfg.dtype)
        self.predictor = Predictor(cfg, width, choices=choices, rngs=rngs) if cfg.predictor else None
        if cfg.head == "classification":
            # The pooler's MLP is 4 x width for every size (transformers builds it at its default ratio).
            self.pooler = AttentivePooler(width, heads, 4 * width, cfg.num_pooler_layers, eps=cfg.ln_eps, dtype=dtype,
                                          choices=choices, remat=cfg.remat, scan=cfg.scan_layers, rngs=rngs)
            self.head = layers.Dense(width, cfg.num_classes, ("embed", "classes"),
                                     kernel_init=nnx.initializers.truncated_normal(0.02), choices=choices, rngs=rngs)

    def __call__(self, video: jax.Array, context_ids: jax.Array | None = None, target_ids: jax.Array | None = None,
                 *, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        rng_enc, rng_pred = jax.random.split(rng) if rng is not None else (None, None)
        x = self.encoder(video, rng_enc)
        out = {"last_hidden_state": x}
        if (context_ids is None) != (target_ids is None):
            raise ValueError("The V-JEPA 2 predictor needs both context_ids and target_ids (int (batch, n) token "
                             "indices), or neither.")
        if context_ids is not None:
            if self.predictor is None:
                raise ValueError("This V-JEPA 2 model was built without its predictor (config.model.predictor="
                                 "False); it cannot take context_ids / target_ids.")
            _, h, w = self.encoder.grid(video)
            out["predictor_output"] = self.predictor(gather(x, context_ids), context_ids, target_ids, (h, w),
                                                     mask_index=self.mask_index, rng=rng_pred)
            out["target_hidden_state"] = gather(x, target_ids)
        if self.head_kind == "classification":
            out["logits"] = self.head(self.pooler(x).astype(jnp.float32)).astype(jnp.float32)
        return out


def default_config() -> ml_collections.ConfigDict:
    """The model block of a V-JEPA 2 config: ViT-L/16 at 64 frames x 256 px, as facebook/vjepa2-vitl-fpc64-256."""
    return ml_collections.ConfigDict(dict(
        variant="L/16",  # SIZE/PATCH, SIZE one of SIZES (L, H, g as published; Mu..B for small runs)
        width=0, depth=0, num_heads=0, mlp_dim=0,  # 0 = from the variant
        num_frames=64, image_size=256, tubelet_size=2,  # the clips it is fed; the rotations take any size
        head="none",  # none (VJEPA2Model: encoder + predictor) | classification (attentive pooler + linear head)
        predictor=True,  # build the predictor (a classifier need not)
        predictor_width=384, predictor_depth=12, predictor_heads=12,
        predictor_mlp_dim=0,  # 0 = 4 x predictor_width
        num_mask_tokens=10,
        mask_index=1,  # the mask token the predictor uses (transformers' default)
        num_classes=174, num_pooler_layers=3,
        qkv_bias="qkv",  # "qkv" (the reference) or "none"
        ln_eps=1e-6,
        drop_path=0.0,
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=(0.485, 0.456, 0.406),
        pixel_std=(0.229, 0.224, 0.225),
    ))
