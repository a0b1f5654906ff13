"""Hugging Face V-JEPA 2 checkpoints (`VJEPA2Model`, `VJEPA2ForVideoClassification`).

Layout facts this mapping relies on: the tubelet Conv3d weight is (width, 3, tubelet, p, p) and vidjax's patch
embedding is a linear map of (t, h, w, c)-ordered patch pixels; the encoder's and predictor's q/k/v are separate
`nn.Linear`s (`attention.query/key/value`, out x in) that vidjax fuses into one (width, 3, heads, head_dim) kernel,
with biases when config.json's `qkv_bias`; the predictor's mask tokens are stored (num_mask_tokens, 1, 1, width); the
pooler's self-attention layers have q/k/v/out projections with biases and its cross-attention q/k/v without an output
projection. There are no position tables (rotary positions). A classifier holds the whole `VJEPA2Model` (predictor
included) under "vjepa2.".

One table (`tensors`) lists every tensor, read by `from_hf` and written back by `to_hf` (`python -m vidjax.export
--to_hf`: a `VJEPA2Model` or `VJEPA2ForVideoClassification` folder, with config.json's fields from `hf_config`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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
    processor_statistics,
    qkv_linears,
    read_tensors,
    write_tensors,
)
from vidjax.models import vjepa2

# Architecture -> the vidjax head it is.
HEADS = {"VJEPA2Model": "none", "VJEPA2ForVideoClassification": "classification"}
ARCHITECTURES = tuple(HEADS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # VJEPA2VideoProcessor's defaults
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR = "VJEPA2VideoProcessor"


def _block(dim: int, heads: int, mlp: int, qkv_bias: bool) -> list[Tensor]:
    """One VJEPA2Layer (encoder or predictor) <-> a vidjax Block."""
    hd = dim // heads
    a = "attention."
    rows = qkv_linears(a, ("query", "key", "value"), dim, heads, qkv_bias)
    rows += [Tensor("attn/proj", (f"{a}proj.weight",), (dim, dim), perm=(1, 0), part=(heads, hd, dim)),
             Tensor("attn/proj_bias", (f"{a}proj.bias",), (dim,))]
    rows += linear("mlp/fc1", "mlp.fc1", dim, mlp) + linear("mlp/fc2", "mlp.fc2", mlp, dim)
    return rows + layer_norm("norm1", "norm1", dim) + layer_norm("norm2", "norm2", dim)


def _pooler_block(dim: int, heads: int) -> list[Tensor]:
    """One VJEPA2PoolerSelfAttentionLayer <-> a vidjax Block (q/k/v/out biases, MLP 4 x width)."""
    hd = dim // heads
    rows = qkv_linears("self_attn.", ("q_proj", "k_proj", "v_proj"), dim, heads, True)
    rows += [Tensor("attn/proj", ("self_attn.out_proj.weight",), (dim, dim), perm=(1, 0), part=(heads, hd, dim)),
             Tensor("attn/proj_bias", ("self_attn.out_proj.bias",), (dim,))]
    rows += linear("mlp/fc1", "mlp.fc1", dim, 4 * dim) + linear("mlp/fc2", "mlp.fc2", 4 * dim, dim)
    return rows + layer_norm("norm1", "layer_norm1", dim) + layer_norm("norm2", "layer_norm2", dim)


def _cross_block(dim: int, heads: int) -> list[Tensor]:
    """VJEPA2PoolerCrossAttentionLayer <-> a vidjax `vjepa2.CrossAttentionBlock`."""
    hd = dim // heads
    c = "cross_attn."
    rows = [Tensor("attn/q", (f"{c}q_proj.weight",), (dim, dim), perm=(1, 0), part=(dim, heads, hd)),
            Tensor("attn/q_bias", (f"{c}q_proj.bias",), (dim,), part=(heads, hd)),
            Tensor("attn/kv", (f"{c}k_proj.weight", f"{c}v_proj.weight"), (dim, dim), perm=(1, 0),
                   part=(dim, heads, hd), axis=1),
            Tensor("attn/kv_bias", (f"{c}k_proj.bias", f"{c}v_proj.bias"), (dim,), part=(heads, hd))]
    rows += linear("mlp/fc1", "mlp.fc1", dim, 4 * dim) + linear("mlp/fc2", "mlp.fc2", 4 * dim, dim)
    return rows + layer_norm("norm1", "layer_norm1", dim) + layer_norm("norm2", "layer_norm2", dim)


def encoder_rows(cfg, block: Callable[[int, int, int], list[Tensor]], patch_embed: str, blocks: str,
                 norm: str) -> list[Tensor]:
    """The encoder's rows of a V-JEPA 2 table, under one layout's names: the tubelet Conv3d `patch_embed` (weight,
    bias), block i under `blocks.format(i)` as `block(width, heads, mlp_dim)` lists it, the final LayerNorm `norm`."""
    d = vjepa2.dims(cfg)
    dim, patch, tubelet = d["width"], d["patch"], cfg.tubelet_size
    rows = [Tensor("encoder/patch_embed/kernel", (f"{patch_embed}.weight",), (dim, 3, tubelet, patch, patch),
                   perm=(2, 3, 4, 1, 0), part=(tubelet * patch * patch * 3, dim)),
            Tensor("encoder/patch_embed/bias", (f"{patch_embed}.bias",), (dim,))]
    one = block(dim, d["num_heads"], d["mlp_dim"])
    for i in range(d["depth"]):
        rows += prefixed(one, f"encoder/transformer/blocks/{i}/", blocks.format(i))
    return rows + layer_norm("encoder/norm", norm, dim)


def predictor_rows(cfg, block: Callable[[int, int, int], list[Tensor]], embed: str, mask_tokens: Tensor, blocks: str,
                   norm: str, proj: str) -> list[Tensor]:
    """The predictor's rows of a V-JEPA 2 table, under one layout's names: the Linear `embed` from the encoder's
    width, the row of its mask tokens, block i under `blocks.format(i)`, the LayerNorm `norm`, the Linear `proj`."""
    dim, pw = vjepa2.dims(cfg)["width"], cfg.predictor_width
    rows = linear("predictor/embed", embed, dim, pw) + [mask_tokens]
    one = block(pw, cfg.predictor_heads, cfg.predictor_mlp_dim or 4 * pw)
    for i in range(cfg.predictor_depth):
        rows += prefixed(one, f"predictor/transformer/blocks/{i}/", blocks.format(i))
    return rows + layer_norm("predictor/norm", norm, pw) + linear("predictor/proj", proj, pw, dim)


def tensors(cfg, root: str) -> list[Tensor]:
    """The table of a V-JEPA 2 with vidjax config `cfg`, both directions; `root` is the VJEPA2Model's prefix in the
    checkpoint ("vjepa2." under a classifier, "" in a VJEPA2Model); the pooler and classifier sit outside it."""
    d = vjepa2.dims(cfg)
    dim, heads = d["width"], d["num_heads"]
    block = functools.partial(_block, qkv_bias=cfg.qkv_bias == "qkv")
    e, p = f"{root}encoder.", f"{root}predictor."
    rows = encoder_rows(cfg, block, f"{e}embeddings.patch_embeddings.proj", f"{e}layer.{{}}.", f"{e}layernorm")
    if cfg.predictor:
        n, pw = cfg.num_mask_tokens, cfg.predictor_width
        mask_tokens = Tensor("predictor/mask_tokens", (f"{p}embeddings.mask_tokens",), (n, 1, 1, pw), part=(n, pw))
        rows += predictor_rows(cfg, block, f"{p}embeddings.predictor_embeddings", mask_tokens, f"{p}layer.{{}}.",
                               f"{p}layernorm", f"{p}proj")
    if cfg.head == "classification":
        rows.append(Tensor("pooler/query", ("pooler.query_tokens",), (1, 1, dim), part=(dim,)))
        one = _pooler_block(dim, heads)
        for i in range(cfg.num_pooler_layers):
            rows += prefixed(one, f"pooler/blocks/blocks/{i}/", f"pooler.self_attention_layers.{i}.")
        rows += prefixed(_cross_block(dim, heads), "pooler/cross/", "pooler.cross_attention_layer.")
        rows += linear("head", "classifier", dim, cfg.num_classes)
    return rows


def _ratio_dim(width: int, ratio: float) -> int:
    return int(width * ratio)  # nn.Linear(width, int(width * mlp_ratio)), as transformers' VJEPA2MLP


def _mlp_ratio(width: int, mlp_dim: int) -> float:
    """The mlp_ratio transformers builds an MLP of `mlp_dim` from (`_ratio_dim` of it gives `mlp_dim` back)."""
    ratio = mlp_dim / width
    while _ratio_dim(width, ratio) < mlp_dim:  # width * (mlp_dim / width) rounded just below mlp_dim
        ratio = float(np.nextafter(ratio, np.inf))
    return ratio


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a V-JEPA 2 checkpoint onto `vidjax.models.vjepa2`."""
    check_video_input(hf, "V-JEPA 2", channels_key="in_chans")
    head = HEADS[architecture]
    root = src.prefix_of("encoder.embeddings.patch_embeddings.proj.weight")
    width, pw = hf.get("hidden_size", 1024), hf.get("pred_hidden_size", 384)
    cfg = vjepa2.default_config()
    cfg.update(dict(
        variant=f"L/{hf.get('patch_size', 16)}", width=width, depth=hf.get("num_hidden_layers", 24),
        num_heads=hf.get("num_attention_heads", 16), mlp_dim=_ratio_dim(width, hf.get("mlp_ratio", 4.0)),
        num_frames=hf.get("frames_per_clip", 64), image_size=hf.get("crop_size", 256),
        tubelet_size=hf.get("tubelet_size", 2), head=head,
        # A classifier's checkpoint holds the predictor too (transformers builds the whole VJEPA2Model); kept so
        # that nothing is dropped, unless the file has none.
        predictor=src.has(f"{root}predictor.layernorm.weight"),
        predictor_width=pw, predictor_depth=hf.get("pred_num_hidden_layers", 12),
        predictor_heads=hf.get("pred_num_attention_heads", 12),
        predictor_mlp_dim=_ratio_dim(pw, hf.get("pred_mlp_ratio", 4.0)),
        num_mask_tokens=hf.get("pred_num_mask_tokens", 10), num_pooler_layers=hf.get("num_pooler_layers", 3),
        qkv_bias="qkv" if hf.get("qkv_bias", True) else "none", ln_eps=hf.get("layer_norm_eps", 1e-6),
    ))
    class_names = None
    if head == "classification":
        labels = hf.get("id2label") or {}
        num_classes = hf.get("num_labels") or len(labels)
        if not num_classes and src.has("classifier.bias"):
            num_classes = src.tensors["classifier.bias"].shape[0]
        cfg.num_classes = int(num_classes)
        if labels:
            id2label = {int(k): v for k, v in labels.items()}
            class_names = [id2label.get(i, str(i)) for i in range(cfg.num_classes)]
    params = read_tensors(src, tensors(cfg, root))
    return Converted("vjepa2", cfg, params, preprocessing=_preprocessing(hf), class_names=class_names)


