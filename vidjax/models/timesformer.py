"""TimeSformer: a ViT over per-frame patches with divided (time, then space), joint or space-only attention.

Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?" (2021). Layout and constants
follow the reference (facebookresearch/TimeSformer and its Hugging Face port): each frame is cut into patches by
a linear map of (h, w, c)-ordered patch pixels (a Conv2d with stride = kernel); a learned CLS token and a learned
spatial position table (CLS row first) are added per frame, then a learned time table per frame. Tokens are CLS
followed by the patches in (h, w, t) order, time fastest: the order of the reference's `last_hidden_state`.

Attention types (`config.attention_type`):
- "divided_space_time": per block, temporal attention over the T tokens of each patch position (no CLS), through
  `temporal_fc` (zero at init, so a fresh block starts as a plain ViT block), then spatial attention within each
  frame with the CLS token repeated into every frame and its T outputs averaged back.
- "joint_space_time": a plain ViT block over all 1 + H'W'T tokens.
- "space_only": no time table; each frame runs through the blocks alone with its own CLS token and the frames'
  token sequences are averaged before the final norm, as the official code does. (The Hugging Face port instead
  returns one CLS/logits row per frame, shape (B*T, ...); vidjax keeps the official per-clip output.)

Groups of tokens (per patch position over time, per frame over space) are folded into the batch axis of the
shared `layers.Attention`, so every attention call is one batched op. Classification reads the CLS token after
the final LayerNorm.

Clips of another frame count or size than the config's are refused unless `config.resize_at_runtime` is set: then
the position tables are resized to each clip inside `embed`, as SVT's TimeSformer does for its multi-crop views
(the same nearest rule as `resize_positions`, so a model built at the clip's size with resized tables computes
the same thing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.models import Benchmark, LayerLayout, Traits, layers
from vidjax.models.positions import interpolation_matrix, resize_grid
from vidjax.patches import grid_shape, patchify

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")

TRAITS = Traits(
    layer_layout=LayerLayout(blocks=((("blocks",),),),
                             embedding=(("patch_embed",), ("cls_token",), ("pos_embed",), ("time_embed",)),
                             head=(("norm",), ("head",))),
    benchmark=Benchmark("B/16", ("infer", "finetune"), "Mu/8", place=1),
    distill=("student",), distill_masks=("tube",))


class Block(nnx.Module):
    """One TimeSformer block; `__call__(x, num_frames, rng)` maps tokens (B', L, D) to the same shape.

    "divided_space_time" reads the tokens as CLS + patches in (h, w, t) order with `num_frames` frames; the other
    types attend over all L tokens (a whole clip for joint, one frame for space_only) and ignore `num_frames`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, attention_type: str, eps: float,
                 drop_path: float, qkv_bias: str, approximate_gelu: bool, dtype,
                 choices: platform.Choices | None = None, rngs: nnx.Rngs):
        self.attention_type = attention_type
        self.drop_path = drop_path
        if attention_type == "divided_space_time":
            self.temporal_norm = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
            self.temporal_attn = layers.Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, choices=choices,
                                                  rngs=rngs)
            # Zero at init as in the reference, so the temporal branch starts as an identity residual and the
            # block starts as the (image-pretrained) spatial ViT block.
            self.temporal_fc = layers.Dense(dim, dim, ("embed", "embed"), dtype=dtype,
                                            kernel_init=nnx.initializers.zeros, choices=choices, rngs=rngs)
        self.norm1 = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.attn = layers.Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, choices=choices, rngs=rngs)
        self.norm2 = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, approximate_gelu=approximate_gelu, choices=choices,
                              rngs=rngs)

    def _divided(self, x_BLD: jax.Array, num_frames: int, rng_t, rng_s) -> jax.Array:
        b, _, d = x_BLD.shape
        t = num_frames
        cls_B1D = x_BLD[:, :1]
        x_BPTD = x_BLD[:, 1:].reshape(b, -1, t, d)
        p = x_BPTD.shape[1]
        # Temporal attention: each patch position's T tokens form one group. Stochastic depth drops a whole
        # sample's branch (the reference draws per patch position, an artefact of its reshape).
        res_BPTD = self.temporal_attn(self.temporal_norm(x_BPTD.reshape(b * p, t, d))).reshape(b, p, t, d)
        x_BPTD = x_BPTD + self.temporal_fc(layers.drop_path(res_BPTD, self.drop_path, rng_t))
        # Spatial attention: each frame's patches with its own copy of the CLS token; the T CLS outputs are
        # averaged back into the one CLS token.
        frames_BTPD = jnp.swapaxes(x_BPTD, 1, 2)
        cls_BT1D = jnp.broadcast_to(cls_B1D[:, None], (b, t, 1, d))
        groups = jnp.concatenate([cls_BT1D, frames_BTPD], axis=2).reshape(b * t, 1 + p, d)
        res_BTLD = self.attn(self.norm1(groups)).reshape(b, t, 1 + p, d)
        res_BTLD = layers.drop_path(res_BTLD, self.drop_path, rng_s)
        cls_B1D = cls_B1D + jnp.mean(res_BTLD[:, :, :1], axis=1)
        x_BPTD = x_BPTD + jnp.swapaxes(res_BTLD[:, :, 1:], 1, 2)
        return jnp.concatenate([cls_B1D, x_BPTD.reshape(b, p * t, d)], axis=1)

    def __call__(self, x_BLD: jax.Array, num_frames: int, rng: jax.Array | None = None) -> jax.Array:
        rng_t, rng_s, rng_mlp = jax.random.split(rng, 3) if rng is not None else (None, None, None)
        if self.attention_type == "divided_space_time":
            x_BLD = self._divided(x_BLD, num_frames, rng_t, rng_s)
        else:
            x_BLD = x_BLD + layers.drop_path(self.attn(self.norm1(x_BLD)), self.drop_path, rng_s)
        return x_BLD + layers.drop_path(self.mlp(self.norm2(x_BLD)), self.drop_path, rng_mlp)


