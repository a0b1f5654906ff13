"""Hugging Face TimeSformer (`TimesformerForVideoClassification`, `TimesformerModel`) -> vidjax `timesformer`.

Every tensor of the checkpoint is mapped (a leftover one is an error): the fused qkv Linear (rows ordered
(q|k|v, head, head_dim)) becomes `Attention.qkv` (D, 3, heads, head_dim), Linear weights (out, in) are transposed,
and the patch Conv2d (D, 3, p, p) becomes a Dense over (h, w, c)-ordered patch pixels. LayerNorm eps and the GELU
form come from the config, so converted models match the reference exactly. Both directions use one table
(`tensors`): `to_hf` writes a vidjax TimeSformer back (`python -m vidjax.export --to_hf`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    HfCheckpoint,
    Tensor,
    TensorSource,
    layer_norm,
    linear,
    prefixed,
    read_tensors,
    write_tensors,
)
from vidjax.models import layers, timesformer

logger = logging.getLogger(__name__)

ARCHITECTURES = ("TimesformerForVideoClassification", "TimesformerModel")

# HF activation names -> whether they are the tanh approximation of GELU (False = exact erf GELU).
_GELU_FORMS = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_fast": True,
               "gelu_pytorch_tanh": True, "gelu_accurate": True}

# TimesformerVideoProcessor defaults (ImageNet statistics, rescale 1/255), used when the checkpoint directory
# carries no processor config.
_DEFAULT_MEAN = (0.485, 0.456, 0.406)
_DEFAULT_STD = (0.229, 0.224, 0.225)


def _square(value: Any, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ConversionError(f"TimeSformer config {name}={value}: vidjax supports square sizes only.")
        value = value[0]
    return int(value)


def _preprocessing(proc: dict | None) -> tuple[list[float], list[float]]:
    """(mean, std) with input = (pixels/255 - mean)/std.

    From the processor config when the checkpoint ships one (the published checkpoints carry their own
    statistics); otherwise the TimesformerVideoProcessor defaults.
    """
    if proc is None:
        return list(_DEFAULT_MEAN), list(_DEFAULT_STD)
    if not proc.get("do_normalize", True):
        mean, std = np.zeros(3), np.ones(3)
    else:
        mean = np.asarray(proc.get("image_mean", _DEFAULT_MEAN), np.float64)
        std = np.asarray(proc.get("image_std", _DEFAULT_STD), np.float64)
    if mean.shape != (3,) or std.shape != (3,):
        raise ConversionError(f"The processor config's image_mean/image_std must have 3 values each, got "
                              f"{mean.tolist()} and {std.tolist()}.")
    # The processor computes (pixels * rescale_factor - mean) / std; restate it over pixels/255.
    factor = 255.0 * float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 255.0
    return [float(m) for m in mean / factor], [float(s) for s in std / factor]


def _model_config(hf: dict, architecture: str):
    attention_type = hf.get("attention_type", "divided_space_time")
    if attention_type not in timesformer.ATTENTION_TYPES:
        raise ConversionError(f"TimeSformer config attention_type={attention_type!r} is not one of "
                              f"{', '.join(timesformer.ATTENTION_TYPES)}.")
    if int(hf.get("num_channels", 3)) != 3:
        raise ConversionError(f"TimeSformer config num_channels={hf['num_channels']}: vidjax models take RGB.")
    act = hf.get("hidden_act", "gelu")
    if act not in _GELU_FORMS:
        raise ConversionError(f"TimeSformer config hidden_act={act!r} is not supported; vidjax maps "
                              f"{', '.join(sorted(_GELU_FORMS))}.")
    width, depth = int(hf.get("hidden_size", 768)), int(hf.get("num_hidden_layers", 12))
    heads = int(hf.get("num_attention_heads", 12))
    patch = _square(hf.get("patch_size", 16), "patch_size")
    size = next((name for name, dims in layers.VIT_SIZES.items() if dims == (width, depth, heads)), "B")
    cfg = timesformer.default_config()
    cfg.update(dict(
        variant=f"{size}/{patch}", width=width, depth=depth, num_heads=heads,
        mlp_dim=int(hf.get("intermediate_size", 4 * width)),
        num_frames=int(hf.get("num_frames", 8)), image_size=_square(hf.get("image_size", 224), "image_size"),
        attention_type=attention_type, qkv_bias=bool(hf.get("qkv_bias", True)),
        ln_eps=float(hf.get("layer_norm_eps", 1e-6)), approximate_gelu=_GELU_FORMS[act],
        drop_path=float(hf.get("drop_path_rate", 0.0)),
    ))
    class_names = None
    if architecture == "TimesformerForVideoClassification":
        id2label = hf.get("id2label") or {}
        num_labels = int(hf.get("num_labels", len(id2label)))
        if num_labels <= 0:
            raise ConversionError("TimesformerForVideoClassification config has no labels (id2label is empty); "
                                  "convert it as TimesformerModel or add id2label to config.json.")
        class_names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels)]
        cfg.head, cfg.num_classes = "classification", num_labels
    else:
        cfg.head, cfg.num_classes = "none", 0
    return cfg, class_names


def _attention(d: int, h: int, qkv_bias: bool) -> list[Tensor]:
    """A TimesformerAttention (fused qkv rows ordered (q|k|v, head, head_dim)) <-> a vidjax Attention."""
    k = d // h
    rows = [Tensor("qkv", ("attention.qkv.weight",), (3 * d, d), perm=(1, 0), part=(d, 3, h, k))]
    if qkv_bias:
        rows.append(Tensor("qkv_b", ("attention.qkv.bias",), (3 * d,), part=(3, h, k)))
    return rows + [Tensor("proj", ("output.dense.weight",), (d, d), perm=(1, 0), part=(h, k, d)),
                   Tensor("proj_bias", ("output.dense.bias",), (d,))]


def tensors(cfg, root: str) -> list[Tensor]:
    """The table of a TimeSformer with vidjax config `cfg`, both directions; `root` is the backbone's prefix in the
    checkpoint ("timesformer." under the classifier, "" in a TimesformerModel)."""
    dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    d, p, t, mlp = dims["width"], dims["patch"], cfg.num_frames, dims["mlp_dim"]
    grid = cfg.image_size // p
    emb = f"{root}embeddings."
    rows = [Tensor("patch_embed/kernel", (f"{emb}patch_embeddings.projection.weight",), (d, 3, p, p),
                   perm=(2, 3, 1, 0), part=(p * p * 3, d)),  # (h, w, c) pixel order
            Tensor("patch_embed/bias", (f"{emb}patch_embeddings.projection.bias",), (d,)),
            Tensor("cls_token", (f"{emb}cls_token",), (1, 1, d), part=(d,)),
            Tensor("pos_embed", (f"{emb}position_embeddings",), (1, 1 + grid * grid, d), part=(1 + grid * grid, d))]
    if cfg.attention_type != "space_only":
        rows.append(Tensor("time_embed", (f"{emb}time_embeddings",), (1, t, d), part=(t, d)))
    attention = _attention(d, dims["num_heads"], cfg.qkv_bias)
    block = []
    if cfg.attention_type == "divided_space_time":
        block += layer_norm("temporal_norm", "temporal_layernorm", d)
        block += prefixed(attention, "temporal_attn/", "temporal_attention.")
        block += linear("temporal_fc", "temporal_dense", d, d)
    block += layer_norm("norm1", "layernorm_before", d) + prefixed(attention, "attn/", "attention.")
    block += layer_norm("norm2", "layernorm_after", d)
    block += linear("mlp/fc1", "intermediate.dense", d, mlp) + linear("mlp/fc2", "output.dense", mlp, d)
    for i in range(dims["depth"]):
        rows += prefixed(block, f"blocks/{i}/", f"{root}encoder.layer.{i}.")
    rows += layer_norm("norm", f"{root}layernorm", d)
    if cfg.head == "classification":
        rows += linear("head", "classifier", d, cfg.num_classes)
    return rows


def from_hf(hf_config: dict, src: TensorSource, architecture: str) -> Converted:
    """Converts a Hugging Face TimeSformer checkpoint (config.json as a dict, its tensors) into vidjax's layout."""
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"hf_timesformer converts {', '.join(ARCHITECTURES)}, not {architecture!r}.")
    cfg, class_names = _model_config(hf_config, architecture)
    if cfg.attention_type == "space_only":
        logger.warning("TimeSformer space_only: vidjax averages the frames before the final norm and head, as the "
                       "official code does; Hugging Face returns per-frame outputs (batch x frames) for this variant.")
    params = read_tensors(src, tensors(cfg, src.prefix_of("embeddings.cls_token")))
    leftover = src.unused()
    if leftover:
        raise ConversionError(f"{src.origin} has tensors the {architecture} mapping does not use: {leftover[:8]}"
                              f"{' ...' if len(leftover) > 8 else ''}; is config.json the one of these weights?")
    mean, std = _preprocessing(hf_config.get("_preprocessor_config"))
    return Converted(
        model_name="timesformer", model_config=cfg, params=params,
        preprocessing={"mean": mean, "std": std, "num_frames": cfg.num_frames, "image_size": cfg.image_size},
        class_names=class_names,
    )