def _preprocessing(hf: dict) -> dict:
    """The checkpoint's processor's mean/std (ImageNet's, VJEPA2VideoProcessor's defaults, when it has none)."""
    mean, std = processor_statistics(hf.get("_preprocessor_config"), IMAGENET_MEAN, IMAGENET_STD, "V-JEPA 2")
    return {"mean": mean, "std": std}


def hf_config(cfg) -> dict:
    """config.json's model fields (VJEPA2Config) of a vidjax V-JEPA 2 config; the inverse of `from_hf`'s reading."""
    d = vjepa2.dims(cfg)
    pw = int(cfg.predictor_width)
    return dict(model_type="vjepa2", patch_size=d["patch"], crop_size=int(cfg.image_size),
                frames_per_clip=int(cfg.num_frames), tubelet_size=int(cfg.tubelet_size), in_chans=3,
                hidden_size=d["width"], num_hidden_layers=d["depth"], num_attention_heads=d["num_heads"],
                mlp_ratio=_mlp_ratio(d["width"], d["mlp_dim"]), layer_norm_eps=float(cfg.ln_eps),
                qkv_bias=cfg.qkv_bias == "qkv", hidden_act="gelu", initializer_range=0.02, drop_path_rate=0.0,
                attention_probs_dropout_prob=0.0, attention_dropout=0.0, num_pooler_layers=int(cfg.num_pooler_layers),
                pred_hidden_size=pw, pred_num_hidden_layers=int(cfg.predictor_depth),
                pred_num_attention_heads=int(cfg.predictor_heads), pred_num_mask_tokens=int(cfg.num_mask_tokens),
                pred_mlp_ratio=_mlp_ratio(pw, int(cfg.predictor_mlp_dim or 4 * pw)), pred_zero_init_mask_tokens=True)


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax V-JEPA 2 -> VJEPA2ForVideoClassification (head) or VJEPA2Model (no head), the predictor included."""
    cfg = converted.model_config
    if cfg.qkv_bias not in ("qkv", "none"):
        raise ConversionError(f"this V-JEPA 2 has qkv_bias={cfg.qkv_bias!r}; transformers' VJEPA2 has q, k and v "
                              f"biases or none (qkv_bias 'qkv' or 'none'), so it has no --to_hf form.")
    architecture = {head: arch for arch, head in HEADS.items()}[cfg.head]
    root = "vjepa2." if cfg.head == "classification" else ""
    notes = []
    if not cfg.predictor:
        # transformers builds the predictor into every VJEPA2Model: written without it, its tensors start random.
        notes.append(f"this checkpoint has no predictor (config.model.predictor off); {architecture} builds one, "
                     f"which transformers initialises at random: its predictor_output is not this model's (its "
                     f"encoder's outputs{' and logits' if root else ''} are).")
    elif int(cfg.mask_index) % int(cfg.num_mask_tokens) != 1 % int(cfg.num_mask_tokens):
        notes.append(f"transformers' predictor uses mask token 1; this checkpoint's uses {int(cfg.mask_index)} "
                     f"(config.model.mask_index), so transformers' predictor_output differs.")
    short_side = int(converted.preprocessing.get("short_side") or cfg.image_size)
    if short_side != int(int(cfg.image_size) * 256 / 224):
        notes.append(f"transformers' {PROCESSOR} resizes a clip's short side to crop_size x 256 / 224 = "
                     f"{int(int(cfg.image_size) * 256 / 224)} px whatever preprocessor_config.json says; this "
                     f"checkpoint's clips are resized to {short_side} px before the {int(cfg.image_size)} px crop, so "
                     f"the processor's pixels differ from vidjax's (the model's outputs on the same pixels do not).")
    return HfCheckpoint(architecture, hf_config(cfg), write_tensors(converted.params, tensors(cfg, root), "V-JEPA 2"),
                        processor=PROCESSOR, notes=notes)
