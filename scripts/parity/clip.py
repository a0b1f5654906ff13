"""Parity fixtures for the image teachers: tiny random-weight transformers CLIP and SigLIP vision towers.

`clip_vision`: a `CLIPVisionModel`; its last hidden state (class token first, before the final LayerNorm), pooled
output and the class token's attention over the patches in the last block (transformers' `output_attentions`,
averaged over the heads, the class column dropped).
`clip_model`: a whole `CLIPModel` (its text tower is left out by the conversion); the same outputs and the projected
image embeddings (`get_image_features`), with another LayerNorm eps.
`clip_siglip_vision`: a `SiglipVisionModel`; its last hidden state (after the final LayerNorm), pooled output (the
attention-pooling head's) and the head's attention over the patches (its `torch.nn.MultiheadAttention` weights,
averaged over the heads).

`clip_vision` and `clip_siglip_vision` also hold the outputs for images of another size (`images_48`,
`last_hidden_state_48`, `pooler_output_48`: 48 px, a 6x6 grid for the 4x4 the tables hold), which transformers
computes with `interpolate_pos_encoding=True` (the tables resized bicubically, as UMT resizes its teacher's).

Every weight is random (norms around 1), so no mapping mistake hides behind zeros or ones. Images are channels-last
(B, H, W, 3), normalised. Run through scripts/make_parity_fixtures.py (needs torch and transformers);
tests/test_image_encoder.py checks the cases.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

BATCH, SIZE = 2, 32
RESIZED = 48  # the other resolution: interpolate_pos_encoding
TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
            patch_size=8)


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if ("norm" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def write_case(out: pathlib.Path, name: str, model, arrays: dict) -> None:
    case = out / name
    model.save_pretrained(case / "source")
    np.savez(case / "io.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    # "kind": checked by tests/test_image_encoder.py (images, not clips), not by tests/test_parity.py
    (case / "case.json").write_text(json.dumps(dict(
        convert="hf", kind="image", reference=f"{type(model).__name__}, transformers {transformers.__version__}, "
                                              f"torch {torch.__version__}, random weights"), indent=1))


def _clip_outputs(vision, pixels: torch.Tensor) -> dict:
    with torch.no_grad():
        out = vision(pixel_values=pixels, output_attentions=True)
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy(),
            "attention": out.attentions[-1].mean(dim=1)[:, 0, 1:].numpy()}


def _resized_outputs(model, images: np.ndarray) -> dict:
    """The tower's outputs for `images` of another size than its table's, its position table interpolated."""
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2), interpolate_pos_encoding=True)
    return {f"images_{RESIZED}": images, f"last_hidden_state_{RESIZED}": out.last_hidden_state.numpy(),
            f"pooler_output_{RESIZED}": out.pooler_output.numpy()}


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    larger = np.random.default_rng(1).standard_normal((BATCH, RESIZED, RESIZED, 3)).astype(np.float32)

    vision = CLIPVisionModel(CLIPVisionConfig(**TINY, attn_implementation="eager")).eval()
    randomize(vision, 1)
    write_case(out, "clip_vision", vision, {"images": images, **_clip_outputs(vision, pixels),
                                            **_resized_outputs(vision, larger)})

    text = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=12)
    whole = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(TINY, layer_norm_eps=1e-6),
                                 projection_dim=24, attn_implementation="eager")).eval()
    randomize(whole, 2)
    with torch.no_grad():
        embeds = whole.get_image_features(pixel_values=pixels)
    embeds = getattr(embeds, "pooler_output", embeds)  # transformers 5 returns an output object
    write_case(out, "clip_model", whole, {"images": images, **_clip_outputs(whole.vision_model, pixels),
                                          "image_embeds": embeds.numpy()})

    siglip = SiglipVisionModel(SiglipVisionConfig(**TINY, attn_implementation="eager")).eval()
    randomize(siglip, 3)
    with torch.no_grad():
        result = siglip(pixel_values=pixels)
        head = getattr(siglip, "vision_model", siglip).head  # transformers 5 keeps the tower at the top
        probe = head.probe.repeat(BATCH, 1, 1)
        _, weights = head.attention(probe, result.last_hidden_state, result.last_hidden_state, need_weights=True)
    write_case(out, "clip_siglip_vision", siglip, {
        "images": images, "last_hidden_state": result.last_hidden_state.numpy(),
        "pooler_output": result.pooler_output.numpy(), "attention": weights[:, 0].numpy(),
        **_resized_outputs(siglip, larger)})
