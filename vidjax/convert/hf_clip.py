"""Hugging Face CLIP and SigLIP vision towers (`CLIPVisionModel`, `CLIPVisionModelWithProjection`, `CLIPModel`'s
vision tower, `SiglipVisionModel`, `SiglipModel`'s vision tower) <-> `vidjax.models.image_encoder`.

Layout facts this mapping relies on: the patch embedding is a Conv2d (width, 3, p, p), here the linear map of (h, w,
c)-ordered patch pixels (CLIP's without bias); CLIP's class token is `embeddings.class_embedding` (width,) and its
LayerNorm before the blocks is spelled `pre_layrnorm`; both position tables are `nn.Embedding`s (CLIP's over [class,
patches]); the blocks' q/k/v are separate `nn.Linear`s with biases that vidjax fuses; SigLIP's pooling head is a
`torch.nn.MultiheadAttention` whose `in_proj_weight` (3 x width, width) stacks q, k and v, with a probe (1, 1,
width). A whole CLIPModel or SiglipModel is read for its vision tower (and CLIP's `visual_projection`); the text tower
is left out, said in one line.

One table (`tensors`) serves both directions (`python -m vidjax.export --to_hf` writes `CLIPVisionModel`,
`CLIPVisionModelWithProjection` or `SiglipVisionModel`).
"""

from __future__ import annotations

import logging

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
    processor_clip,
    processor_statistics,
    qkv_linears,
    read_tensors,
    write_tensors,
)
from vidjax.models import image_encoder

# Architecture -> (kind, whether the file holds CLIP's visual projection, whether it is a whole two-tower model).
ARCHS = {"CLIPVisionModel": ("clip", False, False), "CLIPVisionModelWithProjection": ("clip", True, False),
         "CLIPModel": ("clip", True, True), "SiglipVisionModel": ("siglip", False, False),
         "SiglipModel": ("siglip", False, True)}
ARCHITECTURES = tuple(ARCHS)
ACTIVATIONS = {"clip": "quick_gelu", "siglip": "gelu_pytorch_tanh"}
PROCESSORS = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}
FAMILY = {"clip": "CLIP", "siglip": "SigLIP"}

logger = logging.getLogger(__name__)


def _block(dim: int, heads: int, mlp: int) -> list[Tensor]:
    """One CLIPEncoderLayer / SiglipEncoderLayer <-> a vidjax `layers.Block`."""
    hd = dim // heads
    a = "self_attn."
    rows = qkv_linears(a, ("q_proj", "k_proj", "v_proj"), dim, heads, True)
    rows += [Tensor("attn/proj", (f"{a}out_proj.weight",), (dim, dim), perm=(1, 0), part=(heads, hd, dim)),
             Tensor("attn/proj_bias", (f"{a}out_proj.bias",), (dim,))]
    rows += linear("mlp/fc1", "mlp.fc1", dim, mlp) + linear("mlp/fc2", "mlp.fc2", mlp, dim)
    return rows + layer_norm("norm1", "layer_norm1", dim) + layer_norm("norm2", "layer_norm2", dim)


