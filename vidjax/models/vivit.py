"""ViViT (Arnab et al., 2021): a video vision transformer over tubelet tokens, in the paper's four factorisations.

`config.model_type` picks the model of the paper:
  "joint" (model 1): one transformer over all space-time tokens, with a CLS token. This is the model Hugging Face
    ports (`VivitForVideoClassification`, converted from scenic): tubelet Conv3d = a linear map of (t, h, w, c)-ordered
    tubelet pixels, CLS first then tokens in (t, h, w) order, a learned position table over all of them, q/k/v
    biases, tanh-form GELU, LayerNorm eps 1e-6, a final LayerNorm, the classifier on the CLS token.
  "factorised_encoder" (model 2): a spatial transformer per tubelet time index (its own CLS per time index, a
    learned table over the frame's patches), then a temporal transformer over those per-time CLS outputs plus its
    own CLS (its own learned table; depth `config.temporal_depth`); each encoder ends with a LayerNorm.
  "factorised_self_attention" (model 3): each block attends within a frame, then within a spatial location, then
    runs its MLP (order set by `config.attention_order`); no CLS token, global average pooling (as scenic).
  "factorised_dot_product" (model 4): each block's heads are split in two: the first half attends over time at
    each location, the second half within each frame (scenic's order), outputs concatenated; no CLS, average pool.

Constants follow scenic's projects/vivit: learned positions initialised N(0, 0.02), CLS tokens and the classifier
kernel zero-initialised, tanh GELU. Attention over groups (per frame, per location) folds the groups into the batch
axis. `inflate_2d` builds a tubelet kernel from a 2D patch-embedding kernel, `resize_positions` adapts learned
tables to another frame count or image size.

Inputs are channels-last float videos `(batch, frames, height, width, 3)`, normalised with
`config.pixel_mean/pixel_std` (scenic trains on pixels scaled to [-1, 1]: mean 0.5, std 0.5).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.models import Benchmark, LayerLayout, Traits, layers
from vidjax.models.positions import resize_grid
from vidjax.ops import attention
from vidjax.patches import grid_shape, patchify

MODEL_TYPES = ("joint", "factorised_encoder", "factorised_self_attention", "factorised_dot_product")
_CLS_MODEL_TYPES = ("joint", "factorised_encoder")
_VARIANT_RE = re.compile(r"^([A-Za-z]+)/(\d+)x(\d+)$")

TRAITS = Traits(
    layer_layout=LayerLayout(
        # joint; factorised_encoder (the spatial transformer, then the temporal one, counted as one sequence of
        # blocks); factorised_self_attention and factorised_dot_product
        blocks=((("transformer", "blocks"),), (("transformer", "blocks"), ("temporal_transformer", "blocks")),
                (("blocks",),)),
        embedding=(("patch_embed",), ("cls_token",), ("pos_embed",)),
        # factorised_encoder: the spatial encoder's closing norm and the temporal encoder's own CLS token and position
        # table lead into the temporal stack.
        between={("spatial_norm",): ("temporal_transformer", "blocks"),
                 ("temporal_cls_token",): ("temporal_transformer", "blocks"),
                 ("temporal_pos_embed",): ("temporal_transformer", "blocks")},
        head=(("norm",), ("pooler",), ("head",))),
    benchmark=Benchmark("B/16x2", ("infer", "finetune"), "Mu/8x2", place=2))


def parse_variant(variant: str) -> tuple[str, int, int]:
    """Splits "B/16x2" into (size name, patch size, tubelet frames), with a clear error if malformed."""
    match = _VARIANT_RE.match(str(variant).strip())
    if not match or match.group(1) not in layers.VIT_SIZES or int(match.group(2)) < 1 or int(match.group(3)) < 1:
        raise ConfigError(
            f"Unknown ViViT variant {variant!r}: expected SIZE/PATCHxTUBELET with SIZE one of "
            f"{', '.join(layers.VIT_SIZES)} and PATCH, TUBELET positive integers, e.g. 'B/16x2' "
            f"(16x16 pixel patches over 2 frames).")
    return match.group(1), int(match.group(2)), int(match.group(3))


def classifier_of(cfg: ml_collections.ConfigDict) -> str:
    """"token" (CLS) or "gap" (mean over tokens); `config.classifier == ""` takes scenic's choice for the model."""
    if cfg.model_type not in MODEL_TYPES:
        raise ConfigError(f"config.model.model_type={cfg.model_type!r}; choose one of {', '.join(MODEL_TYPES)}.")
    classifier = cfg.classifier or ("token" if cfg.model_type in _CLS_MODEL_TYPES else "gap")
    if classifier not in ("token", "gap"):
        raise ConfigError(f"config.model.classifier={classifier!r}; choose 'token', 'gap' or '' (the default).")
    if classifier == "token" and cfg.model_type not in _CLS_MODEL_TYPES:
        raise ConfigError(f"config.model.classifier='token' is not possible with model_type={cfg.model_type!r}: a "
                          f"CLS token has no place in its (time, space) token grid; use 'gap'.")
    return classifier


