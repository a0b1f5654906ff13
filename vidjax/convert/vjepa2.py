"""Official V-JEPA 2 checkpoints (facebookresearch/vjepa2, Assran et al. 2025) -> `vidjax.models.vjepa2`.

The files are torch pickles in one of two layouts, both read here:
- a pre-training checkpoint, as app/vjepa/train.py's `save_checkpoint` writes it and as the released vitl.pt, vith.pt,
  vitg.pt and vitg-384.pt come: {"encoder", "predictor", "target_encoder", "opt", "epoch", ...}. Of its two encoders,
  `checkpoint_key` picks one: "target_encoder" (the EMA encoder, what the official evaluations read: `checkpoint_key:
  target_encoder` in configs/eval) or "encoder" (the online one, what torch.hub's `vjepa2_vit_*` load); by default
  the target encoder, or the encoder of a file that has no target encoder (the record's `layout` says which). The
  predictor comes with either: a model with head "none" whose forward takes context and target token indices. The
  action-conditioned predictor of V-JEPA 2-AC (vjepa2-ac-vitg.pt: `action_encoder`, `state_encoder`, ...) is no
  vidjax model: it is left out, and named in the conversion's record (`source.not_converted`) and summary;
- an encoder's bare state dict (`encoder.state_dict()`): head "none", no predictor.
Names lose DistributedDataParallel's `module.` and the multi-sequence wrappers' `backbone.`, as the official loaders
strip them. A sin-cos table a file keeps (`pos_embed`, `predictor_pos_embed`) is not read, as torch.hub's loader
ignores it: V-JEPA 2's blocks turn q and k by rotary positions instead (every official V-JEPA 2 builder sets
use_rope). A V-JEPA (1) file, whose model adds such tables instead of rotating, has the same names: it is read as
V-JEPA 2 all the same, which it is not.

The mapping: the encoder's `patch_embed.proj` Conv3d -> the tubelet embedding (a linear map of (t, h, w, c)-ordered
pixels), its `blocks.N` (`attn.qkv`, one Linear with rows (q|k|v, head, head_dim); `attn.proj`; `mlp.fc1/fc2`;
`norm1/2`) -> vidjax blocks, `norm` -> the final LayerNorm; the predictor's `predictor_embed`, `mask_tokens.K` (each
(1, 1, width)), `predictor_blocks.N`, `predictor_norm`, `predictor_proj` likewise. One table (`tensors`) lists them.

Sizes come from tensor shapes: width, tubelet and patch from `patch_embed.proj`, depth from the blocks, MLP width from
`mlp.fc1`, q/k/v biases from `attn.qkv.bias`; the predictor's width from `predictor_embed`, its depth and MLP from its
blocks, the mask tokens from their count. Head counts are in no tensor: the encoder's are V-JEPA 2's for its width
(ViT-L and ViT-H 16, ViT-g 22: `vit_giant_xformers`; the smaller ViT sizes of `vidjax.models.vjepa2.SIZES`) or
`num_heads`; the predictor's 12 at its published width 384, else `predictor_num_heads`. Fixed by the official
builders: LayerNorm eps 1e-6, exact GELU. No clip is recorded (rotary positions take any): the checkpoint is read as
the official Kinetics-400 evaluation reads clips (configs/eval/vitl/k400.yaml, evals/video_classification_frozen):
16 frames 4 apart, the short side resized to 256 x 256 / 224 = 292 px, a 256 px centre crop, ImageNet mean/std;
`num_frames` / `image_size` set others (vitg-384.pt: image_size 384).

Not converted (an error naming them): the SwiGLU MLP (`use_silu`: `mlp.fc3`), an image model's Conv2d patch
embedding, a predictor without mask tokens.
"""

from __future__ import annotations

import functools
import pathlib
import re
from typing import Any

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    Tensor,
    TensorSource,
    check_family,
    checkpoint_file,
    finalize,
    fused_attention,
    head_count,
    layer_norm,
    linear,
    read_checkpoint,
    read_tensors,
    size_tensor,
)
from vidjax.convert.hf_vjepa2 import encoder_rows, predictor_rows
from vidjax.models import vjepa2