def tensors(cfg, root: str = "vision_model.") -> list[Tensor]:
    """The table of an image encoder with vidjax config `cfg`, both directions; `root` is the vision tower's prefix."""
    d = image_encoder.dims(cfg)
    dim, patch, heads = d["width"], d["patch"], d["num_heads"]
    clip = cfg.kind == "clip"
    e = f"{root}embeddings."
    positions = (cfg.image_size // patch) ** 2 + (1 if clip else 0)
    rows = [Tensor("patch_embed/kernel", (f"{e}patch_embedding.weight",), (dim, 3, patch, patch), perm=(2, 3, 1, 0),
                   part=(patch * patch * 3, dim)),
            Tensor("pos_embed", (f"{e}position_embedding.weight",), (positions, dim))]
    if clip:
        rows += [Tensor("class_embedding", (f"{e}class_embedding",), (dim,))]
        rows += layer_norm("pre_norm", f"{root}pre_layrnorm", dim)
    else:
        rows += [Tensor("patch_embed/bias", (f"{e}patch_embedding.bias",), (dim,))]
    one = _block(dim, heads, d["mlp_dim"])
    for i in range(d["depth"]):
        rows += prefixed(one, f"transformer/blocks/{i}/", f"{root}encoder.layers.{i}.")
    rows += layer_norm("post_norm", f"{root}post_layernorm", dim)
    if not clip:
        h = f"{root}head."
        hd = dim // heads
        rows += [Tensor("pool/probe", (f"{h}probe",), (1, 1, dim), part=(dim,)),
                 Tensor("pool/qkv", (f"{h}attention.in_proj_weight",), (3 * dim, dim), perm=(1, 0),
                        part=(dim, 3, heads, hd)),
                 Tensor("pool/qkv_b", (f"{h}attention.in_proj_bias",), (3 * dim,), part=(3, heads, hd)),
                 Tensor("pool/proj", (f"{h}attention.out_proj.weight",), (dim, dim), perm=(1, 0),
                        part=(heads, hd, dim)),
                 Tensor("pool/proj_bias", (f"{h}attention.out_proj.bias",), (dim,))]
        rows += layer_norm("pool/norm", f"{h}layernorm", dim)
        rows += linear("pool/mlp/fc1", f"{h}mlp.fc1", dim, d["mlp_dim"])
        rows += linear("pool/mlp/fc2", f"{h}mlp.fc2", d["mlp_dim"], dim)
    if cfg.projection_dim:
        rows += linear("projection", "visual_projection", dim, cfg.projection_dim, bias=False)
    return rows


def _vision_config(hf: dict, whole: bool) -> dict:
    """The vision tower's fields: config.json's own, or its `vision_config` in a two-tower model's."""
    if not whole:
        return hf
    vision = hf.get("vision_config")
    if not isinstance(vision, dict):
        raise ConversionError("this two-tower checkpoint's config.json has no vision_config; vidjax reads the vision "
                              "tower's sizes from it.")
    return {**vision, "projection_dim": hf.get("projection_dim", vision.get("projection_dim"))}


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a CLIP or SigLIP vision tower onto `vidjax.models.image_encoder`."""
    kind, projected, whole = ARCHS[architecture]
    vision = _vision_config(hf, whole)
    check_video_input(vision, FAMILY[kind], gelu=(ACTIVATIONS[kind],), default_act=ACTIVATIONS[kind])
    if kind == "siglip" and not vision.get("vision_use_head", True):
        raise ConversionError("this SigLIP vision tower has no pooling head (vision_use_head false); vidjax's "
                              "SigLIP pools with it.")
    root = src.prefix_of("embeddings.patch_embedding.weight")
    width = int(vision.get("hidden_size", 768))
    patch = int(vision.get("patch_size", 16 if kind == "siglip" else 32))
    cfg = image_encoder.default_config()
    cfg.update(dict(
        kind=kind, variant=f"B/{patch}", width=width, depth=int(vision.get("num_hidden_layers", 12)),
        num_heads=int(vision.get("num_attention_heads", 12)), mlp_dim=int(vision.get("intermediate_size", 3072)),
        image_size=int(vision.get("image_size", 224)), head="none",
        projection_dim=int(vision.get("projection_dim") or 512) if projected else 0,
        ln_eps=float(vision.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6)),
    ))
    params = read_tensors(src, tensors(cfg, root))
    if whole:  # the text tower: left out, on purpose
        left = [n for n in src.names() if n not in src.used and not n.startswith(root)]
        for name in left:
            src.mark_used(name)
        logger.info("Read the vision tower of this %s; its text tower (%d tensors) is left out.", architecture,
                    len(left))
    mean, std = (image_encoder.CLIP_MEAN, image_encoder.CLIP_STD) if kind == "clip" else \
        (image_encoder.SIGLIP_MEAN, image_encoder.SIGLIP_STD)
    mean, std = processor_statistics(hf.get("_preprocessor_config"), mean, std, FAMILY[kind])
    cfg.pixel_mean, cfg.pixel_std = tuple(mean), tuple(std)
    # An image tower reads a clip frame by frame: its length is the clip spec's (an export of a vidjax encoder),
    # config.json has none.
    frames = processor_clip(hf.get("_preprocessor_config")).get("num_frames")
    if frames:
        cfg.num_frames = int(frames)
    return Converted("image_encoder", cfg, params, preprocessing={"mean": mean, "std": std})


def hf_config(cfg) -> dict:
    """config.json's fields of the vision tower of a vidjax image encoder config; the inverse of `from_hf`'s reading."""
    d = image_encoder.dims(cfg)
    config = dict(model_type=f"{cfg.kind}_vision_model", hidden_size=d["width"], intermediate_size=d["mlp_dim"],
                  num_hidden_layers=d["depth"], num_attention_heads=d["num_heads"], num_channels=3,
                  image_size=int(cfg.image_size), patch_size=d["patch"], hidden_act=ACTIVATIONS[cfg.kind],
                  layer_norm_eps=float(cfg.ln_eps), attention_dropout=0.0)
    if cfg.projection_dim:
        config["projection_dim"] = int(cfg.projection_dim)
    if cfg.kind == "siglip":
        config["vision_use_head"] = True
    return config


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax image encoder -> CLIPVisionModel (CLIPVisionModelWithProjection with a projection) or
    SiglipVisionModel."""
    cfg = converted.model_config
    if cfg.head != "none":
        raise ConversionError("this image encoder has a video classification head (the frames' mean pooled output); "
                              "transformers has no class for it, so it has no --to_hf form.")
    if cfg.kind == "clip":
        architecture = "CLIPVisionModelWithProjection" if cfg.projection_dim else "CLIPVisionModel"
    else:
        architecture = "SiglipVisionModel"
    return HfCheckpoint(architecture, hf_config(cfg),
                        write_tensors(converted.params, tensors(cfg), FAMILY[cfg.kind]),
                        processor=PROCESSORS[cfg.kind])
