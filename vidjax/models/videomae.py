"""VideoMAE: a ViT over tubelet tokens, pre-trained by reconstructing normalised pixels of tube-masked tokens.

Layout and constants follow the reference (MCG-NJU/VideoMAE and its Hugging Face port): tubelet embedding as a
linear map of (t, h, w, c)-ordered patch pixels (a Conv3d with stride = kernel), a fixed 1-D sin-cos position
table over the flattened (t, h, w) token index, q/v attention biases without a k bias, exact GELU, and a
decoder of its own width with its own position table. The encoder sees only the visible tokens.

VideoMAE V2's dual masking (OpenGVLab/VideoMAEv2, `decoder_mask_type="run_cell"`): a second bool mask,
`decoder_mask` (True = not decoded; the running-cell mask of `data.pipeline.running_cell_mask`), chooses the
positions the decoder reconstructs. The decoder's input is the encoder's visible tokens followed by one mask token
at every position the decoder mask leaves (in increasing order, positions the encoder saw included); it predicts
those positions, and the loss is the per-token MSE averaged over the ones the encoder masked. Without a decoder
mask the model is VideoMAE (V1): the decoder predicts the encoder-masked tokens, the loss is the mean over them.

Heads: "pretrain" (decoder + reconstruction loss), "classification" (mean over tokens then fc_norm when
`use_mean_pooling`, else the first token after a final norm, as Hugging Face's `VideoMAEForVideoClassification`
does) and "none" (the encoder alone, like `VideoMAEModel`). The encoder ends with a LayerNorm for pre-training and
whenever mean pooling is off. Each LayerNorm's epsilon is a config key, because the original code (1e-6) and the
Hugging Face port (1e-12 in blocks, PyTorch's 1e-5 for fc_norm and the decoder norm) differ.

Inputs are channels-last float videos `(batch, frames, height, width, 3)`, already normalised with
`config.pixel_mean/pixel_std`; masks are bool `(batch, tokens)` with True = masked and the same number of masked
tokens in every sample (`Model.num_masked`); decoder masks likewise keep the same number of decoded positions in
every sample (`Model.num_decoded`). Both counts are those of `vidjax.patches.MaskSpec`, the one description of the
masks that the input path draws by and the pre-training task hands the model (`num_masked=`, `num_decoded=`); the
model's own, from its config, serve a caller that passes none.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidjax import platform
from vidjax.models import Benchmark, LayerLayout, Traits, layers
from vidjax.patches import MaskSpec, grid_shape, interleave, patch_planes, patchify

# Decoder (width, heads) per encoder size, as in the reference pre-training configs (depth 4 throughout): VideoMAE's
# for Mu-H (its ViT-H decoder is 640 wide; VideoMAE V2's is 512, which `decoder_width` selects), VideoMAE V2's for g.
DECODER_SIZES: dict[str, tuple[int, int]] = {
    "Mu": (64, 2), "Ti": (96, 3), "S": (192, 3), "B": (384, 6), "L": (512, 8), "H": (640, 8), "g": (512, 8),
}


def _tokens_part(cfg: ml_collections.ConfigDict) -> str:
    """A pre-training model's tokens are its encoder's, run on every token with no mask; a classifier's its own."""
    return "encoder" if cfg.get("head") == "pretrain" else ""


TRAITS = Traits(
    layer_layout=LayerLayout(
        blocks=((("encoder", "transformer", "blocks"),),),
        embedding=(("encoder", "patch_embed"),),  # its position table is fixed sin-cos, not a parameter
        # The pre-training decoder (mask token included) runs after the encoder, so it counts with the head.
        head=(("encoder", "norm"), ("fc_norm",), ("head",), ("encoder_to_decoder",), ("mask_token",), ("decoder",),
              ("decoder_norm",), ("decoder_head",))),
    tokens_part=_tokens_part,
    benchmark=Benchmark("B/16", ("pretrain", "pretrain_v2", "finetune"), "Mu/8", quick_model={"decoder_depth": 1}),
    distill=("teacher", "student"), distill_masks=("attention", "random", "tube"))


def normalized_pixel_target(video_BTHWC: jax.Array, tubelet: int, patch: int, eps: float = 1e-6) -> jax.Array:
    """Per-patch, per-channel normalised pixels (unbiased std + eps), flattened in (t, h, w, c) order."""
    b = video_BTHWC.shape[0]
    c = video_BTHWC.shape[-1]
    x = patchify(video_BTHWC.astype(jnp.float32), tubelet, patch)
    x = x.reshape(b, x.shape[1], -1, c)
    mean = jnp.mean(x, axis=2, keepdims=True)
    var = jnp.var(x, axis=2, keepdims=True, ddof=1)
    return ((x - mean) / (jnp.sqrt(var) + eps)).reshape(b, x.shape[1], -1)


