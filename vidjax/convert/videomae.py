"""Official VideoMAE / VideoMAE V2 checkpoints (MCG-NJU/VideoMAE, OpenGVLab/VideoMAEv2) -> `vidjax.models.videomae`.

The official files are torch pickles saved by the official scripts: `{"model": state_dict, "optimizer": ...,
"epoch": ..., "args": ...}` (`utils.save_model`), `{"module": state_dict}` (DeepSpeed), or a bare state dict (the
released distilled students). Names are those of `models/modeling_pretrain.py` / `modeling_finetune.py`; this reads
them as `run_class_finetuning.py` does (model key "model" then "module", `_orig_mod.` dropped, then `backbone.` /
`encoder.` dropped for a fine-tuning layout; `module.` of DistributedDataParallel dropped too). Three layouts:

- pre-training (`PretrainVisionTransformer`: `encoder.*`, `decoder.*`, `encoder_to_decoder`, `mask_token`) ->
  head "pretrain", the decoder width and depth from its tensors;
- fine-tuned (`VisionTransformer`: `fc_norm` for mean pooling, else `norm` on the first token; `head`) -> head
  "classification", `use_mean_pooling` from whether `fc_norm` exists. The K710 fine-tuned models and the distilled
  students (`vit_s_k710_dl_from_giant.pth`, `vit_b_k710_dl_from_giant.pth`: fine-tuning-layout state dicts with 710
  outputs) are this layout;
- a backbone without a head -> head "none".

The tensors are renamed to the Hugging Face port's names (the fused `qkv` split into query / key / value, as
transformers' `convert_videomae_to_pytorch.py` does) and mapped by `hf_videomae.from_hf`, the one VideoMAE mapping.

Sizes from tensor shapes: width, patch and tubelet from the `patch_embed.proj` Conv3d, depth from the blocks, MLP
width from `mlp.fc1`, decoder width / depth / MLP from its blocks. Frames and image size are in no tensor (the
position table is fixed sin-cos and not saved): they default to the official 16 x 224 and are set with `num_frames`
/ `image_size`; a file that holds a (sin-cos) `pos_embed` gives its token count, read as frames at 224 px, else as
the resolution at 16 frames. Head counts are in no tensor either: the encoder's from the
ViT size table (S 6, B 12, L and H 16, g 16) or `num_heads`; the decoder's from the official builders (192 -> 3,
384 -> 6, 512 -> 8, V1-H's 640 -> 8) or `decoder_num_heads`. Fixed by the official code: q and v biases, no k bias,
LayerNorm eps 1e-6 everywhere, exact GELU. Inputs as the official recipes: ImageNet mean/std, 16 frames at sampling
rate 4. A head of 400 / 600 / 700 / 710 outputs is named as that Kinetics label space (`vidjax.data.kinetics`),
whose class names the checkpoint gets; the label space is recorded in vidjax.json (`source.label_space`).

Not converted (an error naming them): V2's `cos_attn` (a per-head `attn.scale` tensor), layer scale
(`gamma_1` / `gamma_2`, `init_values > 0`) and a learned position table that is not the sin-cos one.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    TensorSource,
    check_family,
    check_finite,
    checkpoint_file,
    finalize,
    head_count,
    read_checkpoint,
    size_tensor,
)
from vidjax.convert.hf_videomae import from_hf
from vidjax.data import kinetics
from vidjax.models import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLING_RATE = 4  # --sampling_rate of the official Kinetics pre-training and fine-tuning scripts
DEFAULT_FRAMES, DEFAULT_IMAGE_SIZE = 16, 224
LN_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) in every official model builder
# Decoder heads per decoder width in the official pre-training builders (V1 ViT-H: 640 / 8).
DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}
_EXTRA_HEADS = {1408: 16}  # ViT-g (modeling_finetune.vit_giant_patch14_224), if the size table lacks it

_EXPECTED = ("an official VideoMAE / VideoMAE V2 checkpoint: a dict with 'model' or 'module' (or a bare state "
             "dict) holding patch_embed.proj.weight and blocks.N.* (fine-tuned: fc_norm or norm, head) or "
             "encoder.patch_embed.proj.weight, encoder.blocks.N.*, decoder.blocks.N.*, encoder_to_decoder.weight "
             "and mask_token (pre-training)")


def _shown(keys) -> str:
    keys = sorted(map(str, keys))
    return f"{keys[:12]}{' ...' if len(keys) > 12 else ''}"


def _tensor_names(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, np.ndarray):
        return [prefix[:-1]]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _tensor_names(v, f"{prefix}{k}.")]
    return []


def read_videomae(path: str | pathlib.Path) -> tuple[TensorSource, str]:
    """The model's tensors of an official file, prefixes removed as the official fine-tuning script does, and the
    file's layout ("'model' entry", "'module' entry" or "state dict")."""
    path = checkpoint_file(path, "--from_videomae")
    obj = read_checkpoint(path)
    check_family(obj, "videomae", path)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict; --from_videomae takes "
                              f"{_EXPECTED}.")
    state, layout = obj, "state dict"
    for key in ("model", "module"):  # run_class_finetuning.py's default --model_key model|module
        if isinstance(obj.get(key), dict):
            state, layout = obj[key], f"'{key}' entry"
            break
    tensors = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            name = str(name).removeprefix("_orig_mod.").removeprefix("module.")
            tensors[name] = value
    if not any(n.startswith("decoder.") for n in tensors):  # a fine-tuning layout: drop backbone. / encoder.
        tensors = {n.removeprefix("backbone.").removeprefix("encoder.") if n.startswith(("backbone.", "encoder."))
                   else n: v for n, v in tensors.items()}
    enc = "encoder." if any(n.startswith("decoder.") for n in tensors) else ""
    if f"{enc}patch_embed.proj.weight" not in tensors:
        found = f"its keys are {_shown(obj)}" if layout == "state dict" else f"its {layout} has {_shown(state)}"
        nested = _tensor_names(obj)
        raise ConversionError(f"{path} is not an official VideoMAE checkpoint: it has no {enc}patch_embed.proj.weight;"
                              f" {found} (tensors: {_shown(nested) if nested else 'none'}); expected {_EXPECTED}.")
    return TensorSource(tensors, str(path)), layout


