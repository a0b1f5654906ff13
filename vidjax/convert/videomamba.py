"""Official VideoMamba checkpoints (OpenGVLab/VideoMamba, video_sm `VisionMamba`) -> `vidjax.models.videomamba`.

The official files are torch state dicts, possibly nested under "model" or "module", and carry no config: width,
depth, patch, tubelet, frames, image size, classes, d_state, d_conv, expand and dt_rank are read off tensor shapes.
Layout facts this mapping relies on: `patch_embed.proj` is a Conv3d (width, 3, tubelet, p, p) and vidjax's patch
embedding is a linear map of (t, h, w, c)-ordered patch pixels; `in_proj` (2*d_inner, width) holds x then z;
conv1d weights are (d_inner, 1, d_conv); `dt_proj.bias` is the scan's delta bias; the backward branch's tensors end
in `_b`. A checkpoint without `head.*` (pre-training / backbone) converts to head "none".

The masked pre-training's files (videomamba_pretrain.py, e.g. `videomamba_m16_k400_mask_pt_f8_res224.pth`) name the
final RMSNorm `norm` where the fine-tuning model names it `norm_f`, and add `clip_decoder.i` alignment heads (a
Linear to the CLIP teacher's width and a LayerNorm, one per aligned layer). They convert to the head-less encoder
with that norm as `norm_f`; the alignment heads are left out, said in one line, as vidjax's own distillation leaves
its heads out of the encoder that fine-tuning starts from. (With one aligned layer, the published setting, the
reference aligns the residual stream before the last block, unnormalised, so the last block and `norm` get no
gradient from that loss: they hold what their initialisation (and any weight decay) left. The official fine-tuning
starts from them as they are, and so does a fine-tune from the converted file.)

Image checkpoints of the same code (videomamba/image_sm, e.g. the ImageNet-1k models the Kinetics recipes start
from) have a Conv2d patch embedding and no temporal table: they convert to the equivalent one-frame video model
(tubelet 1, a zero temporal row), which `vidjax.pretrained.init_from` stretches to any frame count. That is what the
official fine-tuning does when it loads them: the 2-D kernel becomes the tubelet-1 kernel and the temporal table
keeps its zero initialisation.
"""

from __future__ import annotations

import logging

import numpy as np

from vidjax.convert.common import ConversionError, Converted, TensorSource, check_family
from vidjax.models import videomamba

# The official video_sm datasets normalise with the ImageNet statistics (kinetics_sparse.py, build.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)


def _size_name(width: int, depth: int) -> str | None:
    for name, dims in videomamba.VIDEOMAMBA_SIZES.items():
        if dims == (width, depth):
            return name
    return None


def _branch(src: TensorSource, p: str, suffix: str, d_inner: int, d_state: int, d_conv: int,
            dt_rank: int) -> dict[str, np.ndarray]:
    """One direction's tensors (suffix "" forward, "_b" backward) -> MambaBranch params (relative keys)."""
    a_log = "A_log" if not suffix else "A_b_log"
    return {
        "conv1d/kernel": src.take(f"{p}conv1d{suffix}.weight", (d_inner, 1, d_conv))[:, 0, :].T,
        "conv1d/bias": src.take(f"{p}conv1d{suffix}.bias", (d_inner,)),
        "x_proj/kernel": src.take(f"{p}x_proj{suffix}.weight", (dt_rank + 2 * d_state, d_inner)).T,
        "dt_proj/kernel": src.take(f"{p}dt_proj{suffix}.weight", (d_inner, dt_rank)).T,
        "dt_bias": src.take(f"{p}dt_proj{suffix}.bias", (d_inner,)),
        "A_log": src.take(f"{p}{a_log}", (d_inner, d_state)),
        "D": src.take(f"{p}D{suffix}", (d_inner,)),
    }