def hf_config(cfg) -> dict:
    """config.json's model fields (TimesformerConfig) of a vidjax TimeSformer config; the inverse of `_model_config`."""
    dims = layers.vit_dims(cfg.variant, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    return dict(model_type="timesformer", image_size=int(cfg.image_size), patch_size=dims["patch"], num_channels=3,
                num_frames=int(cfg.num_frames), hidden_size=dims["width"], num_hidden_layers=dims["depth"],
                num_attention_heads=dims["num_heads"], intermediate_size=dims["mlp_dim"],
                hidden_act="gelu_new" if cfg.approximate_gelu else "gelu", hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=float(cfg.ln_eps),
                qkv_bias=bool(cfg.qkv_bias), attention_type=cfg.attention_type,
                # Drop path acts in training only; transformers 5 types this field as an int (its default, 0).
                drop_path_rate=0)


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax TimeSformer -> TimesformerForVideoClassification (head) or TimesformerModel (no head)."""
    cfg = converted.model_config
    classifier = cfg.head == "classification"
    architecture = ARCHITECTURES[0] if classifier else ARCHITECTURES[1]
    notes = []
    if cfg.attention_type == "space_only":
        notes.append("TimeSformer space_only: transformers returns per-frame outputs (batch x frames) where vidjax "
                     "averages the frames before the final norm and head.")
    rows = tensors(cfg, "timesformer." if classifier else "")
    return HfCheckpoint(architecture, hf_config(cfg), write_tensors(converted.params, rows, "TimeSformer"),
                        notes=notes)
