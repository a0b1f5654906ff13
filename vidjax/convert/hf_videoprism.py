"""Hugging Face VideoPrism checkpoints (`VideoPrismVisionModel`, `VideoPrismVideoModel`,
`VideoPrismForVideoClassification`, `VideoPrismClipModel`).

Layout facts this mapping relies on (transformers 5.24): the tubelet Conv3d weight is (width, 3, 1, p, p) and vidjax's
patch embedding a linear map of (h, w, c)-ordered patch pixels; the position tables are (1, patches, width) and (1,
frames, width); every block's q/k/v are separate `nn.Linear`s (`attention.q_proj/k_proj/v_proj`, out x in, with
biases when config.json's `qkv_bias`) that vidjax fuses, and `o_proj` always has a bias; every LayerNorm stores
gamma - 1 (`VideoPrismLayerNorm` computes with weight + 1), which vidjax's norms store too (`scale_offset`), so no
value changes on the way; the pooling head's q/k/v map the width to `intermediate_size` (heads of intermediate_size /
heads) and its query is stored (1, 1, width). The text tower's fixed sin | cos table
(`embeddings.position_embedding`) is read as the frozen parameter `text/position_table`, and its `position_ids`
buffer (0 .. max - 1) is checked and written back. The vision encoder sits under "vision_model." in the video model
and the classifier, the video model under "video_model." and the text tower under "text_model." in the clip model.

One table (`tensors`) lists every tensor, read by `from_hf` and written back by `to_hf` (`python -m vidjax.export
--to_hf`), with config.json's fields from `hf_config`. transformers' clip model has no learned temperature: reading
one starts vidjax's `logit_scale` at config.model.temperature_init (`videoprism.initial_logit_scale`), and writing
one back leaves it out (a trained temperature stays in the vidjax checkpoint).
"""

from __future__ import annotations

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
    processor_statistics,
    qkv_linears,
    read_tensors,
    write_tensors,
)
from vidjax.models import videoprism

# Architecture -> the vidjax head it is.
HEADS = {"VideoPrismVisionModel": "none", "VideoPrismVideoModel": "video",
         "VideoPrismForVideoClassification": "classification", "VideoPrismClipModel": "clip"}
ARCHITECTURES = tuple(HEADS)
VISION_ACTS = ("gelu_python", "gelu")  # exact GELU (the published configs say "gelu_python")
POSITION_IDS = "embeddings.position_ids"
PROCESSOR = "LlavaOnevisionVideoProcessor"  # transformers' AutoVideoProcessor for model_type "videoprism"
LOGIT_SCALE = "logit_scale"  # vidjax's learned temperature (head "clip"), which transformers' classes do not have


