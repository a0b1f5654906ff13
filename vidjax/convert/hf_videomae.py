"""Hugging Face VideoMAE checkpoints (`VideoMAEForPreTraining`, `...ForVideoClassification`, `VideoMAEModel`).

Layout facts this mapping relies on: the tubelet Conv3d weight is (width, 3, tubelet, p, p) and vidjax's patch
embedding is a linear map of (t, h, w, c)-ordered patch pixels; q/k/v are separate `nn.Linear`s (out, in) that
vidjax fuses into one (width, 3, heads, head_dim) kernel; q and v have biases and k has none (stored as
`query.bias`/`value.bias` in a module's state dict, `q_bias`/`v_bias` by `save_pretrained`; both are read). Position
tables are fixed sin-cos, recomputed by vidjax, so nothing is read for them.

Both directions use one table (`tensors`): `from_hf` reads a checkpoint through it, `to_hf` writes a vidjax VideoMAE
back as the transformers class of its head (`python -m vidjax.export --to_hf`).
"""

from __future__ import annotations

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    HfCheckpoint,
    Tensor,
    TensorSource,
    check_video_input,
    layer_norm,
    linear,
    prefixed,
    read_tensors,
    write_tensors,
)
from vidjax.models import layers, videomae

# Architecture -> the vidjax head it is (`from_hf`), and back (`to_hf`).
HEADS = {"VideoMAEForPreTraining": "pretrain", "VideoMAEForVideoClassification": "classification",
         "VideoMAEModel": "none"}
ARCHITECTURES = tuple(HEADS)
HF_FIXED_EPS = 1e-5  # transformers' fc_norm and decoder norm: nn.LayerNorm's default, not configurable
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


# How the q and v biases are named: save_pretrained writes the first (transformers 4's module names, which 5 keeps
# on disk), a module's own state dict the second.
SAVED_BIAS_NAMES = ("q_bias", "v_bias")
_MODULE_BIAS_NAMES = ("query.bias", "value.bias")


def _block(dim: int, heads: int, mlp: int, qv_bias: bool, bias_names: tuple[str, str]) -> list[Tensor]:
    """One VideoMAELayer <-> a vidjax Block (names relative to each)."""
    hd = dim // heads
    a = "attention.attention."
    rows = [Tensor("attn/qkv", tuple(f"{a}{n}.weight" for n in ("query", "key", "value")), (dim, dim), perm=(1, 0),
                   part=(dim, heads, hd), axis=1)]
    if qv_bias:
        rows += [Tensor(f"attn/{k}_bias", (f"{a}{name}",), (dim,), part=(heads, hd))
                 for k, name in zip("qv", bias_names, strict=True)]
    rows += [Tensor("attn/proj", ("attention.output.dense.weight",), (dim, dim), perm=(1, 0), part=(heads, hd, dim)),
             Tensor("attn/proj_bias", ("attention.output.dense.bias",), (dim,))]
    rows += linear("mlp/fc1", "intermediate.dense", dim, mlp) + linear("mlp/fc2", "output.dense", mlp, dim)
    return rows + layer_norm("norm1", "layernorm_before", dim) + layer_norm("norm2", "layernorm_after", dim)


def decoder_dims(cfg) -> tuple[int, int, int, int]:
    """(width, depth, heads, mlp_dim) of a pre-training config's decoder, its defaults resolved as the model does."""
    size, _ = layers.parse_variant(cfg.variant)
    width, heads = videomae.DECODER_SIZES[size]
    width, heads = cfg.decoder_width or width, cfg.decoder_heads or heads
    return width, cfg.decoder_depth, heads, cfg.decoder_mlp_dim or 4 * width