def token_grid(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(t', h', w'): tubelet tokens along time, height and width for `config.num_frames` x `config.image_size`."""
    _, patch, tubelet = parse_variant(cfg.variant)
    return grid_shape((cfg.num_frames, cfg.image_size, cfg.image_size), tubelet, patch)


def inflate_2d(kernel_2d: np.ndarray, tubelet: int, method: str) -> np.ndarray:
    """A tubelet-embedding kernel from a 2D patch-embedding kernel, as scenic's `init_embedding` does.

    `kernel_2d` is (p*p*c, D) with pixels in (h, w, c) order (vidjax's layout of a 2D patch embedding); the result
    is (tubelet*p*p*c, D) in (t, h, w, c) order, the layout of `Model.patch_embed.kernel`.
    "central_frame": the 2D weights on frame tubelet // 2, zeros on the others.
    "filter": the 2D weights on every frame, divided by `tubelet` (filter inflation); on a static clip both give
    the 2D embedding's output.
    """
    kernel_2d = np.asarray(kernel_2d)
    if kernel_2d.ndim != 2:
        raise ValueError(f"inflate_2d expects a (patch*patch*channels, width) kernel, got shape {kernel_2d.shape}.")
    if method == "central_frame":
        kernel = np.zeros((tubelet, *kernel_2d.shape), kernel_2d.dtype)
        kernel[tubelet // 2] = kernel_2d
    elif method == "filter":
        kernel = np.repeat(kernel_2d[None], tubelet, axis=0) / tubelet
    else:
        raise ValueError(f"inflate_2d method must be 'central_frame' or 'filter', got {method!r}.")
    return kernel.reshape(tubelet * kernel_2d.shape[0], kernel_2d.shape[1]).astype(kernel_2d.dtype)


def _space_groups(x_BLD: jax.Array, t: int) -> jax.Array:
    """(B, t*s, D) -> (B*t, s, D): one sequence per frame."""
    b, n, d = x_BLD.shape
    return x_BLD.reshape(b * t, n // t, d)


def _time_groups(x_BLD: jax.Array, t: int) -> jax.Array:
    """(B, t*s, D) -> (B*s, t, D): one sequence per spatial location."""
    b, n, d = x_BLD.shape
    return x_BLD.reshape(b, t, n // t, d).transpose(0, 2, 1, 3).reshape(b * (n // t), t, d)


def _from_time_groups(x_GTD: jax.Array, b: int) -> jax.Array:
    """Inverse of `_time_groups`."""
    g, t, d = x_GTD.shape
    return x_GTD.reshape(b, g // b, t, d).transpose(0, 2, 1, 3).reshape(b, t * (g // b), d)


def factorised_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, t: int,
                                     implementation: str = "xla") -> jax.Array:
    """Model 4's attention: (B, t*s, H, K) inputs; heads [:H/2] attend over time, heads [H/2:] within a frame, each
    run by `implementation` (`attention.dot_product_attention`: the block's resolved attention_impl)."""
    b, n, h, kd = q.shape
    half = h // 2

    def over_time(x):
        return _time_groups(x.reshape(b, n, half * kd), t).reshape(-1, t, half, kd)

    def over_space(x):
        return x.reshape(b * t, n // t, h - half, kd)

    out_time = attention.dot_product_attention(over_time(q[:, :, :half]), over_time(k[:, :, :half]),
                                               over_time(v[:, :, :half]), implementation)
    out_space = attention.dot_product_attention(over_space(q[:, :, half:]), over_space(k[:, :, half:]),
                                                over_space(v[:, :, half:]), implementation)
    out_time = _from_time_groups(out_time.reshape(-1, t, half * kd), b).reshape(b, n, half, kd)
    return jnp.concatenate([out_time, out_space.reshape(b, n, h - half, kd)], axis=2)


class FactorisedSelfAttentionBlock(nnx.Module):
    """Model 3's block: self-attention within each frame and within each location (in `order`), then the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, t: int, order: tuple[str, str], eps: float,
                 drop_path: float, qkv_bias: str, dtype, choices: platform.Choices | None, approximate_gelu: bool,
                 rngs: nnx.Rngs):
        attn = functools.partial(layers.Attention, dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, choices=choices,
                                 rngs=rngs)
        self.norm_space = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.attn_space = attn()
        self.norm_time = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.attn_time = attn()
        self.norm_mlp = layers.LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, approximate_gelu=approximate_gelu, choices=choices,
                              rngs=rngs)
        self.t, self.order, self.drop_path = t, order, drop_path

    def __call__(self, x_BLD: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        rngs = jax.random.split(rng, 3) if rng is not None else (None, None, None)
        b = x_BLD.shape[0]
        for axis, r in zip(self.order, rngs[:2], strict=True):
            if axis == "space":
                y = self.attn_space(self.norm_space(_space_groups(x_BLD, self.t))).reshape(x_BLD.shape)
            else:
                y = _from_time_groups(self.attn_time(self.norm_time(_time_groups(x_BLD, self.t))), b)
            # Drop path on the (B, L, D) view, so a whole clip's branch is dropped, not single frames.
            x_BLD = x_BLD + layers.drop_path(y, self.drop_path, r)
        return x_BLD + layers.drop_path(self.mlp(self.norm_mlp(x_BLD)), self.drop_path, rngs[2])


class FactorisedDotProductBlock(layers.Block):
    """Model 4's block: a `layers.Block` (same parameters) whose attention splits its heads over time and space."""

    def __init__(self, *args, t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.t = t

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        attend = functools.partial(factorised_dot_product_attention, t=self.t,
                                   implementation=self.attn.implementation)
        x = x + layers.drop_path(self.attn(self.norm1(x), attend), self.drop_path, rng_attn)
        return x + layers.drop_path(self.mlp(self.norm2(x)), self.drop_path, rng_mlp)


def _learned(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str | None, ...], std: float,
             position_init: str, leading: int) -> nnx.Param:
    init = layers.position_init(position_init, lambda key, shape: std * jax.random.normal(key, shape, jnp.float32),
                                leading)
    return nnx.Param(init(rngs.params(), shape), out_sharding=names)


def _pool(x_BLD: jax.Array, classifier: str) -> jax.Array:
    return x_BLD[:, 0].astype(jnp.float32) if classifier == "token" else jnp.mean(x_BLD.astype(jnp.float32), axis=1)


def _with_cls(x_BLD: jax.Array, cls: nnx.Param | None) -> jax.Array:
    if cls is None:
        return x_BLD
    token = jnp.broadcast_to(cls[...].astype(x_BLD.dtype), (x_BLD.shape[0], 1, x_BLD.shape[2]))
    return jnp.concatenate([token, x_BLD], axis=1)


class Model(nnx.Module):
    """ViViT with a classification head ("classification") or none ("none").

    `model(video)` -> {"logits" (B, num_classes) float32 with the head, "last_hidden_state"}: after the final
    LayerNorm, (B, 1 + t'h'w', D) for "joint" with a CLS token (Hugging Face's `VivitModel` output), (B, 1 + t', D)
    from the temporal encoder for "factorised_encoder", (B, t'h'w', D) for the others; tokens in (t, h, w) order.
    With `cfg.pooler` (a headless joint model with a CLS token, as a converted `VivitModel`), also "pooler_output":
    tanh(dense(CLS)) of the last hidden state, (B, D) float32, as `VivitModel` computes it.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.head not in ("classification", "none"):
            raise ConfigError(f"config.model.head={cfg.head!r}; ViViT has 'classification' or 'none'.")
        self.model_type, self.head_kind = cfg.model_type, cfg.head
        self.classifier = classifier_of(cfg)
        size, self.patch, self.tubelet = parse_variant(cfg.variant)
        dims = layers.vit_dims(f"{size}/{self.patch}", cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
        self.width = width = dims["width"]
        self.grid = t, h, w = token_grid(cfg)
        dtype = jnp.dtype(cfg.dtype)
        token = self.classifier == "token"
        if cfg.model_type == "factorised_dot_product" and dims["num_heads"] % 2:
            raise ConfigError(f"model_type='factorised_dot_product' splits the heads in two halves (time, space); "
                              f"num_heads={dims['num_heads']} is odd: choose an even config.model.num_heads.")
        # The platform values ("auto" resolved here unless the config was resolved at set-up, vidjax/platform.py).
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        self.block_gradients = choices.block_gradients
        stack = dict(eps=cfg.ln_eps, drop_path=cfg.drop_path, qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices,
                     approximate_gelu=cfg.approximate_gelu, rngs=rngs)
        self.remat = layers.check_remat(cfg.remat)
        self.scan_layers = bool(cfg.scan_layers)

        # PyTorch's default Conv3d init (kaiming-uniform with a=sqrt(5)) is uniform with variance 1/(3*fan_in).
        conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.patch_embed = layers.Dense(self.tubelet * self.patch ** 2 * 3, width, (None, "embed"), dtype=dtype,
                                        kernel_init=conv_init, choices=choices, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((width,)), out_sharding=("embed",)) if token else None
        # Model 2's spatial table covers one frame's patches; the others' cover every token of the clip.
        num_positions = h * w if cfg.model_type == "factorised_encoder" else t * h * w
        self.pos_embed = _learned(rngs, (num_positions + token, width), ("positions", "embed"), 0.02,
                                  cfg.position_init, token)
        if cfg.model_type in ("joint", "factorised_encoder"):
            self.transformer = layers.Transformer(width, dims["depth"], dims["num_heads"], dims["mlp_dim"],
                                                  remat=self.remat, scan=self.scan_layers, **stack)
        else:
            rates = np.linspace(0.0, cfg.drop_path, dims["depth"]) if dims["depth"] > 1 else [cfg.drop_path]
            stack.pop("drop_path")
            if cfg.model_type == "factorised_self_attention":
                order = tuple(cfg.attention_order.split("_"))
                if sorted(order) != ["space", "time"]:
                    raise ConfigError(f"config.model.attention_order={cfg.attention_order!r}; choose 'space_time' "
                                      f"(the paper: spatial attention first) or 'time_space'.")
                rngs = stack.pop("rngs")
                self.blocks = layers.make_blocks(
                    lambda rate, rngs: FactorisedSelfAttentionBlock(width, dims["num_heads"], dims["mlp_dim"], t=t,
                                                                    order=order, drop_path=rate, rngs=rngs, **stack),
                    rates, scan=self.scan_layers, rngs=rngs)
            else:
                rngs = stack.pop("rngs")
                self.blocks = layers.make_blocks(
                    lambda rate, rngs: FactorisedDotProductBlock(width, dims["num_heads"], dims["mlp_dim"], t=t,
                                                                 drop_path=rate, rngs=rngs, **stack),
                    rates, scan=self.scan_layers, rngs=rngs)
        if cfg.model_type == "factorised_encoder":
            self.spatial_norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, rngs=rngs)
            self.temporal_cls_token = nnx.Param(jnp.zeros((width,)), out_sharding=("embed",)) if token else None
            self.temporal_pos_embed = _learned(rngs, (t + token, width), ("positions", "embed"), 0.02,
                                               cfg.position_init, token)
            self.temporal_transformer = layers.Transformer(width, cfg.temporal_depth, dims["num_heads"],
                                                           dims["mlp_dim"], remat=self.remat, scan=self.scan_layers,
                                                           **stack)
        self.norm = layers.LayerNorm(width, cfg.ln_eps, choices=choices, rngs=rngs)
        if cfg.get("pooler") and (cfg.head != "none" or self.classifier != "token"):
            raise ConfigError("config.model.pooler (VivitModel's dense + tanh on the CLS token) needs head='none' and "
                              "a CLS token (classifier 'token').")
        self.pooler = (layers.Dense(width, width, ("embed", "embed"), dtype=dtype, choices=choices, rngs=rngs)
                       if cfg.get("pooler") else None)
        if cfg.head == "classification":
            # head_init_scale 0 gives scenic's zero-initialised classifier.
            head_init = nnx.initializers.truncated_normal(0.02 * cfg.head_init_scale)
            self.head = layers.Dense(width, cfg.num_classes, ("embed", "classes"), kernel_init=head_init,
                                     choices=choices, rngs=rngs)

    def __call__(self, video: jax.Array, mask: jax.Array | None = None, *, rng: jax.Array | None = None
                 ) -> dict[str, jax.Array]:
        del mask  # ViViT has no masked pre-training; the argument keeps the model contract.
        t, h, w = self.grid
        expected = (t * self.tubelet, h * self.patch, w * self.patch, 3)
        if tuple(video.shape[1:]) != expected:
            raise ValueError(f"ViViT expects videos shaped (batch, {', '.join(map(str, expected))}) channels-last; "
                             f"got {tuple(video.shape)}.")
        b = video.shape[0]
        rng_a, rng_b = jax.random.split(rng) if rng is not None else (None, None)
        x = self.patch_embed(patchify(video, self.tubelet, self.patch))  # (B, t*h*w, D), tokens in (t, h, w) order
        if self.model_type == "factorised_encoder":
            x = _with_cls(_space_groups(x, t), self.cls_token)
            x = x + self.pos_embed[...].astype(x.dtype)
            x = self.spatial_norm(self.transformer(x, rng_a))
            x = _pool(x, self.classifier).astype(x.dtype).reshape(b, t, self.width)
            x = _with_cls(x, self.temporal_cls_token)
            x = self.temporal_transformer(x + self.temporal_pos_embed[...].astype(x.dtype), rng_b)
        else:
            x = _with_cls(x, self.cls_token)
            x = x + self.pos_embed[...].astype(x.dtype)
            if self.model_type == "joint":
                x = self.transformer(x, rng_a)
            else:
                x = layers.run_blocks(self.blocks, x, rng_a, remat=self.remat, scan=self.scan_layers,
                                      block_gradients=self.block_gradients)
        x = self.norm(x)
        out = {"last_hidden_state": x}
        if self.head_kind == "classification":
            out["logits"] = self.head(_pool(x, self.classifier)).astype(jnp.float32)
        if self.pooler is not None:
            out["pooler_output"] = jnp.tanh(self.pooler(x[:, 0])).astype(jnp.float32)
        return out


def resize_positions(params: dict[str, np.ndarray], src: ml_collections.ConfigDict,
                     dst: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Flat params of a model built with `src`, with learned position tables resized for `dst`'s frames and size.

    Tables are interpolated linearly over their token grid ((t, h, w), (h, w) for model 2's spatial table, (t) for
    its temporal table), CLS rows kept as they are; equal grids leave a table unchanged.
    """
    for key in ("model_type", "variant"):
        if src[key] != dst[key]:
            raise ConfigError(f"resize_positions changes frames and image size only; config.model.{key} differs "
                              f"({src[key]!r} vs {dst[key]!r}).")
    if classifier_of(src) != classifier_of(dst):
        raise ConfigError("resize_positions: source and destination configs use different classifiers.")
    cls = int(classifier_of(src) == "token")
    src_grid, dst_grid = token_grid(src), token_grid(dst)

    def resize(table: np.ndarray, src_g: tuple[int, ...], dst_g: tuple[int, ...]) -> np.ndarray:
        grid = resize_grid(np.asarray(table)[cls:], src_g, dst_g, "linear")
        return np.concatenate([np.asarray(table)[:cls], grid.astype(np.asarray(table).dtype)], axis=0)

    out = dict(params)
    if src.model_type == "factorised_encoder":
        out["pos_embed"] = resize(params["pos_embed"], src_grid[1:], dst_grid[1:])
        out["temporal_pos_embed"] = resize(params["temporal_pos_embed"], src_grid[:1], dst_grid[:1])
    else:
        out["pos_embed"] = resize(params["pos_embed"], src_grid, dst_grid)
    return out


def default_config() -> ml_collections.ConfigDict:
    """The model block of a ViViT config; configs/ files start from it and set what the recipe says."""
    return ml_collections.ConfigDict(dict(
        variant="B/16x2",  # SIZE/PATCHxTUBELET
        width=0, depth=0, num_heads=0, mlp_dim=0,  # 0 = from the variant
        model_type="joint",  # joint | factorised_encoder | factorised_self_attention | factorised_dot_product
        temporal_depth=4,  # factorised_encoder: blocks of the temporal transformer (the paper's 4 for ViViT-B/L)
        attention_order="space_time",  # factorised_self_attention: space_time (the paper) or time_space
        classifier="",  # "" = scenic's: "token" (CLS) for joint/factorised_encoder, "gap" otherwise
        num_frames=32, image_size=224,
        head="classification",
        num_classes=400, head_init_scale=0.0,  # 0 = zero-initialised classifier, as scenic
        pooler=False,  # head "none": VivitModel's pooler (dense + tanh on the CLS token) -> "pooler_output"
        position_init="reference",  # reference (N(0, 0.02)) | sincos (layers.position_init: for training from scratch)
        qkv_bias="qkv",  # "qkv" or "none" (Hugging Face's qkv_bias=False)
        ln_eps=1e-6,
        approximate_gelu=True,  # tanh GELU (Flax's nn.gelu, HF "gelu_fast"); False = exact erf GELU
        drop_path=0.0,
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=(0.5, 0.5, 0.5),  # scenic's zero-centring: pixels scaled to [-1, 1]
        pixel_std=(0.5, 0.5, 0.5),
    ))
