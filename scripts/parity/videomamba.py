"""Parity fixtures for official VideoMamba: `vidjax.bench.torch_ref.videomamba.VisionMamba` with random weights.

The model is the package's pure-torch re-implementation of the official `VisionMamba` (see that module for what
it follows line for line), shared with `python -m vidjax.bench --model=videomamba --compare=torch`.

Cases: `videomamba_cls` (tubelet 1, head, saved under {"model": ...} as the official fine-tuned files are),
`videomamba_backbone_t2` (tubelet 2, 8 frames, no head, saved under {"module": ...}), `videomamba_image`
(image_sm's ImageNet model: Conv2d patches, no temporal table; vidjax reads it as a one-frame video model) and
`videomamba_mask_pt` (the masked pre-training's file: the final norm named `norm`, two `clip_decoder` alignment
heads, which the conversion leaves out).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import torch
from torch import nn

from vidjax.bench.torch_ref.videomamba import ImageVisionMamba, MaskPretrainVisionMamba, VisionMamba


def randomize(model: VisionMamba, seed: int) -> None:
    """Every parameter random, each within a sane range for its role, so no mapping mistake hides behind a constant."""
    gen = torch.Generator().manual_seed(seed)

    def noise(shape):
        return torch.randn(shape, generator=gen)

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight" and "norm" in name:
                p.copy_(1.0 + 0.2 * noise(p.shape))
            elif leaf in ("A_log", "A_b_log"):  # around S4D-real's log(1..N), perturbed per channel
                p.copy_(torch.log(torch.arange(1, p.shape[1] + 1, dtype=torch.float32)) + 0.3 * noise(p.shape))
            elif leaf in ("D", "D_b"):
                p.copy_(1.0 + 0.5 * noise(p.shape))
            elif name.endswith("dt_proj.bias") or name.endswith("dt_proj_b.bias"):  # softplus^-1 of [1e-3, 0.1]
                u = torch.rand(p.shape, generator=gen)
                dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif leaf in ("cls_token", "pos_embed", "temporal_pos_embedding") or leaf == "bias":
                p.copy_(0.5 * noise(p.shape))
            else:  # weights: normal with std 1/sqrt(fan_in), activations stay O(1)
                fan_in = p[0].numel()
                p.copy_(noise(p.shape) / math.sqrt(fan_in))


def write_case(out: pathlib.Path, name: str, model: VisionMamba, video: np.ndarray, key: str) -> None:
    case = out / name
    (case / "source").mkdir(parents=True, exist_ok=True)
    torch.save({key: model.state_dict()}, case / "source" / "checkpoint.pth")
    with torch.no_grad():
        x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # the official model takes (B, C, T, H, W)
        if isinstance(model, ImageVisionMamba):
            x = x[:, :, 0]  # one-frame clips are images (B, C, H, W)
        hidden = model.forward_hidden(x)
        arrays = {"video": video, "last_hidden_state": hidden.numpy()}
        if not isinstance(model.head, nn.Identity):
            arrays["logits"] = model(x).numpy()
            np.testing.assert_array_equal(arrays["logits"], model.head(hidden[:, 0]).numpy())
    np.savez(case / "io.npz", **arrays)
    (case / "case.json").write_text(json.dumps(dict(
        convert="videomamba",
        reference=f"pure-torch re-implementation of OpenGVLab/VideoMamba VisionMamba (bimamba, fused add+RMSNorm, "
                  f"mamba_ssm reference scan and conv), torch {torch.__version__}, random weights"), indent=1))


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    model = VisionMamba(img_size=32, patch_size=8, depth=2, embed_dim=32, num_classes=5, kernel_size=1,
                        num_frames=4).eval()
    randomize(model, 1)
    video = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)  # channels-last, already normalised
    write_case(out, "videomamba_cls", model, video, key="model")

    backbone = VisionMamba(img_size=32, patch_size=8, depth=2, embed_dim=32, num_classes=0, kernel_size=2,
                           num_frames=8).eval()
    randomize(backbone, 2)
    video = rng.standard_normal((2, 8, 32, 32, 3)).astype(np.float32)
    write_case(out, "videomamba_backbone_t2", backbone, video, key="module")

    image = ImageVisionMamba(img_size=32, patch_size=8, depth=2, embed_dim=32, num_classes=5).eval()
    randomize(image, 3)
    video = rng.standard_normal((2, 1, 32, 32, 3)).astype(np.float32)
    write_case(out, "videomamba_image", image, video, key="model")

    masked = MaskPretrainVisionMamba(img_size=32, patch_size=8, depth=2, embed_dim=32, kernel_size=1, num_frames=4,
                                     clip_output_dim=24, clip_return_layer=2).eval()
    randomize(masked, 4)
    video = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
    write_case(out, "videomamba_mask_pt", masked, video, key="model")
