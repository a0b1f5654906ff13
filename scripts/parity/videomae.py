"""Parity fixtures for Hugging Face VideoMAE: pre-training, classification (both poolings) and the bare model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import (
    VideoMAEConfig,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessor,
    VideoMAEModel,
)

TINY = dict(image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, decoder_num_attention_heads=2,
            decoder_hidden_size=24, decoder_num_hidden_layers=1, decoder_intermediate_size=40)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every weight random (norms around 1), so no mapping mistake hides behind zeros or ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def write_case(out: pathlib.Path, name: str, model, arrays: dict, *, safe: bool = True, processor=None) -> None:
    case = out / name
    model.save_pretrained(case / "source")
    if not safe:  # transformers 5 writes only safetensors: keep a torch zip file to test that reader as well
        (case / "source" / "model.safetensors").unlink()
        torch.save(model.state_dict(), case / "source" / "pytorch_model.bin")
    if processor is not None:
        processor.save_pretrained(case / "source")
    np.savez(case / "io.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (case / "case.json").write_text(json.dumps(dict(
        convert="hf", reference=f"{type(model).__name__}, transformers {transformers.__version__}, "
                                f"torch {torch.__version__}, random weights"), indent=1))


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)  # channels-last, already normalised
    pixel_values = torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # HF takes (B, T, C, H, W)
    num_tokens = 2 * 4 * 4
    mask = np.zeros((2, num_tokens), bool)
    for row in mask:
        row[rng.choice(num_tokens, 24, replace=False)] = True

    # Pre-training, HF default eps (1e-12 in blocks, 1e-5 in the decoder norm), normalised-pixel loss.
    model = VideoMAEForPreTraining(VideoMAEConfig(**TINY, use_mean_pooling=False, norm_pix_loss=True)).eval()
    randomize(model, 1)
    with torch.no_grad():
        bool_mask = torch.from_numpy(mask)
        outputs = model(pixel_values, bool_masked_pos=bool_mask)
        hidden = model.videomae(pixel_values, bool_masked_pos=bool_mask).last_hidden_state
    write_case(out, "videomae_pretrain", model, dict(video=video, mask=mask, loss=outputs.loss.numpy(),
                                                     pred=outputs.logits.numpy(), last_hidden_state=hidden.numpy()))

    # Classification with mean pooling + fc_norm, saved as pytorch_model.bin, with a preprocessor config.
    labels = {i: f"action_{i}" for i in range(5)}
    config = VideoMAEConfig(**TINY, use_mean_pooling=True, num_labels=5, id2label=labels,
                            label2id={v: k for k, v in labels.items()}, layer_norm_eps=1e-6)
    model = VideoMAEForVideoClassification(config).eval()
    randomize(model, 2)
    with torch.no_grad():
        logits = model(pixel_values).logits
        hidden = model.videomae(pixel_values).last_hidden_state
    processor = VideoMAEImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    write_case(out, "videomae_classification_bin", model, dict(video=video, logits=logits.numpy(),
                                                               last_hidden_state=hidden.numpy()),
               safe=False, processor=processor)

    # Classification from the first token after the final norm (use_mean_pooling=False).
    model = VideoMAEForVideoClassification(VideoMAEConfig(**TINY, use_mean_pooling=False, num_labels=3)).eval()
    randomize(model, 3)
    with torch.no_grad():
        logits = model(pixel_values).logits
        hidden = model.videomae(pixel_values).last_hidden_state
    write_case(out, "videomae_classification_first_token", model,
               dict(video=video, logits=logits.numpy(), last_hidden_state=hidden.numpy()))

    # The bare encoder (VideoMAEModel, mean-pooling config: no final norm).
    model = VideoMAEModel(VideoMAEConfig(**TINY)).eval()
    randomize(model, 4)
    with torch.no_grad():
        hidden = model(pixel_values).last_hidden_state
    write_case(out, "videomae_model", model, dict(video=video, last_hidden_state=hidden.numpy()))