def _shape(src: TensorSource, name: str, ndim: int, expected: str) -> tuple[int, ...]:
    return size_tensor(src, name, ndim, expected, "the official VideoMAE", _EXPECTED)


def _encoder_heads(width: int, num_heads: int | None, origin: str) -> int:
    return head_count(width, num_heads, {**_EXTRA_HEADS, **{w: h for w, _, h in layers.VIT_SIZES.values()}}, origin)


def _decoder_heads(width: int, decoder_num_heads: int | None, origin: str) -> int:
    return head_count(width, decoder_num_heads, DECODER_HEADS, origin, flag="decoder_num_heads", part="decoder")


def _reject_unsupported(src: TensorSource) -> None:
    names = src.names()
    cos = [n for n in names if n.endswith("attn.scale")]
    if cos:
        raise ConversionError(f"{src.origin} was trained with VideoMAE V2's cos_attn (cosine attention with a "
                              f"learned per-head temperature: {cos[0]}, ...), which vidjax's attention does not "
                              f"implement; only checkpoints with the standard scaled dot-product attention convert.")
    gammas = [n for n in names if re.search(r"\.gamma_[12]$", n)]
    if gammas:
        raise ConversionError(f"{src.origin} has layer-scale tensors ({gammas[0]}, ...: a model built with "
                              f"init_values > 0), which no released VideoMAE uses and vidjax's blocks do not "
                              f"implement.")
    biases = [n for n in names if n.endswith("attn.qkv.bias")]
    if biases:
        raise ConversionError(f"{src.origin} has {biases[0]}: the official attention's qkv Linear has no bias (q "
                              f"and v biases are q_bias / v_bias); is this a VideoMAE checkpoint?")