def tensors(cfg, root: str, bias_names: tuple[str, str] = SAVED_BIAS_NAMES) -> list[Tensor]:
    """The table of a VideoMAE with vidjax config `cfg`, both directions. `root` is the encoder's prefix in the
    checkpoint ("videomae." under a head, "" in a VideoMAEModel); the decoder, fc_norm and classifier sit outside
    it. Position tables are fixed sin-cos, recomputed on both sides, so no row holds them."""
    dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    dim, patch, tubelet = dims["width"], dims["patch"], cfg.tubelet_size
    qv_bias = cfg.qkv_bias == "qv"
    rows = [Tensor("encoder/patch_embed/kernel", (f"{root}embeddings.patch_embeddings.projection.weight",),
                   (dim, 3, tubelet, patch, patch), perm=(2, 3, 4, 1, 0), part=(tubelet * patch * patch * 3, dim)),
            Tensor("encoder/patch_embed/bias", (f"{root}embeddings.patch_embeddings.projection.bias",), (dim,))]
    block = _block(dim, dims["num_heads"], dims["mlp_dim"], qv_bias, bias_names)
    for i in range(dims["depth"]):
        rows += prefixed(block, f"encoder/transformer/blocks/{i}/", f"{root}encoder.layer.{i}.")
    if cfg.head == "pretrain" or not cfg.use_mean_pooling:
        rows += layer_norm("encoder/norm", f"{root}layernorm", dim)
    if cfg.head == "pretrain":
        ddim, ddepth, dheads, dmlp = decoder_dims(cfg)
        rows += [Tensor("encoder_to_decoder/kernel", ("encoder_to_decoder.weight",), (ddim, dim), perm=(1, 0)),
                 Tensor("mask_token", ("mask_token",), (1, 1, ddim), part=(ddim,))]
        block = _block(ddim, dheads, dmlp, qv_bias, bias_names)
        for i in range(ddepth):
            rows += prefixed(block, f"decoder/blocks/{i}/", f"decoder.decoder_layers.{i}.")
        rows += layer_norm("decoder_norm", "decoder.norm", ddim)
        rows += linear("decoder_head", "decoder.head", ddim, 3 * tubelet * patch * patch)
    elif cfg.head == "classification":
        if cfg.use_mean_pooling:
            rows += layer_norm("fc_norm", "fc_norm", dim)
        rows += linear("head", "classifier", dim, cfg.num_classes)
    return rows


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a VideoMAE checkpoint onto `vidjax.models.videomae`."""
    check_video_input(hf, "VideoMAE")
    dim, depth, heads = hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]
    mlp, patch, tubelet = hf["intermediate_size"], hf["patch_size"], hf.get("tubelet_size", 2)
    qv_bias = hf.get("qv_bias", hf.get("qkv_bias", True))
    mean_pooling = hf.get("use_mean_pooling", True)
    eps = hf.get("layer_norm_eps", 1e-12)
    head = HEADS[architecture]
    if head == "pretrain" and mean_pooling:
        raise ConversionError("VideoMAEForPreTraining with use_mean_pooling=true (an encoder without a final norm) "
                              "is not a published configuration and vidjax does not implement it.")

    cfg = videomae.default_config()
    cfg.update(dict(
        variant=f"B/{patch}", width=dim, depth=depth, num_heads=heads, mlp_dim=mlp,
        num_frames=hf.get("num_frames", 16), image_size=hf.get("image_size", 224), tubelet_size=tubelet,
        head=head, use_mean_pooling=mean_pooling, qkv_bias="qv" if qv_bias else "none",
        ln_eps=eps, fc_norm_eps=HF_FIXED_EPS, decoder_norm_eps=HF_FIXED_EPS, head_init_scale=1.0,
        pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,  # HF un-normalises the loss target with these, always
    ))
    if head == "pretrain":
        cfg.update(dict(decoder_width=hf.get("decoder_hidden_size", 384), decoder_depth=hf.get(
            "decoder_num_hidden_layers", 4), decoder_heads=hf.get("decoder_num_attention_heads", 6),
            decoder_mlp_dim=hf.get("decoder_intermediate_size", 1536), norm_pix_loss=hf.get("norm_pix_loss", True)))
    elif head == "classification":
        labels = hf.get("id2label") or {}
        num_classes = hf.get("num_labels") or len(labels)
        if not num_classes:
            num_classes = src.tensors["classifier.bias"].shape[0] if src.has("classifier.bias") else 0
        cfg.num_classes = int(num_classes)

    root = src.prefix_of("embeddings.patch_embeddings.projection.weight")
    module_names = any(n.endswith("attention.attention.query.bias") for n in src.names())
    params = read_tensors(src, tensors(cfg, root, _MODULE_BIAS_NAMES if module_names else SAVED_BIAS_NAMES))

    class_names = None
    if head == "classification" and hf.get("id2label"):
        id2label = {int(k): v for k, v in hf["id2label"].items()}
        class_names = [id2label.get(i, str(i)) for i in range(cfg.num_classes)]
    return Converted("videomae", cfg, params, preprocessing=_preprocessing(hf), class_names=class_names)


def hf_config(cfg) -> dict:
    """config.json's model fields (VideoMAEConfig) of a vidjax VideoMAE config; the inverse of `from_hf`'s."""
    dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    qv_bias = cfg.qkv_bias == "qv"
    out = dict(model_type="videomae", image_size=int(cfg.image_size), patch_size=dims["patch"], num_channels=3,
               num_frames=int(cfg.num_frames), tubelet_size=int(cfg.tubelet_size), hidden_size=dims["width"],
               num_hidden_layers=dims["depth"], num_attention_heads=dims["num_heads"],
               intermediate_size=dims["mlp_dim"], hidden_act="gelu", hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=float(cfg.ln_eps),
               # transformers 5 reads qv_bias, 4 read qkv_bias (both mean: q and v biases, none on k)
               qv_bias=qv_bias, qkv_bias=qv_bias,
               use_mean_pooling=bool(cfg.use_mean_pooling) and cfg.head != "pretrain")
    if cfg.head == "pretrain":
        width, depth, heads, mlp = decoder_dims(cfg)
        out.update(decoder_hidden_size=width, decoder_num_hidden_layers=depth, decoder_num_attention_heads=heads,
                   decoder_intermediate_size=mlp, norm_pix_loss=bool(cfg.norm_pix_loss))
    return out


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax VideoMAE -> VideoMAEForPreTraining, VideoMAEForVideoClassification or VideoMAEModel."""
    cfg = converted.model_config
    if cfg.head == "pretrain" and cfg.get("decoder_mask_type", "none") != "none":
        raise ConversionError(f"this is a VideoMAE V2 pre-training checkpoint with dual masking (decoder_mask_type="
                              f"{cfg.decoder_mask_type!r}); transformers has no class for it (VideoMAEForPreTraining "
                              f"decodes every masked token and takes no decoder mask).")
    architecture = {head: arch for arch, head in HEADS.items()}[cfg.head]
    root = "" if architecture == "VideoMAEModel" else "videomae."
    notes = []
    eps = {"fc_norm": (cfg.head == "classification" and cfg.use_mean_pooling, cfg.fc_norm_eps or cfg.ln_eps),
           "decoder norm": (cfg.head == "pretrain", cfg.decoder_norm_eps or cfg.ln_eps)}
    for name, (present, value) in eps.items():
        if present and not np.isclose(value, HF_FIXED_EPS, rtol=1e-6, atol=0):
            notes.append(f"{architecture} fixes the {name}'s LayerNorm epsilon at {HF_FIXED_EPS:g}; this "
                         f"checkpoint's is {value:g}, so its outputs differ slightly (about the difference over "
                         f"twice the features' variance, relative).")
    if cfg.head == "pretrain" and not (np.allclose(cfg.pixel_mean, IMAGENET_MEAN)
                                       and np.allclose(cfg.pixel_std, IMAGENET_STD)):
        notes.append("VideoMAEForPreTraining un-normalises its loss target with ImageNet mean/std; this "
                     "checkpoint's config uses other statistics, so transformers' loss differs (its "
                     "reconstructions do not).")
    return HfCheckpoint(architecture, hf_config(cfg), write_tensors(converted.params, tensors(cfg, root), "VideoMAE"),
                        notes=notes)


def _preprocessing(hf: dict) -> dict:
    """ImageNet mean/std (what VideoMAE was trained with) unless the checkpoint's preprocessor config says otherwise.

    HF's VideoMAEImageProcessor defaults to mean/std 0.5, but the published checkpoints ship a
    preprocessor_config.json with the ImageNet statistics; a checkpoint without one gets those of training.
    """
    proc = hf.get("_preprocessor_config") or {}
    if proc and proc.get("do_normalize", True) and "image_mean" in proc:
        scale = proc.get("rescale_factor", 1 / 255) if proc.get("do_rescale", True) else 1.0
        if not np.isclose(scale, 1 / 255):
            raise ConversionError(f"preprocessor_config.json rescales by {scale}; vidjax's VideoMAE input is "
                                  f"(pixels/255 - mean)/std.")
        return {"mean": [float(v) for v in proc["image_mean"]], "std": [float(v) for v in proc["image_std"]]}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
