"""Official VideoPrism checkpoints (google-deepmind/videoprism, Zhao et al. 2024) -> `vidjax.models.videoprism`.

The released files are .npz archives (`flax_base_f16r288_repeated.npz`, `flax_large_f8r288_repeated.npz`,
`flax_lvt_base_f16r288_repeated.npz`, `flax_lvt_large_f8r288_repeated.npz` on the Hub) of the Flax variables
`vpp.load_pretrained_weights` restores: `utils.load_checkpoint` splits each array's name at '/' into the nested
{"params": ...} tree that `vpp.get_model(name).apply` takes. Two models are released:
- the video encoder (`encoders.FactorizedEncoder`; videoprism_public_v1_base / _large) -> head "none", its
  `params/patch_projection`, `spatial_pos_emb`, `spatial_encoder`, `spatial_ln`, `temporal_pos_emb`,
  `temporal_encoder` and `temporal_ln`;
- the video-text LvT model (`encoders.FactorizedVideoCLIP`; videoprism_lvt_public_v1_base / _large) -> head "clip":
  that encoder under `params/vision_encoder/`, then `auxiliary_encoder`, `contrastive_vision_pooler` and the text
  tower `text_encoder` (`token_emb`, `cls_emb`, `unimodal_transformer`, `unimodal_ln`).
Every transformer stack is built with scan=True ("repeated"): one `x_layers` whose arrays carry the layers on a
leading axis, read here layer by layer.

The mapping (Praxis-style layers, `videoprism/layers.py`): a block's `layer_norm` and `ff_layer/layer_norm` -> norm1
and norm2 (LayerNorm scales are stored as gamma - 1, as vidjax's are: `scale_offset`), `self_attention/{query,key,
value}` (w (D, heads, head_dim), b (heads, head_dim)) -> the fused qkv and qkv_b, `self_attention/post` (w (D, heads,
head_dim), b (D,)) -> proj, `ff_layer/ffn_layer{1,2}/linear` -> mlp/fc1 and fc2; the patch projection (a Dense over
(h, w, c)-ordered patch pixels, as vidjax's) and the position tables as they are; the pooler's `pooling_attention`
(the same projections, `per_dim_scale`) and its `pooling_attention_query` (1, D) and `pooling_attention_layer_norm`.
One table (`tensors`) lists them.

Sizes come from tensor shapes: the width and patch from the patch projection, the clip (frames, patches per side)
from the position tables, heads and head width from the attention projections, depths from the stacked arrays'
leading axes, the MLP width from ffn_layer1, the vocabulary from token_emb. Fixed by the official builders (`models.py`
CONFIGS), not stored: attention logits capped at 50, LayerNorm eps 1e-6, exact GELU (ReLU in the text tower), inputs
in [0, 1]. The text tower's sin | cos table is no array of the file: the official `PositionalEmbedding` computes it
(timescales 1 .. 10^4 spaced over num_timescales - 1 steps, which differs slightly from transformers' table), here
for `models.TEXT_MAX_LEN` = 64 tokens, and kept as the frozen parameter `text/position_table`. No temperature is
released: the clip model's learned `logit_scale` starts at config.model.temperature_init. The files carry no
tokenizer (the official code reads T5's c4_en SentencePiece model from Google Cloud Storage).

Every array of the file must be read: a missing or unexpected name, or a shape the model's other arrays contradict,
is a ConversionError naming it. Not converted: the video classifier (`FactorizedVideoClassifier`; no weights are
released, and its pooler is width-D where vidjax's is config.model.mlp_dim wide), files saved with scan=False, and the
giant LvT's primer_hybrid norms.
"""

from __future__ import annotations

import math
import pathlib
import re

import ml_collections
import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    Tensor,
    TensorSource,
    check_family,
    checkpoint_file,
    finalize,
    read_checkpoint,
    read_tensors,
)
from vidjax.convert.hf_videoprism import LOGIT_SCALE
from vidjax.models import videoprism