def _channels_first(values: jax.Array, channels: int) -> jax.Array:
    """`patchify`'s order of a token's values over the last axis, (pixel, c), as (c, pixel)."""
    return values.reshape(*values.shape[:-1], -1, channels).swapaxes(-1, -2).reshape(values.shape)


def split_mask(mask_BN: jax.Array, num_masked: int) -> tuple[jax.Array, jax.Array]:
    """Token indices (visible, masked), each in increasing order, from a bool mask with `num_masked` Trues."""
    order = jnp.argsort(mask_BN, axis=1, stable=True)
    n = mask_BN.shape[1]
    return order[:, : n - num_masked], order[:, n - num_masked:]


def _gather(x_BND: jax.Array, ids_BK: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BND, ids_BK[..., None], axis=1)


class Encoder(nnx.Module):
    """Tubelet embedding + sin-cos positions + transformer; runs on all tokens or on the visible ones only."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, final_norm: bool, choices: platform.Choices | None = None,
                 rngs: nnx.Rngs):
        if choices is None:
            choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
        self.width, self.patch, self.tubelet = dims["width"], dims["patch"], cfg.tubelet_size
        self.grid = grid_shape((cfg.num_frames, cfg.image_size, cfg.image_size), self.tubelet, self.patch)
        dtype = jnp.dtype(cfg.dtype)
        patch_dim = self.tubelet * self.patch * self.patch * 3
        # PyTorch's default Conv3d init (kaiming-uniform with a=sqrt(5)) is uniform with variance 1/(3*fan_in).
        conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.patch_embed = layers.Dense(patch_dim, self.width, (None, "embed"), dtype=dtype, kernel_init=conv_init,
                                        choices=choices, rngs=rngs)
        self.transformer = layers.Transformer(
            self.width, dims["depth"], dims["num_heads"], dims["mlp_dim"], eps=cfg.ln_eps, drop_path=cfg.drop_path,
            qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices, remat=cfg.remat, scan=cfg.scan_layers, rngs=rngs)
        self.norm = layers.LayerNorm(self.width, cfg.ln_eps, choices=choices, rngs=rngs) if final_norm else None

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def __call__(self, video_BTHWC: jax.Array, visible_ids: jax.Array | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        self.check_video(video_BTHWC)
        patches = patchify(video_BTHWC, self.tubelet, self.patch)
        return self.encode_patches(patches if visible_ids is None else _gather(patches, visible_ids), visible_ids, rng)

    def check_video(self, video_BTHWC: jax.Array) -> None:
        """A ValueError unless the video is of the encoder's shape."""
        expected = (self.grid[0] * self.tubelet, self.grid[1] * self.patch, self.grid[2] * self.patch, 3)
        if tuple(video_BTHWC.shape[1:]) != expected:
            raise ValueError(f"VideoMAE expects videos shaped (batch, {', '.join(map(str, expected))}) "
                             f"channels-last; got {tuple(video_BTHWC.shape)}.")

    def encode_patches(self, patches_BKP: jax.Array, position_ids: jax.Array | None = None,
                       rng: jax.Array | None = None) -> jax.Array:
        """The encoder on `patchify`'s tokens (B, K, tubelet*p*p*3): every token of a video, or those at
        `position_ids` (B, K), picked before the embedding (a per-token product: the masked ones cost nothing)."""
        table = jnp.asarray(layers.sincos_table(self.num_tokens, self.width))
        if position_ids is not None:
            table = jnp.take(table, position_ids, axis=0)
        x = self.patch_embed(patches_BKP)
        x = self.transformer(x + table.astype(x.dtype), rng)
        return self.norm(x) if self.norm is not None else x


    def _embedded(self, video_BTHWC: jax.Array, visible_ids: jax.Array | None) -> jax.Array:
        """The tokens (B, K, width) entering the blocks: the patches at `visible_ids` (None: every one), embedded,
        with their sin-cos positions."""
        self.check_video(video_BTHWC)
        patches = patchify(video_BTHWC, self.tubelet, self.patch)
        table = jnp.asarray(layers.sincos_table(self.num_tokens, self.width))
        if visible_ids is not None:
            patches, table = _gather(patches, visible_ids), jnp.take(table, visible_ids, axis=0)
        x = self.patch_embed(patches)
        return x + table.astype(x.dtype)

    def _normed(self, y: jax.Array) -> jax.Array:
        return self.norm(y) if self.norm is not None else y

    def layer_tokens(self, video_BTHWC: jax.Array, visible_ids: jax.Array | None, num_layers: int,
                     rng: jax.Array | None = None) -> list[jax.Array]:
        """The last `num_layers` blocks' tokens (B, K, width) at `visible_ids` (B, K; None: every token), each through
        the final norm when the encoder has one, first to last: what unmasked-teacher distillation aligns (UMT's
        student applies its `norm` to every returned layer)."""
        outs = self.transformer.layer_outputs(self._embedded(video_BTHWC, visible_ids), rng, last=num_layers)
        return [self._normed(y) for y in outs]

    def layer_targets(self, video_BTHWC: jax.Array, num_layers: int) -> tuple[list[jax.Array], jax.Array]:
        """(`layer_tokens` over every token, the attention each token receives in the last block (B, tokens),
        float32, averaged over the queries and the heads (a model without a class token has no one query to read it
        from), summing to 1 over the tokens), from one run of the blocks."""
        x = self._embedded(video_BTHWC, None)
        depth = len(self.transformer.blocks)
        outs = self.transformer.layer_outputs(x, None, last=min(num_layers + 1, depth))
        before_last = outs[-2] if len(outs) > 1 else x  # the last block's input
        last = list(self.transformer.blocks)[-1]
        received = jnp.mean(last.attn.probabilities(last.norm1(before_last)), axis=(1, 2))
        return [self._normed(y) for y in outs[-num_layers:]], received


