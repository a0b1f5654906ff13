"""Hugging Face ViViT (`VivitForVideoClassification`, `VivitModel`) -> vidjax `vivit` with model_type "joint".

Hugging Face ports only the paper's model 1 (joint space-time attention, converted from scenic). Layout facts this
mapping relies on: the tubelet Conv3d weight is (D, 3, t, p, p) and vidjax's patch embedding is a linear map of
(t, h, w, c)-ordered tubelet pixels; the CLS token comes first and the position table (1, 1 + tokens, D) covers it;
q/k/v are separate `nn.Linear`s (out, in) that vidjax fuses into one (D, 3, heads, head_dim) kernel. Layers are read
under the names `save_pretrained` writes (`encoder.layer.N.attention.attention.query`, ...) or under transformers
5's module names (`layers.N.attention.q_proj`, ...). The pooler of `VivitModel` (dense + tanh on the CLS token) has
no vidjax counterpart and is left unread. LayerNorm eps and the GELU form come from the config.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidjax.convert.common import ConversionError, Converted, TensorSource
from vidjax.models import layers, vivit

ARCHITECTURES = ("VivitForVideoClassification", "VivitModel")

# HF activation names -> whether they are the tanh approximation of GELU (False = exact erf GELU).
_GELU_FORMS = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_fast": True,
               "gelu_pytorch_tanh": True, "gelu_accurate": True}

# scenic trains ViViT on pixels scaled to [-1, 1] ("zero_centering"): (pixels/255 - 0.5) / 0.5.
_ZERO_CENTRED = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

# (vidjax name in a Block, legacy HF name, transformers-5 HF name) for the per-layer tensors other than q/k/v.
_LAYER_TENSORS = (
    ("attn/proj", "attention.output.dense", "attention.o_proj"),
    ("mlp/fc1", "intermediate.dense", "mlp.fc1"),
    ("mlp/fc2", "output.dense", "mlp.fc2"),
    ("norm1", "layernorm_before", "layernorm_before"),
    ("norm2", "layernorm_after", "layernorm_after"),
)
_QKV = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
        ("attention.attention.value", "attention.v_proj"))


def _square(value: Any, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ConversionError(f"ViViT config {name}={value}: vidjax supports square sizes only.")
        value = value[0]
    return int(value)


def _layer(src: TensorSource, root: str, i: int, dim: int, heads: int, mlp: int, qkv_bias: bool
           ) -> dict[str, np.ndarray]:
    """One VivitLayer -> `layers.Block` params (keys relative to the block)."""
    legacy = src.has(f"{root}encoder.layer.{i}.layernorm_before.weight")
    prefix = f"{root}encoder.layer.{i}." if legacy else f"{root}layers.{i}."
    pick = 0 if legacy else 1
    head_dim = dim // heads
    out = {"attn/qkv": np.stack([src.take(f"{prefix}{names[pick]}.weight", (dim, dim)).T.reshape(dim, heads, head_dim)
                                 for names in _QKV], axis=1)}
    if qkv_bias:
        out["attn/qkv_b"] = np.stack([src.take(f"{prefix}{names[pick]}.bias", (dim,)).reshape(heads, head_dim)
                                      for names in _QKV])
    shapes = {"attn/proj": (dim, dim), "mlp/fc1": (mlp, dim), "mlp/fc2": (dim, mlp)}
    for vj, *hf_names in _LAYER_TENSORS:
        name = f"{prefix}{hf_names[pick]}"
        if vj.startswith("norm"):
            out[f"{vj}/scale"] = src.take(f"{name}.weight", (dim,))
            out[f"{vj}/bias"] = src.take(f"{name}.bias", (dim,))
            continue
        kernel = src.take(f"{name}.weight", shapes[vj]).T
        bias = src.take(f"{name}.bias", (shapes[vj][0],))
        if vj == "attn/proj":
            out["attn/proj"], out["attn/proj_bias"] = kernel.reshape(heads, head_dim, dim), bias
        else:
            out[f"{vj}/kernel"], out[f"{vj}/bias"] = kernel, bias
    return out


def _preprocessing(hf: dict) -> dict:
    """mean/std with input = (pixels/255 - mean)/std, from the checkpoint's preprocessor_config.json if it has one.

    VivitImageProcessor computes ((pixels * rescale_factor - offset) - image_mean) / image_std, with offset 1 when
    `offset` is set (rescale 1/127.5 then -1 maps pixels to [-1, 1]) and the normalisation only when
    `do_normalize`; restated over pixels/255 that is mean = (offset + image_mean) / (255 * rescale_factor) and
    std = image_std / (255 * rescale_factor). Without a processor config: scenic's [-1, 1] zero-centring, what the
    weights were trained on.
    """
    proc = hf.get("_preprocessor_config")
    if not proc:
        mean, std = _ZERO_CENTRED
        return {"mean": list(mean), "std": list(std)}
    scale = 255.0 * float(proc.get("rescale_factor", 1 / 127.5)) if proc.get("do_rescale", True) else 255.0
    offset = 1.0 if proc.get("do_rescale", True) and proc.get("offset", True) else 0.0
    image_mean, image_std = np.zeros(3), np.ones(3)
    if proc.get("do_normalize", True):
        image_mean = np.broadcast_to(np.asarray(proc.get("image_mean", 0.5), np.float64), (3,))
        image_std = np.broadcast_to(np.asarray(proc.get("image_std", 0.5), np.float64), (3,))
    return {"mean": [float(v) for v in (offset + image_mean) / scale], "std": [float(v) for v in image_std / scale]}


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a ViViT checkpoint onto `vidjax.models.vivit` (model_type "joint", CLS classifier)."""
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"hf_vivit converts {', '.join(ARCHITECTURES)}, not {architecture!r}.")
    act = hf.get("hidden_act", "gelu_fast")
    if act not in _GELU_FORMS:
        raise ConversionError(f"ViViT checkpoint uses hidden_act={act!r}; vidjax implements the GELU forms "
                              f"{', '.join(_GELU_FORMS)}.")
    if hf.get("num_channels", 3) != 3:
        raise ConversionError(f"ViViT checkpoint has num_channels={hf['num_channels']}; vidjax takes RGB video.")
    dim, depth, heads = int(hf["hidden_size"]), int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
    mlp = int(hf["intermediate_size"])
    tubelet, patch_h, patch_w = (int(v) for v in hf.get("tubelet_size", (2, 16, 16)))
    patch = _square((patch_h, patch_w), "tubelet_size[1:]")
    image_size = _square(hf.get("image_size", 224), "image_size")
    num_frames = int(hf.get("num_frames", 32))
    qkv_bias = bool(hf.get("qkv_bias", True))
    head = "classification" if architecture == "VivitForVideoClassification" else "none"
    # A published size name when the dims are one (so the variant reads naturally); explicit dims make it exact.
    size = next((name for name, dims in layers.VIT_SIZES.items() if dims == (dim, depth, heads)), "B")

    cfg = vivit.default_config()
    cfg.update(dict(
        variant=f"{size}/{patch}x{tubelet}", width=dim, depth=depth, num_heads=heads, mlp_dim=mlp,
        model_type="joint", classifier="token", num_frames=num_frames, image_size=image_size, head=head,
        qkv_bias="qkv" if qkv_bias else "none", ln_eps=float(hf.get("layer_norm_eps", 1e-6)),
        approximate_gelu=_GELU_FORMS[act], head_init_scale=1.0,
    ))
    num_tokens = int(np.prod(vivit.token_grid(cfg)))

    root = src.prefix_of("embeddings.patch_embeddings.projection.weight")
    emb = f"{root}embeddings."
    conv = src.take(f"{emb}patch_embeddings.projection.weight", (dim, 3, tubelet, patch, patch))
    params = {
        "patch_embed/kernel": conv.transpose(2, 3, 4, 1, 0).reshape(-1, dim),
        "patch_embed/bias": src.take(f"{emb}patch_embeddings.projection.bias", (dim,)),
        "cls_token": src.take(f"{emb}cls_token", (1, 1, dim)).reshape(dim),
        "pos_embed": src.take(f"{emb}position_embeddings", (1, num_tokens + 1, dim))[0],
        "norm/scale": src.take(f"{root}layernorm.weight", (dim,)),
        "norm/bias": src.take(f"{root}layernorm.bias", (dim,)),
    }
    for i in range(depth):
        for key, value in _layer(src, root, i, dim, heads, mlp, qkv_bias).items():
            params[f"transformer/blocks/{i}/{key}"] = value

    class_names = None
    if head == "classification":
        if not src.has("classifier.weight"):
            raise ConversionError(f"{src.origin} has no classifier.weight: a VivitForVideoClassification "
                                  f"checkpoint with num_labels=0 has no head; convert it as VivitModel.")
        num_classes = int(src.tensors["classifier.weight"].shape[0])
        cfg.num_classes = num_classes
        params["head/kernel"] = src.take("classifier.weight", (num_classes, dim)).T
        params["head/bias"] = src.take("classifier.bias", (num_classes,))
        if hf.get("id2label"):
            id2label = {int(k): v for k, v in hf["id2label"].items()}
            class_names = [id2label.get(i, str(i)) for i in range(num_classes)]
    return Converted("vivit", cfg, params, preprocessing=_preprocessing(hf), class_names=class_names)