LN_EPS = 1e-6  # layers.LayerNorm's epsilon
ATTN_LOGIT_CAP = 50.0  # every official config's atten_logit_cap
TEXT_MAX_LEN = 64  # models.TEXT_MAX_LEN
MODEL = "the official VideoPrism"
LVT = "vision_encoder/"  # where FactorizedVideoCLIP keeps its encoder
STACK = "transformers_stack/x_layers"  # VisionTransformer's StackedTransformer, scanned
TEXT_STACK = "text_encoder/unimodal_transformer/x_layers"
_LAYER = "[{}]"  # marks a stacked array's layer in the names `_unstacked` gives (never a name in a file)
_EXPECTED = ("an official VideoPrism checkpoint: the .npz that videoprism's load_pretrained_weights reads, with "
             "params/patch_projection/linear/kernel (the video encoder) or params/vision_encoder/... (LvT)")


def _block(dim: int, heads: int, hd: int, mlp: int) -> list[Tensor]:
    """One official `Transformer` layer (names after its `x_layers`) <-> a vidjax `videoprism.Block`."""
    a = "self_attention/"
    return [Tensor("attn/qkv", tuple(f"{a}{n}/w" for n in ("query", "key", "value")), (dim, heads, hd), axis=1),
            Tensor("attn/qkv_b", tuple(f"{a}{n}/b" for n in ("query", "key", "value")), (heads, hd)),
            Tensor("attn/proj", (f"{a}post/w",), (dim, heads, hd), perm=(1, 2, 0)),
            Tensor("attn/proj_bias", (f"{a}post/b",), (dim,)),
            Tensor("mlp/fc1/kernel", ("ff_layer/ffn_layer1/linear/kernel",), (dim, mlp)),
            Tensor("mlp/fc1/bias", ("ff_layer/ffn_layer1/linear/bias",), (mlp,)),
            Tensor("mlp/fc2/kernel", ("ff_layer/ffn_layer2/linear/kernel",), (mlp, dim)),
            Tensor("mlp/fc2/bias", ("ff_layer/ffn_layer2/linear/bias",), (dim,))
            ] + _norm("norm1", "layer_norm", dim) + _norm("norm2", "ff_layer/layer_norm", dim)


def _norm(vj: str, name: str, dim: int) -> list[Tensor]:
    """A Praxis LayerNorm `name` (scale = gamma - 1, bias) <-> a vidjax LayerNorm (scale_offset 1: the same)."""
    return [Tensor(f"{vj}/scale", (f"{name}/scale",), (dim,)), Tensor(f"{vj}/bias", (f"{name}/bias",), (dim,))]