class Model(nnx.Module):
    """VideoMAE with a pre-training decoder (`cfg.head == "pretrain"`) or a classification head ("classification").

    Pre-training: `model(video, mask)` -> {"loss", "pred" (B, M, tubelet*p*p*3), "target" (same), "masked_ids",
    "last_hidden_state"}; with VideoMAE V2's `decoder_mask=` -> {"loss", "pred" (B, N_dec, tubelet*p*p*3), "target"
    (same), "decoded_ids" (B, N_dec), "loss_mask" (B, N_dec; True where the encoder masked), "masked_ids",
    "last_hidden_state"}.
    Classification: `model(video)` -> {"logits" (B, num_classes), "last_hidden_state"}.
    No head ("none"): `model(video)` -> {"last_hidden_state" (B, tokens, width)}.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.head not in ("pretrain", "classification", "none"):
            raise ValueError(f"config.model.head must be 'pretrain', 'classification' or 'none', got {cfg.head!r}.")
        self.head_kind = cfg.head
        self.use_mean_pooling = cfg.use_mean_pooling
        # The platform values (config.model.attention_impl, backward, ...; "auto" resolved here unless the caller
        # resolved the config at set-up, vidjax/platform.py), handed to every layer.
        choices = platform.choices(cfg, platform.TRANSFORMER_FIELDS)
        self.encoder = Encoder(cfg, final_norm=cfg.head == "pretrain" or not cfg.use_mean_pooling, choices=choices,
                               rngs=rngs)
        width, dtype = self.encoder.width, jnp.dtype(cfg.dtype)
        t, h, w = self.encoder.grid
        self.pixel_mean = tuple(cfg.pixel_mean)
        self.pixel_std = tuple(cfg.pixel_std)
        if cfg.head == "pretrain":
            masks = MaskSpec.of(cfg, (t, h, w))
            self.num_masked, self.num_decoded = masks.num_masked, masks.num_decoded
            size, _ = layers.parse_variant(cfg.variant)
            dec_width, dec_heads = DECODER_SIZES[size]
            dec_width, dec_heads = cfg.decoder_width or dec_width, cfg.decoder_heads or dec_heads
            self.norm_pix_loss = cfg.norm_pix_loss
            self.encoder_to_decoder = layers.Dense(width, dec_width, ("embed", "decoder_embed"), use_bias=False,
                                                   dtype=dtype, choices=choices, rngs=rngs)
            self.mask_token = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -2, 2, (dec_width,)),
                                        out_sharding=("decoder_embed",))
            self.decoder = layers.Transformer(dec_width, cfg.decoder_depth, dec_heads,
                                              cfg.decoder_mlp_dim or 4 * dec_width, eps=cfg.ln_eps,
                                              qkv_bias=cfg.qkv_bias, dtype=dtype, choices=choices, remat=cfg.remat,
                                              scan=cfg.scan_layers, rngs=rngs)
            self.decoder_norm = layers.LayerNorm(dec_width, cfg.decoder_norm_eps or cfg.ln_eps, choices=choices,
                                                 rngs=rngs)
            out_dim = cfg.tubelet_size * self.encoder.patch ** 2 * 3
            self.decoder_head = layers.Dense(dec_width, out_dim, ("decoder_embed", None), dtype=dtype,
                                             choices=choices, rngs=rngs)
            self.dec_width = dec_width
        elif cfg.head == "classification":
            if cfg.use_mean_pooling:
                self.fc_norm = layers.LayerNorm(width, cfg.fc_norm_eps or cfg.ln_eps, choices=choices, rngs=rngs)
            head_init = nnx.initializers.truncated_normal(0.02 * cfg.head_init_scale)
            self.head = layers.Dense(width, cfg.num_classes, ("embed", "classes"), kernel_init=head_init,
                                     choices=choices, rngs=rngs)

    def __call__(self, video: jax.Array, mask: jax.Array | None = None, *, decoder_mask: jax.Array | None = None,
                 rng: jax.Array | None = None, num_masked: int | None = None,
                 num_decoded: int | None = None) -> dict[str, jax.Array]:
        """`num_masked`: the masked tokens per row of `mask` (the task's `MaskSpec.num_masked`, or the count of masks
        made elsewhere: any positions, the same count per row); None: the config's.

        `decoder_mask` (pre-training; bool (B, tokens), True = not decoded) turns on VideoMAE V2's dual masking, with
        `num_decoded` (the Falses per row) taken from the config's running-cell mask unless given.
        """
        if self.head_kind == "none":
            return {"last_hidden_state": self.encoder(video, rng=rng)}
        if self.head_kind == "classification":
            x = self.encoder(video, rng=rng)
            if self.use_mean_pooling:
                pooled = self.fc_norm(jnp.mean(x.astype(jnp.float32), axis=1))
            else:
                pooled = x[:, 0].astype(jnp.float32)
            return {"logits": self.head(pooled).astype(jnp.float32), "last_hidden_state": x}
        if mask is None:
            raise ValueError("The VideoMAE pre-training model needs a bool mask (batch, tokens), True = masked.")
        num_masked = self.num_masked if num_masked is None else num_masked
        visible_ids, masked_ids = split_mask(mask, num_masked)
        if decoder_mask is not None:
            num_decoded = self.num_decoded if num_decoded is None else num_decoded
            if num_decoded is None:
                raise ValueError("A decoder mask needs its count of decoded (False) positions per row: pass "
                                 "num_decoded=, or set config.model.decoder_mask_type='run_cell'.")
            decoded_ids, _ = split_mask(decoder_mask, self.encoder.num_tokens - num_decoded)
        else:
            decoded_ids, num_decoded = masked_ids, num_masked
        # The video cut into tokens once, channel by channel (`patch_planes`), for the encoder's tokens and the
        # target; the decoder's head predicts channel by channel too (its columns reordered), and the loss compares
        # them plane by plane.
        self.encoder.check_video(video)
        planes = patch_planes(video, self.encoder.tubelet, self.encoder.patch)
        visible = interleave([_gather(plane, visible_ids) for plane in planes])
        x_enc = self.encoder.encode_patches(visible, visible_ids, rng)
        x = self.encoder_to_decoder(x_enc)
        table = jnp.asarray(layers.sincos_table(self.encoder.num_tokens, self.dec_width)).astype(x.dtype)
        x_vis = x + jnp.take(table, visible_ids, axis=0)
        x_mask = self.mask_token[...].astype(x.dtype) + jnp.take(table, decoded_ids, axis=0)
        y = self.decoder(jnp.concatenate([x_vis, x_mask], axis=1))
        channels = len(planes)
        pred = self.decoder_head(self.decoder_norm(y[:, -num_decoded:]), outputs=functools.partial(
            _channels_first, channels=channels)).astype(jnp.float32)
        preds = jnp.split(pred, channels, axis=-1)
        targets = [self.plane_target(_gather(plane, decoded_ids), c) for c, plane in enumerate(planes)]
        # Each token's squared error, summed over its values plane by plane.
        squared = sum(jnp.sum(jnp.square(p - t), axis=-1) for p, t in zip(preds, targets, strict=True))
        out = {"pred": interleave(preds), "target": interleave(targets), "masked_ids": masked_ids,
               "last_hidden_state": x_enc}
        if decoder_mask is None:
            return {"loss": jnp.mean(squared) / pred.shape[-1], **out}
        # The official engine's loss: per-token MSE, summed over the decoded tokens the encoder masked, divided by
        # their count over the whole batch (`bool_masked_pos[~decode_masked_pos]`).
        loss_mask = jnp.take_along_axis(mask, decoded_ids, axis=1)
        count = jnp.sum(loss_mask.astype(jnp.float32))
        loss = jnp.sum(jnp.where(loss_mask, squared / pred.shape[-1], 0.0)) / jnp.maximum(count, 1.0)
        return {"loss": loss, "decoded_ids": decoded_ids, "loss_mask": loss_mask, **out}

    # ---- unmasked-teacher distillation (`vidjax.models.distill`) ----
    @property
    def distill_width(self) -> int:
        return self.encoder.width

    @property
    def distill_grid(self) -> tuple[int, int, int]:
        return self.encoder.grid

    target_width, target_grid = distill_width, distill_grid

    def layer_tokens(self, video: jax.Array, visible_ids: jax.Array, num_layers: int,
                     rng: jax.Array | None = None) -> list[jax.Array]:
        """As a student: the encoder's last `num_layers` blocks' tokens at `visible_ids` (`Encoder.layer_tokens`)."""
        return self.encoder.layer_tokens(video, visible_ids, num_layers, rng)

    def layer_targets(self, video: jax.Array, num_layers: int) -> tuple[jax.Array, jax.Array]:
        """As a teacher: (the encoder's last `num_layers` blocks' tokens over the whole clip, (num_layers, B, tokens,
        width); the attention each token receives in the last block (B, t', h' x w'), float32)."""
        t, h, w = self.encoder.grid
        tokens, received = self.encoder.layer_targets(video, num_layers)
        return jnp.stack(tokens), received.reshape(video.shape[0], t, h * w)

    def unnormalize(self, video: jax.Array) -> jax.Array:
        """Input-normalised video -> pixels in [0, 1]."""
        mean = jnp.asarray(self.pixel_mean, jnp.float32)
        std = jnp.asarray(self.pixel_std, jnp.float32)
        return video.astype(jnp.float32) * std + mean

    def pixel_target(self, video: jax.Array) -> jax.Array:
        """Reconstruction target for every token: normalised patches, or raw [0, 1] patches without norm_pix_loss."""
        planes = patch_planes(video, self.encoder.tubelet, self.encoder.patch)
        return interleave([self.plane_target(plane, c) for c, plane in enumerate(planes)])

    def plane_target(self, plane: jax.Array, channel: int) -> jax.Array:
        """`pixel_target`'s values of one channel, from that channel's tokens of the input-normalised video
        (`patch_planes`)."""
        pixels = plane.astype(jnp.float32) * self.pixel_std[channel] + self.pixel_mean[channel]
        if not self.norm_pix_loss:
            return pixels
        mean = jnp.mean(pixels, axis=-1, keepdims=True)
        return (pixels - mean) / (jnp.sqrt(jnp.var(pixels, axis=-1, keepdims=True, ddof=1)) + 1e-6)


def default_config() -> ml_collections.ConfigDict:
    """The model block of a VideoMAE config; configs/ files start from it and set what the recipe says."""
    return ml_collections.ConfigDict(dict(
        variant="B/16",
        width=0, depth=0, num_heads=0, mlp_dim=0,  # 0 = from the variant
        num_frames=16, image_size=224, tubelet_size=2,
        head="pretrain",
        # The masks (`vidjax.patches.MaskSpec`, whose defaults these are): the share of each frame's positions the
        # encoder's tube mask hides; "run_cell": VideoMAE V2's dual masking (data.pipeline.running_cell_mask), its
        # share of positions not decoded (int(4 * ratio) of each 2x2 cell).
        mask_ratio=MaskSpec.ratio, decoder_mask_type=MaskSpec.decoder_kind, decoder_mask_ratio=MaskSpec.decoder_ratio,
        decoder_width=0, decoder_heads=0, decoder_depth=4,  # 0 = the reference's size for the variant
        decoder_mlp_dim=0,  # 0 = 4 x decoder_width
        norm_pix_loss=True,
        num_classes=400, head_init_scale=0.001,
        use_mean_pooling=True,  # classification: mean + fc_norm (True) or first token after a final norm (False)
        qkv_bias="qv",  # "qv" (the reference: q and v biases, no k bias) or "none"
        ln_eps=1e-6,  # blocks and the final encoder norm
        fc_norm_eps=0.0,  # 0 = ln_eps
        decoder_norm_eps=0.0,  # 0 = ln_eps
        drop_path=0.0,
        dtype="float32",
        **layers.run_defaults(platform.TRANSFORMER_FIELDS),  # remat, scan_layers and the platform choices
        pixel_mean=(0.485, 0.456, 0.406),
        pixel_std=(0.229, 0.224, 0.225),
    ))