class Model(nnx.Module):
    """TimeSformer classifier (`cfg.head == "classification"`) or backbone (`"none"`).

    `model(video)` -> {"last_hidden_state" (B, 1 + H'W'T, D) after the final norm (space_only: (B, 1 + H'W', D),
    frame-averaged), and with a head "logits" (B, num_classes) float32 from the CLS token}.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"config.model.attention_type must be one of {', '.join(ATTENTION_TYPES)}; "
                             f"got {cfg.attention_type!r}.")
        if cfg.head not in ("classification", "none"):
            raise ValueError(f"config.model.head must be 'classification' or 'none' for TimeSformer, "
                             f"got {cfg.head!r}.")
        dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
        # The platform values ("auto" resolved here unless the config was resolved at set-up, vidjax/platform.py).
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        self.block_gradients = choices.block_gradients
        self.width, self.patch = dims["width"], dims["patch"]
        self.attention_type = cfg.attention_type
        self.resize_at_runtime = bool(cfg.resize_at_runtime)
        _, h, w = grid_shape((cfg.num_frames, cfg.image_size, cfg.image_size), 1, self.patch)
        self.grid = (cfg.num_frames, h, w)
        dtype = jnp.dtype(cfg.dtype)
        # PyTorch's default Conv2d init (kaiming-uniform with a=sqrt(5)) is uniform with variance 1/(3*fan_in).
        conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.patch_embed = layers.Dense(self.patch * self.patch * 3, self.width, (None, "embed"), dtype=dtype,
                                        kernel_init=conv_init, choices=choices, rngs=rngs)
        table_init = nnx.initializers.truncated_normal(0.02)
        self.cls_token = nnx.Param(table_init(rngs.params(), (self.width,)), out_sharding=("embed",))
        pos_init = layers.position_init(cfg.position_init, table_init, leading=1)
        self.pos_embed = nnx.Param(pos_init(rngs.params(), (1 + h * w, self.width)),
                                   out_sharding=("positions", "embed"))
        if cfg.attention_type != "space_only":
            # Zero at init in the reference: the model starts as the image model applied per frame.
            time_init = layers.position_init(cfg.position_init, nnx.initializers.zeros)
            self.time_embed = nnx.Param(time_init(None, (cfg.num_frames, self.width)),
                                        out_sharding=("positions", "embed"))
        rates = np.linspace(0.0, cfg.drop_path, dims["depth"]) if dims["depth"] > 1 else np.array([cfg.drop_path])
        self.blocks = layers.make_blocks(
            lambda rate, rngs: Block(self.width, dims["num_heads"], dims["mlp_dim"], attention_type=cfg.attention_type,
                                     eps=cfg.ln_eps, drop_path=rate, qkv_bias="qkv" if cfg.qkv_bias else "none",
                                     approximate_gelu=cfg.approximate_gelu, dtype=dtype, choices=choices, rngs=rngs),
            rates, scan=cfg.scan_layers, rngs=rngs)
        self.remat = layers.check_remat(cfg.remat)
        self.scan_layers = bool(cfg.scan_layers)
        self.norm = layers.LayerNorm(self.width, cfg.ln_eps, choices=choices, rngs=rngs)
        if cfg.head == "classification":
            head_init = nnx.initializers.truncated_normal(0.02 * cfg.head_init_scale)
            self.head = layers.Dense(self.width, cfg.num_classes, ("embed", "classes"), kernel_init=head_init,
                                     choices=choices, rngs=rngs)
        else:
            self.head = None

    def _position_tables(self, t: int, h: int, w: int) -> tuple[jax.Array, jax.Array | None]:
        """The spatial table (1 + h*w, D) and the time table (t, D) (None for space_only) for a clip of t frames
        and an h x w patch grid: the learned tables, resized by nearest when the grid differs from the config's.

        SVT resizes with `F.interpolate(mode="nearest")` (its models/timesformer.py `forward_features`): the CLS row
        is kept and the patch rows are resized over the grid. The source rows come from the same PyTorch rule as
        `resize_positions`, so both paths pick the same rows; a gather of rows keeps the values exact.
        """
        def rows(n_in: int, n_out: int) -> np.ndarray:
            return interpolation_matrix(n_in, n_out, "nearest").argmax(axis=1)

        t0, h0, w0 = self.grid
        pos = self.pos_embed[...]
        if (h, w) != (h0, w0):
            patch_rows = (rows(h0, h)[:, None] * w0 + rows(w0, w)[None, :]).reshape(-1)
            pos = jnp.concatenate([pos[:1], pos[1 + patch_rows]], axis=0)
        if self.attention_type == "space_only":
            return pos, None
        time = self.time_embed[...]
        return pos, (time if t == t0 else time[rows(t0, t)])

    def embed(self, video_BTHWC: jax.Array) -> jax.Array:
        """Patch, CLS, space and time embeddings: (B, 1 + H'W'T, D), or (B*T, 1 + H'W', D) for space_only."""
        t0, h0, w0 = self.grid
        expected = (t0, h0 * self.patch, w0 * self.patch, 3)
        if not self.resize_at_runtime and tuple(video_BTHWC.shape[1:]) != expected:
            raise ValueError(f"TimeSformer expects videos shaped (batch, {', '.join(map(str, expected))}) "
                             f"channels-last; got {tuple(video_BTHWC.shape)}. For another frame count or size, "
                             f"build the model with that config and adapt the weights with resize_positions, or "
                             f"set config.model.resize_at_runtime=True to resize the position tables per clip.")
        if video_BTHWC.ndim != 5 or video_BTHWC.shape[-1] != 3:
            raise ValueError(f"TimeSformer expects RGB videos shaped (batch, frames, height, width, 3) channels-last; "
                             f"got {tuple(video_BTHWC.shape)}.")
        b, t, height, width, _ = video_BTHWC.shape
        _, h, w = grid_shape((t, height, width), 1, self.patch)
        d = self.width
        x_BTPD = self.patch_embed(patchify(video_BTHWC, 1, self.patch)).reshape(b, t, h * w, d)
        pos, time = self._position_tables(t, h, w)
        pos = pos.astype(x_BTPD.dtype)
        x_BTPD = x_BTPD + pos[1:]
        cls_D = self.cls_token[...].astype(x_BTPD.dtype) + pos[0]
        if self.attention_type == "space_only":
            cls_BT1D = jnp.broadcast_to(cls_D, (b, t, 1, d))
            return jnp.concatenate([cls_BT1D, x_BTPD], axis=2).reshape(b * t, 1 + h * w, d)
        x_BPTD = jnp.swapaxes(x_BTPD, 1, 2) + time.astype(x_BTPD.dtype)
        cls_B1D = jnp.broadcast_to(cls_D, (b, 1, d))
        return jnp.concatenate([cls_B1D, x_BPTD.reshape(b, h * w * t, d)], axis=1)

    def __call__(self, video: jax.Array, mask: jax.Array | None = None, *, rng: jax.Array | None = None
                 ) -> dict[str, jax.Array]:
        if mask is not None:
            raise ValueError("TimeSformer has no masked-token mode; call it without a mask.")
        b, t = video.shape[0], video.shape[1]
        x = self.embed(video)
        x = layers.run_blocks(self.blocks, x, rng, remat=self.remat, scan=self.scan_layers,
                              block_gradients=self.block_gradients, num_frames=t)
        if self.attention_type == "space_only":
            # Frames were independent sequences so far; the official model averages them into one per clip.
            x = jnp.mean(x.reshape(b, t, *x.shape[1:]).astype(jnp.float32), axis=1).astype(x.dtype)
        x = self.norm(x)
        out = {"last_hidden_state": x}
        if self.head is not None:
            out["logits"] = self.head(x[:, 0]).astype(jnp.float32)
        return out


    # ---- as a distillation's student (`vidjax.models.distill`): tube masks only ----
    @property
    def distill_width(self) -> int:
        return self.width

    @property
    def distill_grid(self) -> tuple[int, int, int]:
        return self.grid

    def layer_tokens(self, video: jax.Array, visible_ids: jax.Array, num_layers: int,
                     rng: jax.Array | None = None) -> list[jax.Array]:
        """The last `num_layers` blocks' tokens (B, T x K, width) after the final norm, frame by frame, at
        `visible_ids` (B, T x K) of a tube mask (the same K positions, in increasing order, in every frame: the
        groups divided space-time attention runs on), the CLS token left out of them but run with them."""
        if self.attention_type == "space_only":
            raise ConfigError("a space-only TimeSformer averages its frames: it gives no tokens per frame to align.")
        b, t = video.shape[:2]
        x = self.embed(video)
        d = x.shape[-1]
        k = visible_ids.shape[1] // t
        positions = visible_ids[:, :k]  # the first frame's, which are every frame's under a tube mask
        kept = jnp.take_along_axis(x[:, 1:].reshape(b, -1, t, d), positions[:, :, None, None], axis=1)
        x = jnp.concatenate([x[:, :1], kept.reshape(b, k * t, d)], axis=1)
        outs = layers.last_outputs(self.blocks, x, rng, num_layers, remat=self.remat,
                                   block_gradients=self.block_gradients, num_frames=t)
        return [jnp.swapaxes(self.norm(y)[:, 1:].reshape(b, k, t, d), 1, 2).reshape(b, t * k, d) for y in outs]


def default_config() -> ml_collections.ConfigDict:
    """The model block of a TimeSformer config; configs/ files start from it and set what the recipe says."""
    return ml_collections.ConfigDict(dict(
        variant="B/16",
        width=0, depth=0, num_heads=0, mlp_dim=0,  # 0 = from the variant
        num_frames=8, image_size=224,
        # True: clips of any frame count and (patch-divisible) size are taken, the position tables resized to each
        # by nearest (SVT's multi-crop views); False: another clip size is an error.
        resize_at_runtime=False,
        attention_type="divided_space_time",
        head="classification",
        num_classes=400, head_init_scale=1.0,
        position_init="reference",  # reference | sincos (layers.position_init: for training from scratch)
        qkv_bias=True,
        ln_eps=1e-6,
        approximate_gelu=False,  # True for checkpoints with hidden_act "gelu_new"/"gelu_fast"/"gelu_pytorch_tanh"
        drop_path=0.0,
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=(0.485, 0.456, 0.406),
        pixel_std=(0.229, 0.224, 0.225),
    ))


def resize_positions(params: dict[str, np.ndarray], src: ml_collections.ConfigDict,
                     dst: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Adapts the learned tables of a model built with `src` to `dst`'s num_frames and image_size.

    As the reference does when its input differs from its config: the spatial table (CLS row kept) is resized
    over the patch grid and the time table over frames, both with PyTorch's legacy nearest rule. Other
    parameters are returned unchanged; equal sizes return the tables unchanged.
    """
    patch = layers.vit_dims(src.variant, src.width)["patch"]
    if layers.vit_dims(dst.variant, dst.width)["patch"] != patch:
        raise ValueError(f"resize_positions cannot change the patch size ({src.variant} -> {dst.variant}).")
    _, sh, sw = grid_shape((src.num_frames, src.image_size, src.image_size), 1, patch)
    _, dh, dw = grid_shape((dst.num_frames, dst.image_size, dst.image_size), 1, patch)
    out = dict(params)
    pos = np.asarray(params["pos_embed"])
    if (sh, sw) != (dh, dw):
        out["pos_embed"] = np.concatenate([pos[:1], resize_grid(pos[1:], (sh, sw), (dh, dw), "nearest")], axis=0)
    if "time_embed" in params and src.num_frames != dst.num_frames:
        out["time_embed"] = resize_grid(params["time_embed"], (src.num_frames,), (dst.num_frames,), "nearest")
    return out
