"""SVT checkpoints (kahnchana/svt, Ranasinghe et al., CVPR 2022) -> a `vidjax.models.timesformer` backbone.

SVT trains a TimeSformer (divided space-time, facebookresearch/TimeSformer's `VisionTransformer`) self-supervised,
DINO-style. Its files are torch pickles in one of two layouts, both read here:
- the released `kinetics400_vitb_ssl.pth`: one flat state dict, `backbone.*` (the TimeSformer) and `head.*` (the
  DINO projection head);
- a training checkpoint (`train_ssl.py` saves `student`, `teacher`, `optimizer`, `epoch`, `args`, ...): the
  `teacher` entry, the network SVT evaluates (`eval_linear.py` takes `ckpt["teacher"]`, then strips `backbone.`).
A bare backbone state dict (what that stripping leaves) converts too. A `module.` prefix (DistributedDataParallel)
is dropped.

The backbone converts to head "none": `last_hidden_state` is the token sequence after the final LayerNorm, CLS
first, i.e. `forward_features(x, get_all=True)`; its CLS row is the feature SVT's evaluations read. The DINO head
(`head.mlp.*`, `head.last_layer.weight_g/_v`) exists for the self-supervised loss only: it is left out, and named in
the conversion's record (`source.not_converted`) and summary.

Sizes come from tensor shapes: width and patch from `patch_embed.proj` (a Conv2d applied per frame), frames from
`time_embed`, image size from `pos_embed`'s square grid, depth from the blocks, MLP width from `mlp.fc1`. The head
count is in no tensor: it is the ViT size table's for the width (12 for SVT's ViT-B), or `num_heads`. Fixed by SVT's
code (`models/timesformer.py` `get_vit_base_patch16_224`): qkv bias, LayerNorm eps 1e-6, exact GELU, drop path 0.1.
Inputs as SVT trains on them: ImageNet mean/std (`datasets/transform.py` `VideoDataAugmentationDINO`; its evaluation
datasets normalise with its config's DATA.MEAN/STD, left at the defaults 0.45/0.225), 8 frames at sampling rate 32
(`TimeSformer_divST_8x32_224.yaml`). Other clip sizes: `pretrained.load(DST, num_frames=, image_size=)` resizes the
tables with nearest interpolation, as SVT's `forward_features` does at run time.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    TensorSource,
    check_family,
    checkpoint_file,
    finalize,
    fused_attention,
    head_count,
    layer_norm,
    linear,
    prefixed,
    read_checkpoint,
    read_tensors,
    size_tensor,
)
from vidjax.models import layers, timesformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLING_RATE = 32  # DATA.SAMPLING_RATE of SVT's 8x32 config
DROP_PATH = 0.1  # the backbone's drop_path_rate in every SVT model builder
MODEL = "SVT's TimeSformer"  # what error messages call the model whose tensor shapes they expect


def _strip_module(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of a state dict, without DistributedDataParallel's `module.` prefix."""
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, np.ndarray)}


def _model_state(obj: Any, path: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
    """(the SVT network's tensors, named as in the file, and which layout they came from)."""
    def not_svt(why: str) -> ConversionError:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else []
        shown = f"{keys[:12]}{' ...' if len(keys) > 12 else ''}"
        return ConversionError(
            f"{path} is not an SVT checkpoint: {why} Its top-level keys are {shown}. --from_svt takes the released "
            f"state dict (backbone.* and head.* tensors, e.g. kinetics400_vitb_ssl.pth), a training checkpoint of "
            f"train_ssl.py (a dict with 'teacher') or a backbone state dict (cls_token, pos_embed, blocks.*).")

    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict; --from_svt takes the state "
                              f"dict SVT releases or a training checkpoint of its train_ssl.py.")
    if "teacher" in obj:
        if not isinstance(obj["teacher"], dict):
            raise not_svt("its 'teacher' entry is not a state dict.")
        state, layout = _strip_module(obj["teacher"]), "training checkpoint (teacher)"
    else:
        state, layout = _strip_module(obj), "state dict"
    if not any(k.startswith("backbone.") for k in state) and not ("cls_token" in state and "pos_embed" in state):
        where = "its teacher has" if layout.startswith("training") else "it has"
        raise not_svt(f"{where} no backbone.* tensors and no bare backbone (cls_token, pos_embed).")
    return state, layout


def read_svt(path: str | pathlib.Path) -> tuple[TensorSource, str]:
    """The SVT network's tensors of a file in either layout (see the module docstring), and the layout's name."""
    path = checkpoint_file(path, "--from_svt")
    obj = read_checkpoint(path)
    check_family(obj, "svt", path)
    state, layout = _model_state(obj, path)
    origin = f"{path} (teacher)" if layout.startswith("training") else str(path)
    return TensorSource(state, origin), layout


def _backbone_prefix(src: TensorSource) -> str:
    return "backbone." if any(n.startswith("backbone.") for n in src.names()) else ""


