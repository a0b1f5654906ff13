"""Parity fixture for SVT: a tiny random-weight TimeSformer in SVT's tensor names, in both of SVT's file layouts.

SVT (kahnchana/svt) saves facebookresearch TimeSformer's `VisionTransformer` under `backbone.` next to a DINO
projection head under `head.`: the released file is that flat state dict, a training checkpoint holds it as its
`teacher` (and the student's, prefixed `module.`, with the optimizer, epoch, args, ...). The reference network is
Hugging Face's `TimesformerModel` (divided space-time, exact GELU, LayerNorm eps 1e-6, qkv bias: SVT's backbone)
with every weight random, written under SVT's names by inverting transformers' convert_timesformer_to_pytorch.py
`rename_key`. Its `last_hidden_state` (after the final LayerNorm, CLS first) is SVT's `forward_features(x,
get_all=True)`; row 0 is the feature SVT evaluates. For clips of other sizes HF's embeddings resize the spatial and
time tables as SVT's do (`F.interpolate(mode="nearest")`, the same code), but its layers take the token grid from
the config rather than from the input; the maker sets the config to each clip's frames and size for its forward
pass, so the views with fewer and with more frames and patches are SVT's outputs too, the references for
`pretrained.load(DST, num_frames=, image_size=)`.

Writes out_dir/svt_backbone/{source/release.pth, source/training.pth, io.npz, case.json}. The width (32) is no ViT
size, so converting it needs num_heads (case.json). Run through scripts/make_parity_fixtures.py (needs torch and
transformers).
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import re

import numpy as np

WIDTH, DEPTH, HEADS, MLP_DIM, PATCH, FRAMES, SIZE = 32, 2, 2, 128, 8, 4, 32
VIEWS = ((FRAMES, SIZE, 2), (2, 24, 2), (6, 40, 1))  # (frames, pixels, batch): the checkpoint's, fewer, more
DINO_HIDDEN, DINO_BOTTLENECK, DINO_OUT = 48, 16, 64  # DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim), shrunk

# Hugging Face TimesformerModel names -> SVT's (facebookresearch TimeSformer's): rename_key read backwards.
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}
_BLOCK = {
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def fb_name(hf_name: str) -> str:
    """SVT's name of a TimesformerModel tensor; an unknown name is a KeyError, so every tensor is mapped."""
    if match := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", hf_name):
        return f"blocks.{match[1]}.{_BLOCK[match[2]]}.{match[3]}"
    module, _, param = hf_name.rpartition(".")
    if param in ("weight", "bias"):
        return f"{_TOP[module]}.{param}"
    return _TOP[hf_name]


def _randomise(model, torch) -> None:
    for name, param in model.named_parameters():
        noise = torch.randn_like(param)
        if "layernorm" in name and name.endswith("weight"):
            param.data = 1.0 + 0.2 * noise
        elif name.endswith(("cls_token", "position_embeddings", "time_embeddings")):
            param.data = 0.5 * noise
        else:
            param.data = 0.2 * noise  # temporal_dense too: zero at SVT's init, random here so it is exercised


def _dino_head(torch) -> dict:
    """SVT's DINOHead (vision_transformer.py, nlayers 3, no batch norm) tensors: mlp.{0,2,4} and the weight-normed
    last layer (weight_g filled with 1, as SVT does)."""
    nn = torch.nn
    mlp = nn.Sequential(nn.Linear(WIDTH, DINO_HIDDEN), nn.GELU(), nn.Linear(DINO_HIDDEN, DINO_HIDDEN), nn.GELU(),
                        nn.Linear(DINO_HIDDEN, DINO_BOTTLENECK))
    last_layer = nn.utils.weight_norm(nn.Linear(DINO_BOTTLENECK, DINO_OUT, bias=False))
    last_layer.weight_g.data.fill_(1)
    tensors = {f"mlp.{k}": v for k, v in mlp.state_dict().items()}
    tensors.update({f"last_layer.{k}": v for k, v in last_layer.state_dict().items()})
    return {k: v.detach().clone() for k, v in tensors.items()}


def make(out_dir: pathlib.Path) -> None:
    import torch
    import transformers
    from transformers.models.timesformer import modeling_timesformer

    # The resized views are references for SVT only while HF resizes its tables as SVT's forward_features does.
    embeddings_code = inspect.getsource(modeling_timesformer.TimesformerEmbeddings.forward)
    assert embeddings_code.count('mode="nearest"') == 2, "TimesformerEmbeddings no longer resizes with nearest"

    torch.manual_seed(0)
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=PATCH, num_channels=3, num_frames=FRAMES, hidden_size=WIDTH,
        num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP_DIM, hidden_act="gelu",
        layer_norm_eps=1e-6, attention_type="divided_space_time", qkv_bias=True)
    model = transformers.TimesformerModel(config).eval()
    with torch.no_grad():
        _randomise(model, torch)
    backbone = {fb_name(k): v.detach().clone() for k, v in model.state_dict().items()}
    teacher = {**{f"backbone.{k}": v for k, v in backbone.items()},
               **{f"head.{k}": v for k, v in _dino_head(torch).items()}}
    # The student differs from its EMA teacher, so a converter that read it instead would fail the comparison.
    student = {f"module.{k}": v + 0.05 * torch.randn_like(v) for k, v in teacher.items()}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(v.clone()) for v in student.values()], lr=5e-4)
    training = {
        "student": student, "teacher": teacher, "motion_student": 0, "motion_teacher": 0,
        "optimizer": optimizer.state_dict(), "epoch": 20,
        "args": argparse.Namespace(arch="timesformer", out_dim=DINO_OUT, momentum_teacher=0.996, epochs=20),
        "dino_loss": {"center": torch.zeros(1, DINO_OUT)},
    }

    case_dir = pathlib.Path(out_dir) / "svt_backbone"
    (case_dir / "source").mkdir(parents=True, exist_ok=True)
    torch.save(teacher, case_dir / "source" / "release.pth")
    torch.save(training, case_dir / "source" / "training.pth")

    arrays = {}
    for index, (frames, size, batch) in enumerate(VIEWS):
        video = torch.randn(batch, frames, size, size, 3, generator=torch.Generator().manual_seed(100 + index))
        # HF's layers read the token grid from the (shared) config, SVT's from the input: set it to the clip's.
        model.config.num_frames, model.config.image_size = frames, size
        with torch.no_grad():
            hidden = model(video.permute(0, 1, 4, 2, 3).contiguous()).last_hidden_state  # HF: (B, T, C, H, W)
        model.config.num_frames, model.config.image_size = FRAMES, SIZE
        arrays[f"video_{frames}x{size}"] = video.numpy().astype(np.float32)
        arrays[f"last_hidden_state_{frames}x{size}"] = hidden.numpy().astype(np.float32)
    np.savez(case_dir / "io.npz", **arrays)
    reference = (f"transformers {transformers.__version__} TimesformerModel (divided_space_time, gelu, "
                 f"layer_norm_eps 1e-06) under SVT's tensor names, torch {torch.__version__}, random weights; "
                 f"release.pth = teacher (backbone.* + DINO head.*), training.pth = train_ssl.py's save_dict")
    (case_dir / "case.json").write_text(json.dumps({
        "kind": "svt", "convert": "svt", "num_heads": HEADS, "reference": reference,
        "views": [[frames, size] for frames, size, _ in VIEWS],
        "dino_head": sorted(k for k in teacher if k.startswith("head.")),
    }, indent=1))


if __name__ == "__main__":
    import sys

    make(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity"))