CHECKPOINT_KEYS = ("target_encoder", "encoder")  # a pre-training checkpoint's encoders, the default first
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FRAMES, DEFAULT_IMAGE_SIZE, SAMPLING_RATE = 16, 256, 4  # configs/eval/vitl/k400.yaml's clips
LN_EPS = 1e-6  # partial(nn.LayerNorm, eps=1e-6) in every official builder
ENCODER_HEADS = {w: h for w, _, h in vjepa2.SIZES.values()}  # width -> heads: ViT-L and H 16, ViT-g 22, ...
PREDICTOR_HEADS = {384: 12}  # src/hub/backbones.py's predictor: predictor_embed_dim 384, num_heads 12
MODEL = "the official V-JEPA 2"  # what error messages call the model whose tensor shapes they expect
PREDICTOR = "predictor."  # where the predictor's tensors are kept in the source
_WRAPPERS = ("module.", "backbone.")  # DistributedDataParallel, MultiSeqWrapper / PredictorMultiSeqWrapper
_POSITION_TABLES = ("pos_embed", "predictor_pos_embed")  # sin-cos tables the rotary model does not read
_EXPECTED = ("an official V-JEPA 2 checkpoint: a dict with 'target_encoder' and/or 'encoder' state dicts (and "
             "'predictor'), or an encoder's bare state dict, holding patch_embed.proj.weight and blocks.N.*")


def _shown(keys) -> str:
    keys = sorted(map(str, keys))
    return f"{keys[:12]}{' ...' if len(keys) > 12 else ''}"


def _unwrapped(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of a state dict, without the wrappers' prefixes."""
    out = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            name = str(name)
            while name.startswith(_WRAPPERS):
                name = name.split(".", 1)[1]
            out[name] = value
    return out


def read_vjepa2(path: str | pathlib.Path, checkpoint_key: str | None = None) -> tuple[TensorSource, str, str]:
    """(the tensors of the encoder, named under its entry's key and a dot ("" for a bare state dict), and the
    predictor's under `PREDICTOR`; that prefix; the layout in words) of an official file (the module docstring)."""
    path = checkpoint_file(path, "--from_vjepa2")
    if checkpoint_key is not None and checkpoint_key not in CHECKPOINT_KEYS:
        raise ConversionError(f"checkpoint_key={checkpoint_key!r}; a V-JEPA 2 pre-training checkpoint holds "
                              f"{' and '.join(CHECKPOINT_KEYS)}: give one of them.")
    obj = read_checkpoint(path)
    check_family(obj, "vjepa2", path)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict; --from_vjepa2 takes "
                              f"{_EXPECTED}.")
    entries = [key for key in CHECKPOINT_KEYS if isinstance(obj.get(key), dict)]
    if entries:
        key = checkpoint_key or entries[0]
        if key not in entries:
            raise ConversionError(f"{path} has no {key!r} state dict (its entries: {_shown(obj)}); "
                                  f"--checkpoint_key={entries[0]} converts the encoder it has.")
        prefix, layout = f"{key}.", f"pre-training checkpoint ({key})"
        if key == "encoder" and checkpoint_key is None:
            layout = "pre-training checkpoint (encoder: the file has no target_encoder)"
        tensors = {prefix + name: value for name, value in _unwrapped(obj[key]).items()}
        if isinstance(obj.get("predictor"), dict):
            tensors.update({PREDICTOR + name: value for name, value in _unwrapped(obj["predictor"]).items()})
    else:
        if checkpoint_key is not None:
            raise ConversionError(f"{path} is a bare state dict, with no {' or '.join(CHECKPOINT_KEYS)} entries to "
                                  f"choose from; convert it without checkpoint_key.")
        prefix, layout, tensors = "", "state dict", _unwrapped(obj)
    if f"{prefix}patch_embed.proj.weight" not in tensors:
        found = f"its {prefix[:-1]!r} entry has {_shown(obj[prefix[:-1]])}" if prefix else f"its keys are {_shown(obj)}"
        raise ConversionError(f"{path} is not an official V-JEPA 2 checkpoint: it has no patch_embed.proj.weight; "
                              f"{found}; expected {_EXPECTED}.")
    return TensorSource(tensors, str(path)), prefix, layout


