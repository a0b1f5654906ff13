"""Hugging Face TimeSformer (`TimesformerForVideoClassification`, `TimesformerModel`) -> vidjax `timesformer`.

Every tensor of the checkpoint is mapped (a leftover one is an error): the fused qkv Linear (rows ordered
(q|k|v, head, head_dim)) becomes `Attention.qkv` (D, 3, heads, head_dim), Linear weights (out, in) are transposed,
and the patch Conv2d (D, 3, p, p) becomes a Dense over (h, w, c)-ordered patch pixels. LayerNorm eps and the GELU
form come from the config, so converted models match the reference exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vidjax.convert.common import ConversionError, Converted, TensorSource
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


def _linear(src: TensorSource, name: str, d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray]:
    return src.take(f"{name}.weight", (d_out, d_in)).T, src.take(f"{name}.bias", (d_out,))


def _attention(src: TensorSource, name: str, out: str, cfg, params: dict[str, np.ndarray]) -> None:
    d, h = cfg.width, cfg.num_heads
    k = d // h
    params[f"{out}/qkv"] = src.take(f"{name}.attention.qkv.weight", (3 * d, d)).T.reshape(d, 3, h, k)
    if cfg.qkv_bias:
        params[f"{out}/qkv_b"] = src.take(f"{name}.attention.qkv.bias", (3 * d,)).reshape(3, h, k)
    params[f"{out}/proj"] = src.take(f"{name}.output.dense.weight", (d, d)).T.reshape(h, k, d)
    params[f"{out}/proj_bias"] = src.take(f"{name}.output.dense.bias", (d,))


def _norm(src: TensorSource, name: str, out: str, dim: int, params: dict[str, np.ndarray]) -> None:
    params[f"{out}/scale"] = src.take(f"{name}.weight", (dim,))
    params[f"{out}/bias"] = src.take(f"{name}.bias", (dim,))


def from_hf(hf_config: dict, src: TensorSource, architecture: str) -> Converted:
    """Converts a Hugging Face TimeSformer checkpoint (config.json as a dict, its tensors) into vidjax's layout."""
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"hf_timesformer converts {', '.join(ARCHITECTURES)}, not {architecture!r}.")
    cfg, class_names = _model_config(hf_config, architecture)
    if cfg.attention_type == "space_only":
        logger.warning("TimeSformer space_only: vidjax averages the frames before the final norm and head, as the "
                       "official code does; Hugging Face returns per-frame outputs (batch x frames) for this variant.")
    d, p, t = cfg.width, layers.parse_variant(cfg.variant)[1], cfg.num_frames
    grid = cfg.image_size // p
    pre = src.prefix_of("embeddings.cls_token")
    params: dict[str, np.ndarray] = {}
    conv = src.take(f"{pre}embeddings.patch_embeddings.projection.weight", (d, 3, p, p))
    params["patch_embed/kernel"] = conv.transpose(2, 3, 1, 0).reshape(p * p * 3, d)  # (h, w, c) pixel order
    params["patch_embed/bias"] = src.take(f"{pre}embeddings.patch_embeddings.projection.bias", (d,))
    params["cls_token"] = src.take(f"{pre}embeddings.cls_token", (1, 1, d)).reshape(d)
    params["pos_embed"] = src.take(f"{pre}embeddings.position_embeddings", (1, 1 + grid * grid, d))[0]
    if cfg.attention_type != "space_only":
        params["time_embed"] = src.take(f"{pre}embeddings.time_embeddings", (1, t, d))[0]
    for i in range(cfg.depth):
        hf, out = f"{pre}encoder.layer.{i}", f"blocks/{i}"
        if cfg.attention_type == "divided_space_time":
            _norm(src, f"{hf}.temporal_layernorm", f"{out}/temporal_norm", d, params)
            _attention(src, f"{hf}.temporal_attention", f"{out}/temporal_attn", cfg, params)
            params[f"{out}/temporal_fc/kernel"], params[f"{out}/temporal_fc/bias"] = _linear(
                src, f"{hf}.temporal_dense", d, d)
        _norm(src, f"{hf}.layernorm_before", f"{out}/norm1", d, params)
        _attention(src, f"{hf}.attention", f"{out}/attn", cfg, params)
        _norm(src, f"{hf}.layernorm_after", f"{out}/norm2", d, params)
        params[f"{out}/mlp/fc1/kernel"], params[f"{out}/mlp/fc1/bias"] = _linear(
            src, f"{hf}.intermediate.dense", d, cfg.mlp_dim)
        params[f"{out}/mlp/fc2/kernel"], params[f"{out}/mlp/fc2/bias"] = _linear(
            src, f"{hf}.output.dense", cfg.mlp_dim, d)
    _norm(src, f"{pre}layernorm", "norm", d, params)
    if cfg.head == "classification":
        params["head/kernel"], params["head/bias"] = _linear(src, "classifier", d, cfg.num_classes)
    leftover = src.unused()
    if leftover:
        raise ConversionError(f"{src.origin} has tensors the {architecture} mapping does not use: {leftover[:8]}"
                              f"{' ...' if len(leftover) > 8 else ''}; is config.json the one of these weights?")
    mean, std = _preprocessing(hf_config.get("_preprocessor_config"))
    return Converted(
        model_name="timesformer", model_config=cfg, params=params,
        preprocessing={"mean": mean, "std": std, "num_frames": t, "image_size": cfg.image_size},
        class_names=class_names,
    )
