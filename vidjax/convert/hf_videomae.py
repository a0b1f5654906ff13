"""Hugging Face VideoMAE checkpoints (`VideoMAEForPreTraining`, `...ForVideoClassification`, `VideoMAEModel`).

Layout facts this mapping relies on: the tubelet Conv3d weight is (width, 3, tubelet, p, p) and vidjax's patch
embedding is a linear map of (t, h, w, c)-ordered patch pixels; q/k/v are separate `nn.Linear`s (out, in) that
vidjax fuses into one (width, 3, heads, head_dim) kernel; q and v have biases and k has none (stored as
`query.bias`/`value.bias` by current transformers, `q_bias`/`v_bias` by older versions; both are read). Position
tables are fixed sin-cos, recomputed by vidjax, so nothing is read for them.
"""

from __future__ import annotations

import numpy as np

from vidjax.convert.common import ConversionError, Converted, TensorSource
from vidjax.models import videomae

ARCHITECTURES = ("VideoMAEForPreTraining", "VideoMAEForVideoClassification", "VideoMAEModel")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


def _block(src: TensorSource, prefix: str, dim: int, heads: int, mlp: int, qv_bias: bool) -> dict[str, np.ndarray]:
    """One VideoMAELayer -> vidjax Block params (keys relative to the block)."""
    head_dim = dim // heads
    a = f"{prefix}attention.attention."
    qkv = [src.take(f"{a}{n}.weight", (dim, dim)).T.reshape(dim, heads, head_dim) for n in ("query", "key", "value")]
    out = {"attn/qkv": np.stack(qkv, axis=1)}
    if qv_bias:
        for name, key in (("query", "q"), ("value", "v")):
            field = f"{a}{name}.bias" if src.has(f"{a}{name}.bias") else f"{a}{key}_bias"
            out[f"attn/{key}_bias"] = src.take(field, (dim,)).reshape(heads, head_dim)
    out["attn/proj"] = src.take(f"{prefix}attention.output.dense.weight", (dim, dim)).T.reshape(heads, head_dim, dim)
    out["attn/proj_bias"] = src.take(f"{prefix}attention.output.dense.bias", (dim,))
    out["mlp/fc1/kernel"] = src.take(f"{prefix}intermediate.dense.weight", (mlp, dim)).T
    out["mlp/fc1/bias"] = src.take(f"{prefix}intermediate.dense.bias", (mlp,))
    out["mlp/fc2/kernel"] = src.take(f"{prefix}output.dense.weight", (dim, mlp)).T
    out["mlp/fc2/bias"] = src.take(f"{prefix}output.dense.bias", (dim,))
    for hf, vj in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
        out[f"{vj}/scale"] = src.take(f"{prefix}{hf}.weight", (dim,))
        out[f"{vj}/bias"] = src.take(f"{prefix}{hf}.bias", (dim,))
    return out


