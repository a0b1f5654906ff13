"""Parity fixture for official V-JEPA 2 files: the official model code (facebookresearch/vjepa2) with random weights.

The reference is the official `src/models/vision_transformer.py` `VisionTransformer` (use_rope, 3-D rotary
positions) and `src/models/predictor.py` `vit_predictor` (mask tokens, use_rope), imported from a checkout of the
repository named by $VJEPA2_REPO (`git clone https://github.com/facebookresearch/vjepa2`); timm, which that code
imports for training's drop path alone, is stood in for when it is not installed (drop path is off here). The file is
saved as app/vjepa/train.py's `save_checkpoint` saves one: {"encoder", "predictor", "target_encoder", "opt",
"scaler", "epoch", ...}, each state dict under DistributedDataParallel's `module.` and the multi-sequence wrappers'
`backbone.`. The target encoder and the online encoder differ (the online one = the target + noise), so a converter
that read the wrong one fails the comparison.

`vjepa2_official_pretrain`: a 24-wide encoder of one block (2 heads of 12: every feature rotates; MLP 2 x width) over 4
frames x 16 px in tubelets of 2 x 4 x 4 (32 tokens), a 14-wide predictor of 2 blocks (one head of 14: 12 features
rotate, 2 pass; MLP 4 x width) with 3 mask tokens. io.npz holds the (normalised, channels-last) clips and the official
outputs: `last_hidden_state` (the target encoder's tokens of the whole clip), `last_hidden_state_encoder` (the online
encoder's), `predictor_output` (the predictor's features at `target_ids` from the target encoder's tokens at
`context_ids`, mask token 1: the official predictor's default `mask_index`), and `last_hidden_state_long` (the target
encoder on the two clips one after the other, 8 frames, twice the configured clip: the rotary positions extend; the
official predictor's mask tokens are laid out for the configured clip only, so it has no long output). Sizes no
official builder uses, so converting takes num_heads and predictor_num_heads (case.json).

Run through scripts/make_parity_fixtures.py with torch installed and VJEPA2_REPO set; tests/test_vjepa2_convert.py
checks the case.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np

BATCH, FRAMES, SIZE, PATCH, TUBELET = 2, 4, 16, 4, 2
# The official rotation needs 4 or more features per axis (heads of 12 or more): `rotate_queries_or_keys` squeezes a
# single frequency away.
WIDTH, DEPTH, HEADS, MLP_RATIO = 24, 1, 2, 2.0
PREDICTOR_WIDTH, PREDICTOR_DEPTH, PREDICTOR_HEADS, MASK_TOKENS = 14, 2, 1, 3
PREFIX = "module.backbone."  # DistributedDataParallel around MultiSeqWrapper / PredictorMultiSeqWrapper


def _official_code() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType, str]:
    """The official modules (vision_transformer, predictor, masks.utils) and the checkout's commit."""
    repo = os.environ.get("VJEPA2_REPO")
    if not repo or not (pathlib.Path(repo) / "src" / "models" / "vision_transformer.py").is_file():
        raise SystemExit("set VJEPA2_REPO to a checkout of https://github.com/facebookresearch/vjepa2 (its "
                         "src/models/vision_transformer.py is the reference)")
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:  # the official modules import timm's drop_path, which a model without drop path never calls
        def drop_path(*args, **kwargs):
            raise RuntimeError("drop path is off in the fixture's models; timm's drop_path is not installed")

        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = drop_path
        sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                            "timm.models.layers": layers})
    sys.path.insert(0, str(repo))
    from src.masks import utils as masks
    from src.models import predictor, vision_transformer

    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown commit"
    return vision_transformer, predictor, masks, commit


def randomize(model, torch, seed: int) -> None:
    """Every parameter random (norm scales around 1), mask tokens included, so no mapping hides behind a constant."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)


def _ids(rng: np.random.Generator, tokens: int, n_context: int, n_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint context and target indices per row, in random order."""
    rows = [rng.permutation(tokens) for _ in range(BATCH)]
    return (np.stack([r[:n_context] for r in rows]).astype(np.int64),
            np.stack([r[n_context:n_context + n_target] for r in rows]).astype(np.int64))


def make(out: pathlib.Path) -> None:
    import torch

    vit, pred, masks, commit = _official_code()
    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)  # every official builder's
    target_encoder = vit.VisionTransformer(
        img_size=(SIZE, SIZE), patch_size=PATCH, num_frames=FRAMES, tubelet_size=TUBELET, embed_dim=WIDTH, depth=DEPTH,
        num_heads=HEADS, mlp_ratio=MLP_RATIO, qkv_bias=True, norm_layer=norm, use_rope=True, use_sdpa=True).eval()
    predictor = pred.vit_predictor(
        img_size=(SIZE, SIZE), patch_size=PATCH, num_frames=FRAMES, tubelet_size=TUBELET, embed_dim=WIDTH,
        predictor_embed_dim=PREDICTOR_WIDTH, depth=PREDICTOR_DEPTH, num_heads=PREDICTOR_HEADS, use_mask_tokens=True,
        num_mask_tokens=MASK_TOKENS, use_rope=True, use_sdpa=True).eval()
    randomize(target_encoder, torch, 1)
    randomize(predictor, torch, 2)
    encoder = copy.deepcopy(target_encoder)  # the online encoder: the target + noise
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))

    rng = np.random.default_rng(0)
    video = rng.standard_normal((BATCH, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    tokens = (FRAMES // TUBELET) * (SIZE // PATCH) ** 2
    context_ids, target_ids = _ids(rng, tokens, 20, 9)

    def clip(v: np.ndarray):
        return torch.from_numpy(v).permute(0, 4, 1, 2, 3)  # channels-last -> the official (B, C, T, H, W)

    with torch.no_grad():
        hidden = target_encoder(clip(video))
        context, target = [torch.from_numpy(context_ids)], [torch.from_numpy(target_ids)]
        predicted = predictor(masks.apply_masks(hidden, context), context, target)
        arrays = dict(video=video, context_ids=context_ids, target_ids=target_ids, last_hidden_state=hidden.numpy(),
                      last_hidden_state_encoder=encoder(clip(video)).numpy(), predictor_output=predicted.numpy(),
                      last_hidden_state_long=target_encoder(clip(np.concatenate(list(video))[None])).numpy())

    def wrapped(model) -> dict:
        return {f"{PREFIX}{k}": v for k, v in model.state_dict().items()}

    optimizer = torch.optim.AdamW([*encoder.parameters(), *predictor.parameters()], lr=1e-4, weight_decay=0.04)
    checkpoint = {"encoder": wrapped(encoder), "predictor": wrapped(predictor), "opt": optimizer.state_dict(),
                  "scaler": None, "target_encoder": wrapped(target_encoder), "epoch": 1, "loss": 0.5,
                  "batch_size": BATCH, "world_size": 1, "lr": 1e-4}
    case = out / "vjepa2_official_pretrain"
    (case / "source").mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, case / "source" / "checkpoint.pt")
    np.savez(case / "io.npz", **arrays)
    # "kind": checked by tests/test_vjepa2_convert.py (its inputs include token indices), not by tests/test_parity.py
    (case / "case.json").write_text(json.dumps(dict(
        kind="vjepa2_official", convert="vjepa2", num_heads=HEADS, predictor_num_heads=PREDICTOR_HEADS,
        reference=f"facebookresearch/vjepa2 {commit[:12]} src/models VisionTransformer (use_rope) + vit_predictor "
                  f"(use_mask_tokens, use_rope), torch {torch.__version__}, random weights; saved as "
                  f"app/vjepa/train.py's save_checkpoint"), indent=1) + "\n")