def from_videomamba(src: TensorSource) -> Converted:
    """Maps an official VideoMamba classification or backbone checkpoint onto `vidjax.models.videomamba`."""
    check_family(src.tensors, "videomamba", src.origin)
    pre = src.prefix_of("patch_embed.proj.weight")
    conv = src.tensors[f"{pre}patch_embed.proj.weight"]
    if conv.ndim not in (4, 5) or conv.shape[1] != 3 or conv.shape[-1] != conv.shape[-2]:
        raise ConversionError(f"{src.origin}: patch_embed.proj.weight has shape {tuple(conv.shape)}; VideoMamba has "
                              f"a Conv3d (width, 3, tubelet, p, p) or, for images, a Conv2d (width, 3, p, p) there.")
    is_image = conv.ndim == 4
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    tubelet = 1 if is_image else int(conv.shape[2])
    depth = src.stack_depth(pre, "layers", "norm.weight")
    mixer = f"{pre}layers.0.mixer."
    for name in ("A_log", "A_b_log", "dt_proj.weight", "conv1d.weight"):
        if not src.has(mixer + name):
            raise ConversionError(f"{src.origin} has no {mixer + name}; vidjax converts the bidirectional "
                                  f"(bimamba) VideoMamba of the official video_sm code only.")
    d_inner, d_state = (int(s) for s in src.tensors[f"{mixer}A_log"].shape)
    dt_rank = int(src.tensors[f"{mixer}dt_proj.weight"].shape[1])
    d_conv = int(src.tensors[f"{mixer}conv1d.weight"].shape[-1])
    if d_inner % width:
        raise ConversionError(f"{src.origin}: d_inner {d_inner} (from A_log) is not a multiple of the width {width}.")
    for name in ("in_proj.bias", "out_proj.bias"):
        if src.has(mixer + name):
            raise ConversionError(f"{src.origin} has {mixer + name}: a Mamba built with bias=True, which no official "
                                  f"VideoMamba uses and vidjax's does not implement.")
    pos = src.tensors.get(f"{pre}pos_embed")
    temporal = src.tensors.get(f"{pre}temporal_pos_embedding")
    if pos is None or (temporal is None and not is_image):
        raise ConversionError(f"{src.origin} lacks pos_embed or temporal_pos_embedding; is it a VideoMamba "
                              f"checkpoint?")
    side = int(round((pos.shape[1] - 1) ** 0.5))
    if side * side != pos.shape[1] - 1:
        raise ConversionError(f"{src.origin}: pos_embed has {pos.shape[1] - 1} patch rows, not a square grid.")
    num_frames = 1 if is_image else int(temporal.shape[1]) * tubelet
    has_head = src.has(f"{pre}head.weight")
    # The fine-tuning model's final RMSNorm is `norm_f`; the masked pre-training model's is `norm`.
    final_norm = f"{pre}norm_f.weight"
    if not src.has(final_norm) and src.has(f"{pre}norm.weight"):
        final_norm = f"{pre}norm.weight"

    size = _size_name(width, depth)
    cfg = videomamba.default_config()
    cfg.update(dict(
        variant=f"{size or 'S'}/{patch}", width=0 if size else width, depth=0 if size else depth,
        num_frames=num_frames, image_size=side * patch, tubelet_size=tubelet,
        head="classification" if has_head else "none",
        num_classes=int(src.tensors[f"{pre}head.weight"].shape[0]) if has_head else 0,
        d_state=d_state, d_conv=d_conv, expand=d_inner // width, dt_rank=dt_rank,
        rms_eps=1e-5, residual_in_fp32=True,  # what every official VideoMamba is built with
        pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
    ))

    params = {
        "patch_embed/kernel": src.take(f"{pre}patch_embed.proj.weight", conv.shape).reshape(
            width, 3, tubelet, patch, patch).transpose(2, 3, 4, 1, 0).reshape(-1, width),
        "patch_embed/bias": src.take(f"{pre}patch_embed.proj.bias", (width,)),
        "cls_token": src.take(f"{pre}cls_token", (1, 1, width)).reshape(width),
        "pos_embed": src.take(f"{pre}pos_embed", (1, side * side + 1, width))[0],
        "temporal_pos_embedding": (np.zeros((1, width), np.float32) if is_image else
                                   src.take(f"{pre}temporal_pos_embedding", temporal.shape)[0]),
        "norm_f/scale": src.take(final_norm, (width,)),
    }
    for i in range(depth):
        p, dst = f"{pre}layers.{i}.mixer.", f"layers/{i}/"
        params[f"{dst}norm/scale"] = src.take(f"{pre}layers.{i}.norm.weight", (width,))
        params[f"{dst}mixer/in_proj/kernel"] = src.take(f"{p}in_proj.weight", (2 * d_inner, width)).T.reshape(
            width, 2, d_inner)
        params[f"{dst}mixer/out_proj/kernel"] = src.take(f"{p}out_proj.weight", (width, d_inner)).T
        for suffix, branch in (("", "forward_branch"), ("_b", "backward_branch")):
            for k, v in _branch(src, p, suffix, d_inner, d_state, d_conv, dt_rank).items():
                params[f"{dst}mixer/{branch}/{k}"] = v
    if has_head:
        params["head/kernel"] = src.take(f"{pre}head.weight", (cfg.num_classes, width)).T
        params["head/bias"] = src.take(f"{pre}head.bias", (cfg.num_classes,))
    aligners = sorted(n for n in src.names() if n.startswith(f"{pre}clip_decoder."))
    if aligners:  # the masked pre-training's alignment heads: not part of the encoder
        for name in aligners:
            src.mark_used(name)
        logger.info("%s is a masked pre-training checkpoint: its %d alignment heads (clip_decoder.*, to the CLIP "
                    "teacher's width) are left out; the encoder converts with head 'none'.", src.origin,
                    len({n[len(f"{pre}clip_decoder."):].split(".")[0] for n in aligners}))

    preprocessing = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_frames": num_frames,
                     "image_size": side * patch}
    return Converted("videomamba", cfg, params, preprocessing=preprocessing, class_names=None)