def _block(dim: int, heads: int, mlp: int, qkv_bias: bool) -> list[Tensor]:
    """One official `Block` (src/models/utils/modules.py, RoPEAttention) <-> a vidjax Block."""
    return (fused_attention("attn", "attn", dim, heads, bias=qkv_bias) + linear("mlp/fc1", "mlp.fc1", dim, mlp)
            + linear("mlp/fc2", "mlp.fc2", mlp, dim) + layer_norm("norm1", "norm1", dim)
            + layer_norm("norm2", "norm2", dim))


def tensors(cfg, encoder: str = "", predictor: str = PREDICTOR) -> list[Tensor]:
    """The table of an official V-JEPA 2 with vidjax config `cfg` (`hf_vjepa2`'s parts under the official names):
    the encoder's tensors under `encoder`, the predictor's (when `cfg.predictor`) under `predictor`."""
    block = functools.partial(_block, qkv_bias=cfg.qkv_bias == "qkv")
    rows = encoder_rows(cfg, block, f"{encoder}patch_embed.proj", f"{encoder}blocks.{{}}.", f"{encoder}norm")
    if cfg.predictor:
        p, pw = predictor, cfg.predictor_width
        mask_tokens = Tensor("predictor/mask_tokens", tuple(f"{p}mask_tokens.{k}" for k in range(cfg.num_mask_tokens)),
                             (1, 1, pw), part=(pw,))
        rows += predictor_rows(cfg, block, f"{p}predictor_embed", mask_tokens, f"{p}predictor_blocks.{{}}.",
                               f"{p}predictor_norm", f"{p}predictor_proj")
    return rows


def _mask_tokens(src: TensorSource) -> int:
    """How many mask tokens the predictor has (`mask_tokens.0` .. `mask_tokens.K-1`)."""
    pattern = re.compile(re.escape(PREDICTOR) + r"mask_tokens\.(\d+)")
    ids = sorted(int(m.group(1)) for n in src.names() if (m := pattern.fullmatch(n)))
    if not ids:
        raise ConversionError(f"{src.origin} has a predictor without mask tokens (use_mask_tokens=False), which "
                              f"V-JEPA 2's predictor always has; convert the encoder alone (its bare state dict).")
    if ids != list(range(len(ids))):
        raise ConversionError(f"{src.origin}: expected the predictor's mask_tokens.0 .. mask_tokens.K-1; found "
                              f"mask_tokens {ids}.")
    return len(ids)


def _predictor_config(src: TensorSource, width: int, qkv_bias: bool, predictor_num_heads: int | None
                      ) -> dict[str, Any]:
    """The predictor's fields of the vidjax config, from its tensors' shapes; the head count from `PREDICTOR_HEADS`
    or `predictor_num_heads`."""
    p = PREDICTOR
    pw = size_tensor(src, f"{p}predictor_embed.weight", 2, f"(predictor_width, {width})", MODEL, _EXPECTED)[0]
    if src.has(f"{p}predictor_blocks.0.mlp.fc3.weight"):
        raise ConversionError(f"{src.origin}'s predictor has a SwiGLU MLP ({p}predictor_blocks.0.mlp.fc3: use_silu), "
                              f"which vidjax's V-JEPA 2 does not implement (it has the published GELU MLP).")
    if src.has(f"{p}predictor_blocks.0.attn.qkv.bias") != qkv_bias:
        raise ConversionError(f"{src.origin}: the encoder's attention has {'' if qkv_bias else 'no '}q/k/v biases "
                              f"and the predictor's {'none' if qkv_bias else 'has them'}; vidjax's V-JEPA 2 has one "
                              f"qkv_bias for both, as every official builder.")
    mlp = size_tensor(src, f"{p}predictor_blocks.0.mlp.fc1.weight", 2, f"(mlp_dim, {pw})", MODEL, _EXPECTED)[0]
    heads = head_count(pw, predictor_num_heads, PREDICTOR_HEADS, src.origin, flag="predictor_num_heads",
                       part="predictor")
    depth = src.stack_depth(p, "predictor_blocks", "norm1.weight")
    return dict(predictor=True, predictor_width=pw, predictor_depth=depth, predictor_heads=heads,
                predictor_mlp_dim=mlp, num_mask_tokens=_mask_tokens(src))