def from_svt(src: TensorSource, num_heads: int | None = None) -> Converted:
    """Maps an SVT network's tensors (`backbone.*` or bare backbone names) onto a timesformer backbone.

    `num_heads` is needed only for a width that is no ViT size. Tensors this does not take stay unused in `src`.
    """
    pre = _backbone_prefix(src)
    conv = size_tensor(src, f"{pre}patch_embed.proj.weight", 4, "(width, 3, patch, patch)", MODEL)
    width, patch = conv[0], conv[-1]
    if conv[1:] != (3, patch, patch):
        raise ConversionError(f"Tensor '{pre}patch_embed.proj.weight' in {src.origin} has shape {conv}; SVT's "
                              f"per-frame patch embedding is a Conv2d of shape ({width}, 3, patch, patch).")
    pos = size_tensor(src, f"{pre}pos_embed", 3, f"(1, 1 + patches, {width})", MODEL)
    side = int(round((pos[1] - 1) ** 0.5))
    if pos[0] != 1 or pos[2] != width or side < 1 or side * side != pos[1] - 1:
        raise ConversionError(f"Tensor '{pre}pos_embed' in {src.origin} has shape {pos}; expected (1, 1 + n * n, "
                              f"{width}): a CLS row and a square grid of patch rows.")
    num_frames = size_tensor(src, f"{pre}time_embed", 3, f"(1, frames, {width})", MODEL)[1]
    depth = src.stack_depth(pre, "blocks", "norm1.weight")
    mlp_dim = size_tensor(src, f"{pre}blocks.0.mlp.fc1.weight", 2, f"(mlp_dim, {width})", MODEL)[0]
    heads = head_count(width, num_heads, {w: h for w, _, h in layers.VIT_SIZES.values()}, src.origin)

    size = next((name for name, dims in layers.VIT_SIZES.items() if dims == (width, depth, heads)), "B")
    cfg = timesformer.default_config()
    cfg.update(dict(
        variant=f"{size}/{patch}", width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim,
        num_frames=num_frames, image_size=side * patch, attention_type="divided_space_time",
        head="none", num_classes=0, qkv_bias=True, ln_eps=1e-6, approximate_gelu=False, drop_path=DROP_PATH,
        pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
    ))
    d = width
    params = {
        # (D, 3, p, p) Conv2d -> a Dense over (h, w, c)-ordered patch pixels.
        "patch_embed/kernel": src.take(f"{pre}patch_embed.proj.weight", conv).transpose(2, 3, 1, 0).reshape(-1, d),
        "patch_embed/bias": src.take(f"{pre}patch_embed.proj.bias", (d,)),
        "cls_token": src.take(f"{pre}cls_token", (1, 1, d)).reshape(d),
        "pos_embed": src.take(f"{pre}pos_embed", pos)[0],
        "time_embed": src.take(f"{pre}time_embed", (1, num_frames, d))[0],
    }
    # A block's norms and Linears (facebookresearch TimeSformer's names); its two attentions are `fused_attention`'s.
    block = (layer_norm("temporal_norm", "temporal_norm1", d) + linear("temporal_fc", "temporal_fc", d, d)
             + layer_norm("norm1", "norm1", d) + layer_norm("norm2", "norm2", d)
             + linear("mlp/fc1", "mlp.fc1", d, mlp_dim) + linear("mlp/fc2", "mlp.fc2", mlp_dim, d))
    for i in range(depth):
        fb, out = f"{pre}blocks.{i}", f"blocks/{i}"
        params.update(read_tensors(src, prefixed(block, f"{out}/", f"{fb}.")))
        for attention in ("temporal_attn", "attn"):  # facebookresearch TimeSformer's `Attention`s
            params.update(read_tensors(src, fused_attention(f"{out}/{attention}", f"{fb}.{attention}", d, heads)))
    params.update(read_tensors(src, layer_norm("norm", f"{pre}norm", d)))
    preprocessing = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "num_frames": num_frames,
                     "image_size": side * patch, "sampling_rate": SAMPLING_RATE}
    return Converted("timesformer", cfg, params, preprocessing=preprocessing, class_names=None)


def convert_svt_file(path: str | pathlib.Path, num_heads: int | None = None) -> Converted:
    """Reads an SVT checkpoint in either layout and converts its backbone; the DINO head's tensors are named in
    `source["not_converted"]` (and so in vidjax.json and the command's summary)."""
    src, layout = read_svt(path)
    # Beside `backbone.`, `head.` is the DINO head (a bare backbone's own `head.*` would be a classifier).
    dino_head = [n for n in src.names() if n.startswith("head.")] if _backbone_prefix(src) else []
    for name in dino_head:
        src.mark_used(name)  # deliberately skipped: named below, not warned about as a surprise by `finalize`
    what = "SVT's DINO projection head, used by its self-supervised loss only"
    return finalize(from_svt(src, num_heads), src, format="svt", layout=layout,
                    not_converted={"what": what, "tensors": dino_head} if dino_head else None)