def _block(dim: int, heads: int, mlp: int, qkv_bias: bool) -> list[Tensor]:
    """One VideoPrismLayer <-> a vidjax `videoprism.Block`."""
    a = "attention."
    rows = qkv_linears(a, ("q_proj", "k_proj", "v_proj"), dim, heads, qkv_bias)
    rows += [Tensor("attn/proj", (f"{a}o_proj.weight",), (dim, dim), perm=(1, 0), part=(heads, dim // heads, dim)),
             Tensor("attn/proj_bias", (f"{a}o_proj.bias",), (dim,))]
    rows += linear("mlp/fc1", "mlp.fc1", dim, mlp) + linear("mlp/fc2", "mlp.fc2", mlp, dim)
    return rows + layer_norm("norm1", "layernorm_before", dim) + layer_norm("norm2", "layernorm_after", dim)


def _stack(vj: str, hf: str, depth: int, cfg) -> list[Tensor]:
    """`depth` blocks: vidjax's `{vj}/blocks/i/` <-> transformers' `{hf}.i.`."""
    d = videoprism.dims(cfg)
    one = _block(d["width"], d["num_heads"], d["mlp_dim"], cfg.qkv_bias == "qkv")
    return [row for i in range(depth) for row in prefixed(one, f"{vj}/blocks/{i}/", f"{hf}.{i}.")]


def _pooler(cfg, hf: str) -> list[Tensor]:
    """VideoPrismMultiheadAttentionPoolingHead `hf` <-> vidjax's `videoprism.AttentionPooler` "pooler"."""
    d = videoprism.dims(cfg)
    dim, heads, inner = d["width"], d["num_heads"], d["mlp_dim"]
    hd = inner // heads
    rows = [Tensor("pooler/query", (f"{hf}.pooling_attention_query",), (1, 1, dim), part=(dim,)),
            Tensor("pooler/q", (f"{hf}.q_proj.weight",), (inner, dim), perm=(1, 0), part=(dim, heads, hd)),
            Tensor("pooler/kv", (f"{hf}.k_proj.weight", f"{hf}.v_proj.weight"), (inner, dim), perm=(1, 0),
                   part=(dim, heads, hd), axis=1),
            Tensor("pooler/per_dim_scale", (f"{hf}.per_dim_scale",), (hd,)),
            Tensor("pooler/proj", (f"{hf}.o_proj.weight",), (dim, inner), perm=(1, 0), part=(heads, hd, dim)),
            Tensor("pooler/proj_bias", (f"{hf}.o_proj.bias",), (dim,))]
    if cfg.qkv_bias == "qkv":
        rows += [Tensor("pooler/q_bias", (f"{hf}.q_proj.bias",), (inner,), part=(heads, hd)),
                 Tensor("pooler/kv_bias", (f"{hf}.k_proj.bias", f"{hf}.v_proj.bias"), (inner,), part=(heads, hd))]
    return rows


def tensors(cfg, vision: str, outer: str) -> list[Tensor]:
    """The table of a VideoPrism with vidjax config `cfg`, both directions; `vision` is the VideoPrismVisionModel's
    prefix in the checkpoint ("" on its own, "vision_model." in a video model or classifier), `outer` the prefix of
    what sits beside it (the video model's "video_model." in a clip model, else "")."""
    d = videoprism.dims(cfg)
    dim, patch = d["width"], d["patch"]
    frames, side = videoprism.grid(cfg)
    e = f"{vision}spatial_embeddings."
    rows = [Tensor("encoder/patch_embed/kernel", (f"{e}patch_embeddings.projection.weight",), (dim, 3, 1, patch, patch),
                   perm=(2, 3, 4, 1, 0), part=(patch * patch * 3, dim)),
            Tensor("encoder/patch_embed/bias", (f"{e}patch_embeddings.projection.bias",), (dim,)),
            Tensor("encoder/spatial_pos_embed", (f"{e}position_embeddings",), (1, side * side, dim),
                   part=(side * side, dim)),
            Tensor("encoder/temporal_pos_embed", (f"{vision}temporal_embeddings.position_embeddings",),
                   (1, frames, dim), part=(frames, dim))]
    rows += _stack("encoder/spatial", f"{vision}spatial_layers", d["spatial_depth"], cfg)
    rows += layer_norm("encoder/spatial_norm", f"{vision}layernorm1", dim)
    rows += _stack("encoder/temporal", f"{vision}temporal_layers", d["temporal_depth"], cfg)
    rows += layer_norm("encoder/temporal_norm", f"{vision}layernorm2", dim)
    if cfg.head == "none":
        return rows
    if cfg.head != "classification" and cfg.num_auxiliary_layers:
        rows += _stack("auxiliary", f"{outer}auxiliary_layers", cfg.num_auxiliary_layers, cfg)
    rows += _pooler(cfg, f"{outer}head") + layer_norm("pooler_norm", f"{outer}head_layernorm", dim)
    if cfg.head == "classification":
        rows += linear("head", "classifier", dim, cfg.num_classes)
    if cfg.head == "clip":
        t = "text_model."
        rows += [Tensor("text/token_embed", (f"{t}embeddings.token_embedding.weight",), (cfg.vocab_size, dim)),
                 Tensor("text/position_table", (f"{t}embeddings.position_embedding",), (cfg.max_text_length, dim)),
                 Tensor("text/cls_token", (f"{t}embeddings.cls_emb",), (1, 1, dim), part=(dim,))]
        rows += _stack("text/blocks", f"{t}layers", d["text_depth"], cfg)
        rows += layer_norm("text/norm", f"{t}layernorm", dim)
    return rows


def _check(config: dict, key: str, allowed: tuple, what: str) -> None:
    value = config.get(key, allowed[0])
    if value not in allowed:
        raise ConversionError(f"VideoPrism {what} has {key}={value!r}; vidjax's VideoPrism computes "
                              f"{' or '.join(repr(a) for a in allowed)}.")


def _model_config(hf: dict, head: str) -> tuple:
    """The vidjax model block of a config.json (the clip model's vision_config and text_config, else its own)."""
    vision = hf.get("vision_config") or hf
    tubelet = list(vision.get("tubelet_size", (1, 18, 18)))
    if len(tubelet) != 3 or tubelet[0] != 1 or tubelet[1] != tubelet[2]:
        raise ConversionError(f"VideoPrism checkpoint has tubelet_size={tubelet}; vidjax's VideoPrism embeds each "
                              f"frame in square patches, tubelet (1, p, p).")
    size = vision.get("image_size", 288)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConversionError(f"VideoPrism checkpoint has image_size={size}; vidjax takes square frames.")
        size = size[0]
    _check(vision, "hidden_act", VISION_ACTS, "vision_config")
    _check(vision, "num_channels", (3,), "vision_config")
    cfg = videoprism.default_config()
    cfg.update(dict(
        variant=f"B/{tubelet[1]}", width=vision.get("hidden_size", 768),
        spatial_depth=vision.get("num_spatial_layers", 12), temporal_depth=vision.get("num_temporal_layers", 4),
        num_heads=vision.get("num_attention_heads", 12), mlp_dim=vision.get("intermediate_size", 3072),
        num_frames=vision.get("num_frames", 16), image_size=int(size), head=head,
        num_auxiliary_layers=vision.get("num_auxiliary_layers", 2),
        attn_logit_cap=float(vision.get("attn_logit_softcapping") or 0.0),
        l2_normalize=bool(vision.get("apply_l2norm", True)), qkv_bias="qkv" if vision.get("qkv_bias", True) else "none",
        ln_eps=vision.get("layer_norm_eps", 1e-6)))
    text = hf.get("text_config") if head == "clip" else None
    if text is not None:
        _check(text, "hidden_act", ("relu",), "text_config")
        shared = (("hidden_size", cfg.width), ("num_attention_heads", cfg.num_heads),
                  ("intermediate_size", cfg.mlp_dim), ("layer_norm_eps", cfg.ln_eps),
                  ("attn_logit_softcapping", cfg.attn_logit_cap), ("apply_l2norm", cfg.l2_normalize),
                  ("qkv_bias", cfg.qkv_bias == "qkv"))
        for key, value in shared:
            if key in text and (text[key] or 0) != value:
                raise ConversionError(f"VideoPrism checkpoint's text_config has {key}={text[key]!r} and its "
                                      f"vision_config {value!r}; vidjax's VideoPrism shares {key} between its towers "
                                      f"(as the published models do).")
        cfg.update(dict(text_depth=text.get("num_hidden_layers", 12), vocab_size=text.get("vocab_size", 32000),
                        max_text_length=text.get("max_position_embeddings", 64)))
    return cfg, vision, text


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a VideoPrism checkpoint onto `vidjax.models.videoprism`."""
    head = HEADS[architecture]
    cfg, vision, text = _model_config(hf, head)
    vision_root = src.prefix_of("spatial_embeddings.patch_embeddings.projection.weight")
    outer = "video_model." if head == "clip" else ""
    class_names = None
    if head == "classification":
        labels = vision.get("id2label") or {}
        num_classes = vision.get("num_labels") or len(labels)
        if src.has("classifier.bias"):
            num_classes = src.tensors["classifier.bias"].shape[0]
        cfg.num_classes = int(num_classes)
        if labels:
            id2label = {int(k): v for k, v in labels.items()}
            class_names = [id2label.get(i, str(i)) for i in range(cfg.num_classes)]
    params = read_tensors(src, tensors(cfg, vision_root, outer))
    if head == "clip":
        params[LOGIT_SCALE] = videoprism.initial_logit_scale(cfg)
    if text is not None:
        name = f"text_model.{POSITION_IDS}"
        if src.has(name):
            ids = np.asarray(src.tensors[name]).reshape(-1)
            if not np.array_equal(ids, np.arange(cfg.max_text_length)):
                raise ConversionError(f"{src.origin}: {name} is not 0 .. {cfg.max_text_length - 1}; vidjax's "
                                      f"VideoPrism text tower reads token i at position i.")
            src.mark_used(name)
    mean, std = processor_statistics(hf.get("_preprocessor_config"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "VideoPrism")
    return Converted("videoprism", cfg, params, preprocessing={"mean": mean, "std": std}, class_names=class_names)


def _vision_config(cfg) -> dict:
    d = videoprism.dims(cfg)
    return dict(model_type="videoprism_vision_model", image_size=int(cfg.image_size), num_frames=int(cfg.num_frames),
                tubelet_size=[1, d["patch"], d["patch"]], num_channels=3, hidden_size=d["width"],
                num_attention_heads=d["num_heads"], intermediate_size=d["mlp_dim"], hidden_act="gelu_python",
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02,
                layer_norm_eps=float(cfg.ln_eps), qkv_bias=cfg.qkv_bias == "qkv",
                num_spatial_layers=d["spatial_depth"], num_temporal_layers=d["temporal_depth"],
                attn_logit_softcapping=float(cfg.attn_logit_cap), num_auxiliary_layers=int(cfg.num_auxiliary_layers),
                apply_l2norm=bool(cfg.l2_normalize))


def hf_config(cfg) -> dict:
    """config.json's model fields of a vidjax VideoPrism config; the inverse of `from_hf`'s reading."""
    vision = _vision_config(cfg)
    if cfg.head != "clip":
        return vision
    d = videoprism.dims(cfg)
    text = dict(model_type="videoprism_text_model", vocab_size=int(cfg.vocab_size), hidden_size=d["width"],
                intermediate_size=d["mlp_dim"], num_hidden_layers=d["text_depth"], num_attention_heads=d["num_heads"],
                max_position_embeddings=int(cfg.max_text_length), hidden_act="relu", layer_norm_eps=float(cfg.ln_eps),
                pad_token_id=0, bos_token_id=None, eos_token_id=None, attention_probs_dropout_prob=0.0,
                apply_l2norm=bool(cfg.l2_normalize), qkv_bias=cfg.qkv_bias == "qkv", hidden_dropout_prob=0.0,
                initializer_range=0.02, attn_logit_softcapping=float(cfg.attn_logit_cap))
    return dict(model_type="videoprism", vision_config=vision, text_config=text)


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax VideoPrism -> the transformers class of its head."""
    cfg = converted.model_config
    architecture = {head: arch for arch, head in HEADS.items()}[cfg.head]
    vision = "video_model.vision_model." if cfg.head == "clip" else "" if cfg.head == "none" else "vision_model."
    outer = "video_model." if cfg.head == "clip" else ""
    params = {key: value for key, value in converted.params.items() if key != LOGIT_SCALE}
    out = write_tensors(params, tensors(cfg, vision, outer), "VideoPrism")
    if cfg.head == "clip":
        out[f"text_model.{POSITION_IDS}"] = np.arange(int(cfg.max_text_length), dtype=np.int64)[None]
    # The video processor transformers gives a VideoPrism checkpoint (AutoVideoProcessor's for "videoprism"), with the
    # checkpoint's statistics: (0, 1) for the published towers, whose processor rescales to [0, 1] and does not
    # normalise; a tower trained at other statistics (ImageNet's, as the runlocal recipes) keeps them, and its clip
    # spec with them (`hf.preprocessor_config`).
    return HfCheckpoint(architecture, hf_config(cfg), out, processor=PROCESSOR)