def _norm(src: TensorSource, name: str, dim: int, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}/scale": src.take(f"{name}.weight", (dim,)), f"{dst}/bias": src.take(f"{name}.bias", (dim,))}


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a VideoMAE checkpoint onto `vidjax.models.videomae`."""
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"VideoMAE checkpoint uses hidden_act={hf['hidden_act']!r}; vidjax's VideoMAE "
                              f"implements the exact 'gelu' the published models use.")
    if hf.get("num_channels", 3) != 3:
        raise ConversionError(f"VideoMAE checkpoint has num_channels={hf['num_channels']}; vidjax takes RGB video.")
    dim, depth, heads = hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]
    mlp, patch, tubelet = hf["intermediate_size"], hf["patch_size"], hf.get("tubelet_size", 2)
    qv_bias = hf.get("qv_bias", hf.get("qkv_bias", True))
    mean_pooling = hf.get("use_mean_pooling", True)
    eps = hf.get("layer_norm_eps", 1e-12)
    head = {"VideoMAEForPreTraining": "pretrain", "VideoMAEForVideoClassification": "classification",
            "VideoMAEModel": "none"}[architecture]
    if head == "pretrain" and mean_pooling:
        raise ConversionError("VideoMAEForPreTraining with use_mean_pooling=true (an encoder without a final norm) "
                              "is not a published configuration and vidjax does not implement it.")

    cfg = videomae.default_config()
    cfg.update(dict(
        variant=f"B/{patch}", width=dim, depth=depth, num_heads=heads, mlp_dim=mlp,
        num_frames=hf.get("num_frames", 16), image_size=hf.get("image_size", 224), tubelet_size=tubelet,
        head=head, use_mean_pooling=mean_pooling, qkv_bias="qv" if qv_bias else "none",
        ln_eps=eps, fc_norm_eps=1e-5, decoder_norm_eps=1e-5, head_init_scale=1.0,
        pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,  # HF un-normalises the loss target with these, always
    ))

    enc = src.prefix_of("embeddings.patch_embeddings.projection.weight")
    params = {}
    conv = src.take(f"{enc}embeddings.patch_embeddings.projection.weight", (dim, 3, tubelet, patch, patch))
    params["encoder/patch_embed/kernel"] = conv.transpose(2, 3, 4, 1, 0).reshape(-1, dim)
    params["encoder/patch_embed/bias"] = src.take(f"{enc}embeddings.patch_embeddings.projection.bias", (dim,))
    for i in range(depth):
        for k, v in _block(src, f"{enc}encoder.layer.{i}.", dim, heads, mlp, qv_bias).items():
            params[f"encoder/transformer/blocks/{i}/{k}"] = v
    if head == "pretrain" or not mean_pooling:
        params.update(_norm(src, f"{enc}layernorm", dim, "encoder/norm"))

    if head == "pretrain":
        ddim, ddepth = hf.get("decoder_hidden_size", 384), hf.get("decoder_num_hidden_layers", 4)
        dheads, dmlp = hf.get("decoder_num_attention_heads", 6), hf.get("decoder_intermediate_size", 1536)
        cfg.update(dict(decoder_width=ddim, decoder_depth=ddepth, decoder_heads=dheads, decoder_mlp_dim=dmlp,
                        norm_pix_loss=hf.get("norm_pix_loss", True)))
        params["encoder_to_decoder/kernel"] = src.take("encoder_to_decoder.weight", (ddim, dim)).T
        params["mask_token"] = src.take("mask_token", (1, 1, ddim)).reshape(ddim)
        for i in range(ddepth):
            for k, v in _block(src, f"decoder.decoder_layers.{i}.", ddim, dheads, dmlp, qv_bias).items():
                params[f"decoder/blocks/{i}/{k}"] = v
        params.update(_norm(src, "decoder.norm", ddim, "decoder_norm"))
        out_dim = 3 * tubelet * patch * patch
        params["decoder_head/kernel"] = src.take("decoder.head.weight", (out_dim, ddim)).T
        params["decoder_head/bias"] = src.take("decoder.head.bias", (out_dim,))
    elif head == "classification":
        labels = hf.get("id2label") or {}
        num_classes = hf.get("num_labels") or len(labels)
        if not num_classes:
            num_classes = src.tensors["classifier.bias"].shape[0] if src.has("classifier.bias") else 0
        cfg.num_classes = int(num_classes)
        if mean_pooling:
            params.update(_norm(src, "fc_norm", dim, "fc_norm"))
        params["head/kernel"] = src.take("classifier.weight", (num_classes, dim)).T
        params["head/bias"] = src.take("classifier.bias", (num_classes,))

    class_names = None
    if head == "classification" and hf.get("id2label"):
        id2label = {int(k): v for k, v in hf["id2label"].items()}
        class_names = [id2label.get(i, str(i)) for i in range(cfg.num_classes)]
    return Converted("videomae", cfg, params, preprocessing=_preprocessing(hf), class_names=class_names)


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
