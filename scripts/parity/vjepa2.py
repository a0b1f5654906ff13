"""Parity fixtures for V-JEPA 2: tiny random-weight transformers `VJEPA2Model` and `VJEPA2ForVideoClassification`.

`vjepa2_model`: the encoder's last hidden state, and the predictor's output for context and target token indices
drawn at random per row, unsorted (transformers sorts the tokens by position inside the predictor; vidjax does not
need to), on clips of the configured 4 frames, of 8 frames (longer than `frames_per_clip`: the rotary positions
extend) and of 1 frame (repeated to the tubelet). Its heads are 16 wide, so 12 features rotate and 4 pass; the
predictor's are 12 wide, all rotating.
`vjepa2_classification`: logits and last hidden state of a classifier with another mlp_ratio (the pooler's MLP stays
4 x width), LayerNorm eps and pooler depth.

Every weight is random (norms around 1), mask tokens included, so no mapping mistake hides behind zeros or ones.
Run through scripts/make_parity_fixtures.py (needs torch and transformers); tests/test_vjepa2.py checks the cases.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

BATCH, FRAMES, SIZE = 2, 4, 32
TINY = dict(patch_size=8, crop_size=SIZE, frames_per_clip=FRAMES, tubelet_size=2, hidden_size=32,
            num_attention_heads=2, num_hidden_layers=2, mlp_ratio=4.0, pred_hidden_size=24,
            pred_num_attention_heads=2, pred_num_hidden_layers=2, pred_num_mask_tokens=3, pred_mlp_ratio=2.0,
            num_pooler_layers=2)


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def write_case(out: pathlib.Path, name: str, model, arrays: dict) -> None:
    case = out / name
    model.save_pretrained(case / "source")
    np.savez(case / "io.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    # "kind": checked by tests/test_vjepa2.py (its inputs include token indices), not by tests/test_parity.py; the
    # source's way back (`export --to_hf`) by tests/test_to_hf.py
    (case / "case.json").write_text(json.dumps(dict(
        convert="hf", kind="vjepa2", reference=f"{type(model).__name__}, transformers {transformers.__version__}, "
                                               f"torch {torch.__version__}, random weights"), indent=1))


def _ids(rng: np.random.Generator, batch: int, tokens: int, n_context: int, n_target: int):
    """Disjoint context and target indices per row, in random order."""
    rows = [rng.permutation(tokens) for _ in range(batch)]
    return (np.stack([r[:n_context] for r in rows]).astype(np.int64),
            np.stack([r[n_context:n_context + n_target] for r in rows]).astype(np.int64))


def _videos(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # channels-last -> transformers' (B, T, C, H, W)


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((BATCH, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    video_long = rng.standard_normal((1, 2 * FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    video_image = rng.standard_normal((1, 1, SIZE, SIZE, 3)).astype(np.float32)
    tokens = (FRAMES // 2) * (SIZE // 8) ** 2
    context_ids, target_ids = _ids(rng, BATCH, tokens, 20, 9)
    context_ids_long, target_ids_long = _ids(rng, 1, 2 * tokens, 40, 17)

    model = VJEPA2Model(VJEPA2Config(**TINY)).eval()
    randomize(model, 1)
    with torch.no_grad():
        outputs = model(_videos(video), context_mask=[torch.from_numpy(context_ids)],
                        target_mask=[torch.from_numpy(target_ids)])
        long = model(_videos(video_long), context_mask=[torch.from_numpy(context_ids_long)],
                     target_mask=[torch.from_numpy(target_ids_long)])
        image = model(_videos(video_image), skip_predictor=True)
    write_case(out, "vjepa2_model", model, dict(
        video=video, context_ids=context_ids, target_ids=target_ids,
        last_hidden_state=outputs.last_hidden_state.numpy(),
        predictor_output=outputs.predictor_output.last_hidden_state.numpy(),
        target_hidden_state=outputs.predictor_output.target_hidden_state.numpy(),
        video_long=video_long, context_ids_long=context_ids_long, target_ids_long=target_ids_long,
        last_hidden_state_long=long.last_hidden_state.numpy(),
        predictor_output_long=long.predictor_output.last_hidden_state.numpy(),
        video_image=video_image, last_hidden_state_image=image.last_hidden_state.numpy()))

    labels = {i: f"action_{i}" for i in range(5)}
    config = VJEPA2Config(**dict(TINY, mlp_ratio=3.0, num_pooler_layers=1), layer_norm_eps=1e-5, num_labels=5,
                          id2label=labels, label2id={v: k for k, v in labels.items()})
    model = VJEPA2ForVideoClassification(config).eval()
    randomize(model, 2)
    with torch.no_grad():
        logits = model(_videos(video)).logits
        hidden = model.vjepa2(_videos(video), skip_predictor=True).last_hidden_state
    write_case(out, "vjepa2_classification", model, dict(video=video, logits=logits.numpy(),
                                                         last_hidden_state=hidden.numpy()))
