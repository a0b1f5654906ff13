"""Parity fixtures for ViViT: tiny random-weight Hugging Face models (the paper's model 1) and their fp32 outputs.

Two `VivitForVideoClassification` cases, one with the tanh GELU of the published config ("gelu_fast") and one with
the exact "gelu" and another LayerNorm eps, so the converter's mapping of both is exercised; the first ships a
VivitImageProcessor config. One `VivitModel` case (no head; its pooler is not part of vidjax). Every weight is
randomised, including LayerNorms, biases, the CLS token and the position table, so a mapping mistake cannot hide
behind zeros or ones.

Run through scripts/make_parity_fixtures.py (needs torch and transformers).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import VivitConfig, VivitForVideoClassification, VivitImageProcessor, VivitModel

BATCH, FRAMES, SIZE = 2, 4, 32
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, tubelet_size=[2, 8, 8],
            image_size=SIZE, num_frames=FRAMES, num_channels=3)
CASES = {
    # case name: (architecture, hidden_act, layer_norm_eps, seed)
    "vivit_classification_gelu_fast": ("VivitForVideoClassification", "gelu_fast", 1e-6, 1),
    "vivit_classification_gelu": ("VivitForVideoClassification", "gelu", 1e-5, 2),
    "vivit_model": ("VivitModel", "gelu_fast", 1e-6, 3),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "layernorm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(("cls_token", "position_embeddings")):
                param.copy_(0.5 * noise)
            else:
                param.copy_(0.2 * noise)


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    video = np.random.default_rng(0).standard_normal((BATCH, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    pixel_values = torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # HF takes (B, T, C, H, W)
    labels = {i: f"action_{i}" for i in range(5)}
    for name, (architecture, act, eps, seed) in CASES.items():
        config = VivitConfig(**TINY, hidden_act=act, layer_norm_eps=eps, num_labels=5, id2label=labels,
                             label2id={v: k for k, v in labels.items()})
        if architecture == "VivitForVideoClassification":
            model = VivitForVideoClassification(config).eval()
            base = model.vivit
        else:
            model = base = VivitModel(config).eval()
        _randomise(model, seed)
        with torch.no_grad():
            arrays = {"video": video, "last_hidden_state": base(pixel_values).last_hidden_state.numpy()}
            if architecture == "VivitForVideoClassification":
                arrays["logits"] = model(pixel_values).logits.numpy()
        case = out / name
        model.save_pretrained(case / "source")
        if name == "vivit_classification_gelu_fast":
            VivitImageProcessor(crop_size={"height": SIZE, "width": SIZE}).save_pretrained(case / "source")
        np.savez(case / "io.npz", **arrays)
        (case / "case.json").write_text(json.dumps(dict(
            convert="hf", reference=f"{architecture} (hidden_act {act}, layer_norm_eps {eps}), transformers "
                                    f"{transformers.__version__}, torch {torch.__version__}, random weights "
                                    f"(seed {seed})"), indent=1))
