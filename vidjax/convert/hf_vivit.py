"""Hugging Face ViViT (`VivitForVideoClassification`, `VivitModel`) -> vidjax `vivit` with model_type "joint".

Hugging Face ports only the paper's model 1 (joint space-time attention, converted from scenic). Layout facts this
mapping relies on: the tubelet Conv3d weight is (D, 3, t, p, p) and vidjax's patch embedding is a linear map of
(t, h, w, c)-ordered tubelet pixels; the CLS token comes first and the position table (1, 1 + tokens, D) covers it;
q/k/v are separate `nn.Linear`s (out, in) that vidjax fuses into one (D, 3, heads, head_dim) kernel. Layers are read
under the names `save_pretrained` writes (`encoder.layer.N.attention.attention.query`, ...) or under transformers
5's module names (`layers.N.attention.q_proj`, ...). The pooler of `VivitModel` (dense + tanh on the CLS token) is
kept as the model's `pooler` (config.model.pooler), so its `pooler_output` and its tensors come back. LayerNorm eps
and the GELU form come from the config. Both directions use one table (`tensors`): `to_hf` writes a vidjax ViViT
model 1 back (`python -m vidjax.export --to_hf`), under the names `save_pretrained` writes.
"""

from __future__ import annotations

from typing import Any

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


def tensors(cfg, root: str, legacy: bool = True) -> list[Tensor]:
    """The table of a ViViT model 1 with vidjax config `cfg`, both directions. `root` is the backbone's prefix in the
    checkpoint ("vivit." under the classifier, "" in a VivitModel); `legacy`: layers under the names
    `save_pretrained` writes, else transformers 5's module names."""
    size, patch, tubelet = vivit.parse_variant(cfg.variant)
    dims = layers.vit_dims(f"{size}/{patch}", cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    dim, heads, mlp = dims["width"], dims["num_heads"], dims["mlp_dim"]
    head_dim, pick = dim // heads, 0 if legacy else 1
    num_tokens = int(np.prod(vivit.token_grid(cfg)))
    emb = f"{root}embeddings."
    rows = [Tensor("patch_embed/kernel", (f"{emb}patch_embeddings.projection.weight",),
                   (dim, 3, tubelet, patch, patch), perm=(2, 3, 4, 1, 0), part=(tubelet * patch * patch * 3, dim)),
            Tensor("patch_embed/bias", (f"{emb}patch_embeddings.projection.bias",), (dim,)),
            Tensor("cls_token", (f"{emb}cls_token",), (1, 1, dim), part=(dim,)),
            Tensor("pos_embed", (f"{emb}position_embeddings",), (1, num_tokens + 1, dim), part=(num_tokens + 1, dim))]
    rows += layer_norm("norm", f"{root}layernorm", dim)
    block = [Tensor("attn/qkv", tuple(f"{names[pick]}.weight" for names in _QKV), (dim, dim), perm=(1, 0),
                    part=(dim, heads, head_dim), axis=1)]
    if cfg.qkv_bias == "qkv":
        block.append(Tensor("attn/qkv_b", tuple(f"{names[pick]}.bias" for names in _QKV), (dim,),
                            part=(heads, head_dim)))
    shapes = {"attn/proj": (dim, dim), "mlp/fc1": (mlp, dim), "mlp/fc2": (dim, mlp)}
    for vj, *hf_names in _LAYER_TENSORS:
        if vj.startswith("norm"):
            block += layer_norm(vj, hf_names[pick], dim)
        elif vj == "attn/proj":
            block += [Tensor("attn/proj", (f"{hf_names[pick]}.weight",), shapes[vj], perm=(1, 0),
                             part=(heads, head_dim, dim)),
                      Tensor("attn/proj_bias", (f"{hf_names[pick]}.bias",), (dim,))]
        else:
            block += linear(vj, hf_names[pick], shapes[vj][1], shapes[vj][0])
    for i in range(dims["depth"]):
        rows += prefixed(block, f"transformer/blocks/{i}/", f"{root}encoder.layer.{i}." if legacy
                         else f"{root}layers.{i}.")
    if cfg.head == "classification":
        rows += linear("head", "classifier", dim, cfg.num_classes)
    if cfg.get("pooler"):
        rows += linear("pooler", f"{root}pooler.dense", dim, dim)
    return rows


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
    check_video_input(hf, "ViViT", gelu=_GELU_FORMS, default_act="gelu_fast")
    act = hf.get("hidden_act", "gelu_fast")
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

    class_names = None
    if head == "classification":
        if not src.has("classifier.weight"):
            raise ConversionError(f"{src.origin} has no classifier.weight: a VivitForVideoClassification "
                                  f"checkpoint with num_labels=0 has no head; convert it as VivitModel.")
        cfg.num_classes = int(src.tensors["classifier.weight"].shape[0])
        if hf.get("id2label"):
            id2label = {int(k): v for k, v in hf["id2label"].items()}
            class_names = [id2label.get(i, str(i)) for i in range(cfg.num_classes)]
    root = src.prefix_of("embeddings.patch_embeddings.projection.weight")
    cfg.pooler = head == "none" and src.has(f"{root}pooler.dense.weight")
    params = read_tensors(src, tensors(cfg, root, legacy=src.has(f"{root}encoder.layer.0.layernorm_before.weight")))
    return Converted("vivit", cfg, params, preprocessing=_preprocessing(hf), class_names=class_names)


def hf_config(cfg) -> dict:
    """config.json's model fields (VivitConfig) of a vidjax ViViT model 1 config; the inverse of `from_hf`'s."""
    size, patch, tubelet = vivit.parse_variant(cfg.variant)
    dims = layers.vit_dims(f"{size}/{patch}", cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    return dict(model_type="vivit", image_size=int(cfg.image_size), num_frames=int(cfg.num_frames),
                tubelet_size=[tubelet, patch, patch], num_channels=3, hidden_size=dims["width"],
                num_hidden_layers=dims["depth"], num_attention_heads=dims["num_heads"],
                intermediate_size=dims["mlp_dim"], hidden_act="gelu_fast" if cfg.approximate_gelu else "gelu",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02,
                layer_norm_eps=float(cfg.ln_eps), qkv_bias=cfg.qkv_bias == "qkv", pooler_output_size=dims["width"],
                pooler_act="tanh")


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax ViViT model 1 (joint attention, CLS classifier) -> VivitForVideoClassification or VivitModel."""
    cfg = converted.model_config
    if cfg.model_type != "joint":
        raise ConversionError(f"this is a ViViT with model_type={cfg.model_type!r}; transformers has no class for it "
                              f"(its Vivit classes implement only model 1, model_type 'joint').")
    if vivit.classifier_of(cfg) != "token":
        raise ConversionError("this is a ViViT model 1 without a CLS token (classifier 'gap'); transformers has no "
                              "class for it (its Vivit classes classify from the CLS token).")
    classifier = cfg.head == "classification"
    notes = [] if classifier or cfg.get("pooler") else [
        "VivitModel has a pooler (dense + tanh on the CLS token) that this vidjax model does not have: transformers "
        "initialises it at random when loading (last_hidden_state is exact; pooler_output is not meaningful)."]
    rows = tensors(cfg, "vivit." if classifier else "")
    return HfCheckpoint(ARCHITECTURES[0] if classifier else ARCHITECTURES[1], hf_config(cfg),
                        write_tensors(converted.params, rows, "ViViT"), processor="VivitImageProcessor", notes=notes)