def from_vjepa2(src: TensorSource, encoder: str = "", num_heads: int | None = None,
                predictor_num_heads: int | None = None, num_frames: int | None = None,
                image_size: int | None = None) -> Converted:
    """Maps an official V-JEPA 2's tensors (the encoder's under `encoder`, the predictor's, if any, under
    `PREDICTOR`; see `read_vjepa2`) onto `vidjax.models.vjepa2`."""
    name = f"{encoder}patch_embed.proj.weight"
    conv = size_tensor(src, name, 5, "(width, 3, tubelet, patch, patch)", MODEL, _EXPECTED)
    width, tubelet, patch = conv[0], conv[2], conv[4]
    if conv[1] != 3 or conv[3] != patch:
        raise ConversionError(f"Tensor {name!r} in {src.origin} has shape {conv}; V-JEPA 2's tubelet embedding is a "
                              f"Conv3d (width, 3, tubelet, patch, patch).")
    if src.has(f"{encoder}blocks.0.mlp.fc3.weight"):
        raise ConversionError(f"{src.origin}'s encoder has a SwiGLU MLP ({encoder}blocks.0.mlp.fc3: use_silu), "
                              f"which vidjax's V-JEPA 2 does not implement (it has the published GELU MLP).")
    depth = src.stack_depth(encoder, "blocks", "norm1.weight")
    mlp = size_tensor(src, f"{encoder}blocks.0.mlp.fc1.weight", 2, f"(mlp_dim, {width})", MODEL, _EXPECTED)[0]
    heads = head_count(width, num_heads, ENCODER_HEADS, src.origin)
    qkv_bias = src.has(f"{encoder}blocks.0.attn.qkv.bias")
    frames, size = int(num_frames or DEFAULT_FRAMES), int(image_size or DEFAULT_IMAGE_SIZE)
    if frames % tubelet or size % patch:
        raise ConversionError(f"{frames} frames x {size} px does not tile into tubelets of {tubelet} frames and "
                              f"{patch} px patches.")
    size_name = next((n for n, dims in vjepa2.SIZES.items() if dims == (width, depth, heads)), "L")
    cfg = vjepa2.default_config()
    cfg.update(dict(variant=f"{size_name}/{patch}", width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
                    num_frames=frames, image_size=size, tubelet_size=tubelet, head="none", predictor=False,
                    qkv_bias="qkv" if qkv_bias else "none", ln_eps=LN_EPS, pixel_mean=IMAGENET_MEAN,
                    pixel_std=IMAGENET_STD))
    action_conditioned = src.subset(PREDICTOR).names() if any(
        n.startswith(f"{PREDICTOR}action_encoder.") for n in src.names()) else []
    if any(n.startswith(PREDICTOR) for n in src.names()) and not action_conditioned:
        cfg.update(_predictor_config(src, width, qkv_bias, predictor_num_heads))
    elif predictor_num_heads:
        raise ConversionError(f"predictor_num_heads applies to a checkpoint with V-JEPA 2's predictor; "
                              f"{src.origin} has {'an action-conditioned one' if action_conditioned else 'none'}.")
    for table in _POSITION_TABLES:  # deliberately not read (the module docstring)
        for prefix in (encoder, PREDICTOR):
            if src.has(prefix + table):
                src.mark_used(prefix + table)
    for name in action_conditioned:
        src.mark_used(PREDICTOR + name)  # named in the record (`convert_vjepa2_file`), not warned about
    params = read_tensors(src, tensors(cfg, encoder))
    preprocessing = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_frames": frames,
                     "image_size": size, "short_side": int(size * 256 / 224), "sampling_rate": SAMPLING_RATE}
    converted = Converted("vjepa2", cfg, params, preprocessing=preprocessing)
    if action_conditioned:
        converted.source["not_converted"] = {
            "what": "V-JEPA 2-AC's action-conditioned predictor, which vidjax does not implement",
            "tensors": [PREDICTOR + n for n in action_conditioned]}
    return converted


def convert_vjepa2_file(path: str | pathlib.Path, num_heads: int | None = None,
                        predictor_num_heads: int | None = None, num_frames: int | None = None,
                        image_size: int | None = None, checkpoint_key: str | None = None) -> Converted:
    """Reads an official V-JEPA 2 file in either layout and converts the encoder `checkpoint_key` names (see the
    module docstring) and the predictor."""
    src, encoder, layout = read_vjepa2(path, checkpoint_key)
    converted = from_vjepa2(src, encoder, num_heads, predictor_num_heads, num_frames, image_size)
    return finalize(converted, src, format="vjepa2", layout=layout, **converted.source)