def _stack(vj: str, stack: str, depth: int, cfg) -> list[Tensor]:
    """`depth` layers of the scanned stack `stack`: vidjax's `{vj}/blocks/i/` <-> layer i of `{stack}/...`."""
    d = videoprism.dims(cfg)
    one = _block(d["width"], d["num_heads"], d["width"] // d["num_heads"], d["mlp_dim"])
    return [Tensor(f"{vj}/blocks/{i}/{r.vj}", tuple(f"{stack}{_LAYER.format(i)}/{n}" for n in r.hf), r.shape, r.perm,
                   r.part, r.axis) for i in range(depth) for r in one]


def tensors(cfg: ml_collections.ConfigDict, root: str = "params/") -> list[Tensor]:
    """The table of an official VideoPrism with vidjax config `cfg` (head "none": the video encoder, "clip": LvT), its
    names under `root`; a stacked layer's names carry `[i]` after their stack's `x_layers`."""
    d = videoprism.dims(cfg)
    dim, patch, heads = d["width"], d["patch"], d["num_heads"]
    frames, side = videoprism.grid(cfg)
    v = f"{root}{LVT}" if cfg.head == "clip" else root
    rows = [Tensor("encoder/patch_embed/kernel", (f"{v}patch_projection/linear/kernel",), (patch * patch * 3, dim)),
            Tensor("encoder/patch_embed/bias", (f"{v}patch_projection/linear/bias",), (dim,)),
            Tensor("encoder/spatial_pos_embed", (f"{v}spatial_pos_emb/emb_var",), (side * side, dim)),
            Tensor("encoder/temporal_pos_embed", (f"{v}temporal_pos_emb/emb_var",), (frames, dim))]
    rows += _stack("encoder/spatial", f"{v}spatial_encoder/{STACK}", d["spatial_depth"], cfg)
    rows += _norm("encoder/spatial_norm", f"{v}spatial_ln", dim)
    rows += _stack("encoder/temporal", f"{v}temporal_encoder/{STACK}", d["temporal_depth"], cfg)
    rows += _norm("encoder/temporal_norm", f"{v}temporal_ln", dim)
    if cfg.head == "none":
        return rows
    if cfg.head != "clip":
        raise ConversionError(f"The official VideoPrism releases the video encoder and the LvT video-text model; "
                              f"vidjax's head {cfg.head!r} is neither.")
    if cfg.num_auxiliary_layers:
        rows += _stack("auxiliary", f"{root}auxiliary_encoder/{STACK}", cfg.num_auxiliary_layers, cfg)
    p = f"{root}contrastive_vision_pooler/"
    a = f"{p}pooling_attention/"
    hd = d["mlp_dim"] // heads
    rows += [Tensor("pooler/query", (f"{p}pooling_attention_query",), (1, dim), part=(dim,)),
             Tensor("pooler/q", (f"{a}query/w",), (dim, heads, hd)),
             Tensor("pooler/kv", (f"{a}key/w", f"{a}value/w"), (dim, heads, hd), axis=1),
             Tensor("pooler/q_bias", (f"{a}query/b",), (heads, hd)),
             Tensor("pooler/kv_bias", (f"{a}key/b", f"{a}value/b"), (heads, hd)),
             Tensor("pooler/per_dim_scale", (f"{a}per_dim_scale/per_dim_scale",), (hd,)),
             Tensor("pooler/proj", (f"{a}post/w",), (dim, heads, hd), perm=(1, 2, 0)),
             Tensor("pooler/proj_bias", (f"{a}post/b",), (dim,))]
    rows += _norm("pooler_norm", f"{p}pooling_attention_layer_norm", dim)
    t = f"{root}text_encoder/"
    rows += [Tensor("text/token_embed", (f"{t}token_emb/emb_var",), (cfg.vocab_size, dim)),
             Tensor("text/cls_token", (f"{t}cls_emb",), (1, 1, dim), part=(dim,))]
    rows += _stack("text/blocks", f"{root}{TEXT_STACK}", d["text_depth"], cfg)
    return rows + _norm("text/norm", f"{t}unimodal_ln", dim)


def position_table(length: int, dim: int) -> np.ndarray:
    """The official text tower's (length, dim) sin | cos table (`encoders.PositionalEmbedding`, timescales 1 ..
    10^4): sin(position x exp(-i log(10^4) / (dim / 2 - 1))) for i < dim / 2, then the cosines."""
    half = dim // 2
    increment = math.log(10_000.0) / max(half - 1, 1)
    angles = np.arange(length, dtype=np.float64)[:, None] * np.exp(-increment * np.arange(half, dtype=np.float64))
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(table, ((0, 0), (0, dim % 2))).astype(np.float32)


def _file_names(rows: list[Tensor]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(the arrays a file with this table holds, by name, with their shapes; the names of the stacked ones, whose
    shapes have the layer count in front)."""
    layer = re.compile(re.escape(_LAYER).replace(r"\{\}", r"(\d+)"))
    names: dict[str, tuple[int, ...]] = {}
    depths: dict[str, int] = {}
    for row in rows:
        for name in row.hf:
            m = layer.search(name)
            if m is None:
                names[name] = tuple(row.shape)
                continue
            stacked = name[:m.start()] + name[m.end():]
            depths[stacked] = max(depths.get(stacked, 0), int(m.group(1)) + 1)
            names[stacked] = tuple(row.shape)
    return {name: (depths[name], *shape) if name in depths else shape for name, shape in names.items()}, set(depths)


def _unstacked(arrays: dict[str, np.ndarray], stacked: set[str]) -> dict[str, np.ndarray]:
    """The file's arrays, each stacked one (a name in `stacked`) split into its layers, named as `tensors` names
    them."""
    out = {}
    for name, value in arrays.items():
        if name not in stacked:
            out[name] = value
            continue
        stack, rest = name.split("/x_layers/", 1)
        for i, layer in enumerate(value):
            out[f"{stack}/x_layers{_LAYER.format(i)}/{rest}"] = layer
    return out


def _shape(arrays: dict[str, np.ndarray], name: str, ndim: int, expected: str, origin: str) -> tuple[int, ...]:
    if name not in arrays:
        raise ConversionError(f"{origin} is missing array {name!r} (expected shape {expected}); expected "
                              f"{_EXPECTED}.")
    shape = tuple(int(s) for s in arrays[name].shape)
    if len(shape) != ndim:
        raise ConversionError(f"Array {name!r} in {origin} has shape {shape}; {MODEL} has shape {expected} there.")
    return shape


def _root(arrays: dict[str, np.ndarray], origin: str) -> tuple[str, bool]:
    """(where the model's variables start: "params/" as the released files have it, or "" for a file of the params
    tree alone; whether it is the LvT model)."""
    for root in ("params/", ""):
        for lvt in (False, True):
            if f"{root}{LVT if lvt else ''}patch_projection/linear/kernel" in arrays:
                return root, lvt
    shown = sorted(arrays)
    raise ConversionError(f"{origin} is not an official VideoPrism checkpoint: it has no params/patch_projection/"
                          f"linear/kernel or params/vision_encoder/patch_projection/linear/kernel (its arrays: "
                          f"{shown[:8]}{' ...' if len(shown) > 8 else ''}); expected {_EXPECTED}.")


def model_config(arrays: dict[str, np.ndarray], origin: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the vidjax config of an official VideoPrism's arrays, read from their shapes; the root of its names)."""
    root, lvt = _root(arrays, origin)
    v = f"{root}{LVT if lvt else ''}"
    kernel = _shape(arrays, f"{v}patch_projection/linear/kernel", 2, "(patch * patch * 3, width)", origin)
    width = kernel[1]
    patch = math.isqrt(kernel[0] // 3)
    if patch * patch * 3 != kernel[0]:
        raise ConversionError(f"{origin}: the patch projection takes {kernel[0]} values, not patch x patch x 3 of a "
                              f"square RGB patch.")
    spatial = _shape(arrays, f"{v}spatial_pos_emb/emb_var", 2, f"(patches, {width})", origin)[0]
    side = math.isqrt(spatial)
    if side * side != spatial:
        raise ConversionError(f"{origin}: the spatial position table has {spatial} rows, no square grid of patches.")
    frames = _shape(arrays, f"{v}temporal_pos_emb/emb_var", 2, f"(frames, {width})", origin)[0]
    s = f"{v}spatial_encoder/{STACK}/"
    query = _shape(arrays, f"{s}self_attention/query/w", 4, f"(layers, {width}, heads, head_dim)", origin)
    heads = query[2]
    if heads * query[3] != width:
        raise ConversionError(f"{origin}: the attention has {heads} heads of {query[3]}, which is not the width "
                              f"{width}; vidjax's VideoPrism splits the width into its heads.")
    mlp = _shape(arrays, f"{s}ff_layer/ffn_layer1/linear/kernel", 3, f"(layers, {width}, mlp_dim)", origin)[2]
    temporal = _shape(arrays, f"{v}temporal_encoder/{STACK}/layer_norm/scale", 2, f"(layers, {width})", origin)[0]
    cfg = videoprism.default_config()
    size = next((name for name, sizes in videoprism.SIZES.items()
                 if sizes[:5] == (width, query[0], temporal, heads, mlp)), "B")
    cfg.update(dict(variant=f"{size}/{patch}", width=width, spatial_depth=query[0], temporal_depth=temporal,
                    num_heads=heads, mlp_dim=mlp, num_frames=frames, image_size=side * patch,
                    head="clip" if lvt else "none", attn_logit_cap=ATTN_LOGIT_CAP, l2_normalize=True, qkv_bias="qkv",
                    ln_eps=LN_EPS))
    if lvt:
        aux = f"{root}auxiliary_encoder/{STACK}/layer_norm/scale"
        text = f"{root}{TEXT_STACK}/"
        pooler = f"{root}contrastive_vision_pooler/pooling_attention/query/w"
        pool = _shape(arrays, pooler, 3, f"({width}, heads, head_dim)", origin)
        text_mlp = _shape(arrays, f"{text}ff_layer/ffn_layer1/linear/kernel", 3, f"(layers, {width}, mlp_dim)",
                          origin)[2]
        for what, got in (("the pooler's width", pool[1] * pool[2]), ("the text tower's MLP width", text_mlp)):
            if got != mlp:
                raise ConversionError(f"{origin}: {what} is {got} and the video encoder's MLP width {mlp}; vidjax's "
                                      f"VideoPrism has one mlp_dim for all three (4 x width, as the LvT builders).")
        if pool[1] != heads:
            raise ConversionError(f"{origin}: the pooler has {pool[1]} heads and the encoder {heads}; vidjax's "
                                  f"VideoPrism has one head count for both, as the official builders.")
        cfg.update(dict(
            num_auxiliary_layers=_shape(arrays, aux, 2, f"(layers, {width})", origin)[0] if aux in arrays else 0,
            text_depth=_shape(arrays, f"{text}layer_norm/scale", 2, f"(layers, {width})", origin)[0],
            vocab_size=_shape(arrays, f"{root}text_encoder/token_emb/emb_var", 2, f"(vocabulary, {width})",
                              origin)[0],
            max_text_length=TEXT_MAX_LEN))
    return cfg, root


def _check_names(arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], origin: str) -> None:
    """Every array the model needs is in the file with its shape, and every array of the file is one of them."""
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing:
        raise ConversionError(f"{origin} is missing {len(missing)} array(s) that the model its other arrays describe "
                              f"has: {', '.join(f'{n!r} (shape {expected[n]})' for n in missing[:5])}"
                              f"{', ...' if len(missing) > 5 else ''}.")
    if unexpected:
        raise ConversionError(f"{origin} has {len(unexpected)} array(s) that {MODEL} of its shapes has no place for: "
                              f"{', '.join(repr(n) for n in unexpected[:5])}{', ...' if len(unexpected) > 5 else ''}"
                              f"; vidjax converts the video encoder and LvT checkpoints as released.")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ConversionError(f"Array {name!r} in {origin} has shape {tuple(arrays[name].shape)}, but the model "
                                  f"its other arrays describe expects {shape}.")


def from_videoprism(src: TensorSource) -> Converted:
    """Maps an official VideoPrism's arrays (named as its .npz names them) onto `vidjax.models.videoprism`; every
    array is read or the conversion fails naming it."""
    cfg, root = model_config(src.tensors, src.origin)
    rows = tensors(cfg, root)
    expected, stacked = _file_names(rows)
    _check_names(src.tensors, expected, src.origin)
    layers = TensorSource(_unstacked(src.tensors, stacked), src.origin)
    params = read_tensors(layers, rows)
    for name in expected:
        src.mark_used(name)
    if cfg.head == "clip":
        params["text/position_table"] = position_table(TEXT_MAX_LEN, cfg.width)
        # The released files keep no temperature: vidjax's learned one starts where training starts it.
        params[LOGIT_SCALE] = videoprism.initial_logit_scale(cfg)
    return Converted("videoprism", cfg, params, preprocessing={"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})


def convert_videoprism_file(path: str | pathlib.Path) -> Converted:
    """Reads an official VideoPrism .npz (see the module docstring) and converts it."""
    path = checkpoint_file(path, "--from_videoprism")
    obj = read_checkpoint(path)
    check_family(obj, "videoprism", path)
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError(f"{path} holds no named arrays; --from_videoprism takes {_EXPECTED}.")
    src = TensorSource(obj, str(path))
    converted = from_videoprism(src)
    layout = "video-text (LvT)" if converted.model_config.head == "clip" else "video encoder"
    return finalize(converted, src, format="videoprism", layout=layout)