def _grid(src: TensorSource, pos_name: str, width: int, tubelet: int, patch: int, num_frames: int | None,
          image_size: int | None) -> tuple[int, int]:
    """(frames, image size): from a saved `pos_embed` (checked to be the sin-cos table), else the arguments or
    the official 16 x 224."""
    frames, size = num_frames or DEFAULT_FRAMES, image_size or DEFAULT_IMAGE_SIZE
    if src.has(pos_name):
        table = np.asarray(src.tensors[pos_name], np.float32).reshape(-1, width)
        check_finite({pos_name: table}, src.origin)  # before it is told from a learned table by its values
        if not np.allclose(table, layers.sincos_table(table.shape[0], width), atol=1e-5):
            raise ConversionError(f"{src.origin} has a learned position table {pos_name!r} (use_learnable_pos_emb"
                                  f"=True), which vidjax's VideoMAE does not implement (it uses the fixed sin-cos "
                                  f"table).")
        src.mark_used(pos_name)
        if not (num_frames or image_size):  # the token count: frames at 224 px, else the side at 16 frames
            tokens, per_frame = table.shape[0], (DEFAULT_IMAGE_SIZE // patch) ** 2
            side = int(round((tokens / (DEFAULT_FRAMES // tubelet)) ** 0.5))
            if tokens % per_frame == 0:
                frames = tokens // per_frame * tubelet
            elif side * side * (DEFAULT_FRAMES // tubelet) == tokens:
                size = side * patch
            else:
                raise ConversionError(f"{src.origin}: its position table has {tokens} rows, which is neither a "
                                      f"whole number of {DEFAULT_IMAGE_SIZE} px frames nor {DEFAULT_FRAMES} frames "
                                      f"of square grids; pass num_frames and image_size.")
    if frames % tubelet or size % patch:
        raise ConversionError(f"{frames} frames x {size} px does not tile into tubelets of {tubelet} frames and "
                              f"{patch} px patches.")
    return frames, size


def _block_names(src_prefix: str, dst_prefix: str) -> dict[str, str]:
    """Hugging Face VideoMAELayer name -> official Block name, for every tensor of one block (query, key and value
    are the three row blocks of the official fused qkv)."""
    a = f"{dst_prefix}attention.attention."
    names = {f"{a}{part}.weight": f"{src_prefix}attn.qkv.weight" for part in ("query", "key", "value")}
    names.update({f"{a}q_bias": f"{src_prefix}attn.q_bias", f"{a}v_bias": f"{src_prefix}attn.v_bias"})
    for official, hf in (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
                         ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
        for suffix in ("weight", "bias"):
            names[f"{dst_prefix}{hf}.{suffix}"] = f"{src_prefix}{official}.{suffix}"
    return names


def _split_qkv(src: TensorSource, name: str, width: int) -> np.ndarray:
    qkv = src.tensors[name]
    if qkv.shape != (3 * width, width):
        raise ConversionError(f"Tensor {name!r} in {src.origin} has shape {tuple(qkv.shape)}; the official "
                              f"attention's fused qkv is ({3 * width}, {width}) at width {width}.")
    return qkv.reshape(3, width, width)


def from_videomae(src: TensorSource, num_heads: int | None = None, decoder_num_heads: int | None = None,
                  num_frames: int | None = None, image_size: int | None = None) -> Converted:
    """Maps an official VideoMAE / V2 model's tensors (prefixes already removed, see `read_videomae`) onto
    `vidjax.models.videomae`; `source["kind"]` / `["label_space"]` say what it is."""
    _reject_unsupported(src)
    pretrain = any(n.startswith("decoder.") for n in src.names())
    enc = "encoder." if pretrain else ""
    hf = _encoder_config(src, enc, num_heads, num_frames, image_size)
    if decoder_num_heads and not pretrain:
        raise ConversionError(f"decoder_num_heads applies to pre-training checkpoints only; {src.origin} has no "
                              f"decoder.")
    architecture, kind, label_space = _head_config(src, hf, pretrain, decoder_num_heads)
    names = _official_names(enc, hf["num_hidden_layers"], hf.get("decoder_num_hidden_layers", 0))
    converted = _convert_renamed(src, hf, names, architecture)
    _set_official_settings(converted, hf, label_space)
    converted.source = {"kind": kind, "label_space": label_space}
    return converted


def _encoder_config(src: TensorSource, enc: str, num_heads: int | None, num_frames: int | None,
                    image_size: int | None) -> dict[str, Any]:
    """The Hugging Face config fields of the encoder, whose tensors are under `enc`: its sizes from their shapes,
    the head count from the size table or `num_heads`, the clip from `_grid`."""
    conv = _shape(src, f"{enc}patch_embed.proj.weight", 5, "(width, 3, tubelet, patch, patch)")
    width, tubelet, patch = conv[0], conv[2], conv[4]
    if conv[1] != 3 or conv[3] != patch:
        raise ConversionError(f"Tensor '{enc}patch_embed.proj.weight' in {src.origin} has shape {conv}; the "
                              f"official tubelet embedding is a Conv3d (width, 3, tubelet, patch, patch).")
    if not src.has(f"{enc}blocks.0.attn.qkv.weight"):
        raise ConversionError(f"{src.origin} has {enc}patch_embed.proj.weight but no {enc}blocks.0.attn.qkv.weight: it "
                              f"is not an official VideoMAE checkpoint (its tensors are {_shown(src.names())}); "
                              f"expected {_EXPECTED}.")
    depth = src.stack_depth(enc, "blocks", "norm1.weight")
    mlp = _shape(src, f"{enc}blocks.0.mlp.fc1.weight", 2, f"(mlp_dim, {width})")[0]
    heads = _encoder_heads(width, num_heads, src.origin)
    qv_bias = src.has(f"{enc}blocks.0.attn.q_bias")
    frames, size = _grid(src, f"{enc}pos_embed", width, tubelet, patch, num_frames, image_size)
    return dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp,
                patch_size=patch, tubelet_size=tubelet, qv_bias=qv_bias, num_frames=frames, image_size=size,
                layer_norm_eps=LN_EPS, norm_pix_loss=True)


def _head_config(src: TensorSource, hf: dict[str, Any], pretrain: bool,
                 decoder_num_heads: int | None) -> tuple[str, str, str | None]:
    """(Hugging Face architecture, the checkpoint's kind, its Kinetics label space or None) from what the encoder
    leads to: a decoder, a classification head or nothing; `hf` completed with their fields."""
    if pretrain:
        hf["use_mean_pooling"] = False
        hf.update(_decoder_config(src, decoder_num_heads))
        return "VideoMAEForPreTraining", "pre-training", None
    if src.has("head.weight"):
        hf["use_mean_pooling"] = src.has("fc_norm.weight")
        if not hf["use_mean_pooling"] and not src.has("norm.weight"):
            raise ConversionError(f"{src.origin} has a head but neither fc_norm (mean pooling) nor norm (first "
                                  f"token): the official VisionTransformer has one of them.")
        hf["num_labels"] = _shape(src, "head.weight", 2, f"(classes, {hf['hidden_size']})")[0]
        return "VideoMAEForVideoClassification", "fine-tuned", kinetics.space_for(hf["num_labels"])
    hf["use_mean_pooling"] = not src.has("norm.weight")
    return "VideoMAEModel", "backbone", None


def _decoder_config(src: TensorSource, decoder_num_heads: int | None) -> dict[str, Any]:
    """The Hugging Face config fields of a pre-training decoder, from its tensors' shapes; the head count from
    the official builders or `decoder_num_heads`."""
    width = _shape(src, "decoder.norm.weight", 1, "(decoder_width,)")[0]
    depth = src.stack_depth("decoder.", "blocks", "norm1.weight")
    heads = _decoder_heads(width, decoder_num_heads, src.origin)
    mlp = _shape(src, "decoder.blocks.0.mlp.fc1.weight", 2, f"(mlp_dim, {width})")[0]
    return dict(decoder_hidden_size=width, decoder_num_hidden_layers=depth, decoder_num_attention_heads=heads,
                decoder_intermediate_size=mlp)


def _official_names(enc: str, depth: int, decoder_depth: int) -> dict[str, str]:
    """Hugging Face name -> official name, for every tensor the model may have, the encoder's under `enc`."""
    names = {"encoder_to_decoder.weight": "encoder_to_decoder.weight", "mask_token": "mask_token"}
    direct = {f"{enc}patch_embed.proj": "embeddings.patch_embeddings.projection", f"{enc}norm": "layernorm",
              "fc_norm": "fc_norm", "head": "classifier", "decoder.norm": "decoder.norm",
              "decoder.head": "decoder.head"}
    for official, hf in direct.items():
        names.update({f"{hf}.{suffix}": f"{official}.{suffix}" for suffix in ("weight", "bias")})
    for i in range(depth):
        names.update(_block_names(f"{enc}blocks.{i}.", f"encoder.layer.{i}."))
    for i in range(decoder_depth):
        names.update(_block_names(f"decoder.blocks.{i}.", f"decoder.decoder_layers.{i}."))
    return names


def _renamed_tensors(src: TensorSource, names: dict[str, str], hf: dict[str, Any]) -> dict[str, np.ndarray]:
    """The file's tensors under their Hugging Face `names`, query, key and value split from each fused qkv."""
    tensors = {}
    for hf_name, official in names.items():
        if not official.endswith("attn.qkv.weight"):
            if src.has(official):
                tensors[hf_name] = src.tensors[official]
            continue
        width = hf["decoder_hidden_size"] if official.startswith("decoder.") else hf["hidden_size"]
        if not src.has(official):
            raise ConversionError(f"{src.origin} is missing tensor {official!r} (expected shape "
                                  f"({3 * width}, {width})).")
        part = ("query", "key", "value").index(hf_name.rsplit(".", 2)[-2])
        tensors[hf_name] = _split_qkv(src, official, width)[part]
    return tensors


def _convert_renamed(src: TensorSource, hf: dict[str, Any], names: dict[str, str], architecture: str) -> Converted:
    """`from_hf` of the tensors under their Hugging Face `names`; its errors, and the tensors it used, told in the
    file's own names."""
    named = TensorSource(_renamed_tensors(src, names, hf), src.origin)
    try:
        converted = from_hf(hf, named, architecture)
    except ConversionError as e:  # the message names the Hugging Face names: give the file's own
        message = str(e)
        for hf_name, official in names.items():
            message = message.replace(f"'{hf_name}'", f"'{official}'")
        raise ConversionError(message) from e
    for name in named.used:
        src.mark_used(names[name])
    return converted


def _set_official_settings(converted: Converted, hf: dict[str, Any], label_space: str | None) -> None:
    """What the official code fixes and no tensor holds: the ViT size's name, LayerNorm eps, head init scale and
    the recipes' preprocessing; the class names of a Kinetics head."""
    dims = (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"])
    size_name = next((n for n, sizes in layers.VIT_SIZES.items() if sizes == dims), None)
    if size_name is None:
        size_name = "g" if "g" in layers.VIT_SIZES and dims[0] == 1408 else "B"
    converted.model_config.update(dict(
        variant=f"{size_name}/{hf['patch_size']}", ln_eps=LN_EPS, fc_norm_eps=LN_EPS, decoder_norm_eps=LN_EPS,
        head_init_scale=0.001, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD))
    if label_space:
        converted.class_names = list(kinetics.class_names(label_space))
    converted.preprocessing = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_frames": hf["num_frames"],
                               "image_size": hf["image_size"], "sampling_rate": SAMPLING_RATE}


def convert_videomae_file(path: str | pathlib.Path, num_heads: int | None = None,
                          decoder_num_heads: int | None = None, num_frames: int | None = None,
                          image_size: int | None = None) -> Converted:
    """Reads an official VideoMAE / V2 file in any of its layouts and converts it (see the module docstring)."""
    src, layout = read_videomae(path)
    converted = from_videomae(src, num_heads, decoder_num_heads, num_frames, image_size)
    return finalize(converted, src, format="videomae", layout=layout, **converted.source)
