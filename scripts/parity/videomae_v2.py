"""Parity fixtures for official VideoMAE / VideoMAE V2 files: `vidjax.bench.torch_ref.videomae_v2` with random weights.

The models are the package's pure-torch re-implementation of the official `PretrainVisionTransformer` and
`VisionTransformer` (see that module for what it follows line for line), saved as the official scripts save them
(`torch.save({"model": state_dict, "epoch": ..., "args": ...})` by `utils.save_model`, `{"module": ...}`, or a bare
state dict as the distilled students are released). Tiny sizes (32 px, patch 8, 4 frames, tubelet 2): the files
record no frame count, resolution or head count, so case.json's "convert_args" pass them to the converter.

Cases:
- `videomae_v2_pretrain_dual`: V2 dual masking, a tube mask (0.9) for the encoder and a running-cell decoder mask
  (0.5), both drawn per sample as `dataset/masking_generator.py` does; `pred` is the decoder output, `loss` the
  loss of `engine_for_pretraining.py` (normalised-pixel labels at ~decoder_mask, MSE over the decoded tokens the
  encoder masked, sum / sum); names carry torch.compile's `_orig_mod.` prefix under "module";
- `videomae_v2_pretrain_v1`: V1 (`decode_mask=None`: every masked token decoded, the loss a plain mean);
- `videomae_v2_finetune_fc_norm` (mean pooling + fc_norm) and `videomae_v2_finetune_norm` (`use_mean_pooling=False`:
  norm on the first token): logits;
- `videomae_v2_k710`: a K710 fine-tuned model (710 outputs; converts with the K710 class names);
- `videomae_v2_distilled`: a distilled student (fine-tuning layout, 710 outputs, bare state dict).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

import numpy as np
import torch

from vidjax.bench.torch_ref import videomae_v2 as ref

TINY = dict(img_size=32, patch_size=8, all_frames=4, tubelet_size=2, qkv_bias=True)
GRID = (2, 4, 4)  # (frames / tubelet, 32 / 8, 32 / 8)


def _videomae_maker():
    """scripts/parity/videomae.py (the Hugging Face VideoMAE fixtures), loaded as make_parity_fixtures.py loads it."""
    spec = importlib.util.spec_from_file_location("parity_videomae", pathlib.Path(__file__).with_name("videomae.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


randomize = _videomae_maker().randomize  # every weight random, norms around 1


def write_case(out: pathlib.Path, name: str, state: dict, arrays: dict, convert_args: dict, what: str) -> None:
    case = out / name
    (case / "source").mkdir(parents=True, exist_ok=True)
    torch.save(state, case / "source" / "checkpoint.pth")
    np.savez(case / "io.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    (case / "case.json").write_text(json.dumps(dict(
        convert="videomae", convert_args=convert_args,
        reference=f"pure-torch re-implementation of OpenGVLab/VideoMAEv2 {what}, torch {torch.__version__}, random "
                  f"weights"), indent=1))


def _pretrain(seed: int, decoder_embed_dim: int, decoder_num_heads: int) -> ref.PretrainVisionTransformer:
    model = ref.PretrainVisionTransformer(
        **TINY, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, decoder_num_classes=3 * 2 * 8 * 8,
        decoder_embed_dim=decoder_embed_dim, decoder_depth=2, decoder_num_heads=decoder_num_heads).eval()
    randomize(model, seed)
    return model


def _finetune(seed: int, num_classes: int, use_mean_pooling: bool, heads: int = 2,
              depth: int = 2) -> ref.VisionTransformer:
    model = ref.VisionTransformer(**TINY, num_classes=num_classes, embed_dim=32, depth=depth, num_heads=heads,
                                  use_mean_pooling=use_mean_pooling).eval()
    randomize(model, seed)
    return model


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((2, 4, 32, 32, 3)).astype(np.float32)  # channels-last, already normalised
    x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # the official models take (B, C, T, H, W)
    mask = np.stack([ref.tube_mask(GRID, 0.9, rng) for _ in range(2)]).astype(bool)
    decoder_mask = np.stack([ref.running_cell_mask(GRID, 0.5, rng) for _ in range(2)]).astype(bool)
    args = argparse.Namespace(model="pretrain_videomae_tiny", mask_type="tube", decoder_mask_type="run_cell")
    pre_args = dict(num_heads=2, decoder_num_heads=2, num_frames=4, image_size=32)
    ft_args = dict(num_heads=2, num_frames=4, image_size=32)

    # V2 dual masking.
    model = _pretrain(1, decoder_embed_dim=16, decoder_num_heads=2)
    with torch.no_grad():
        bool_masked_pos, decode_masked_pos = torch.from_numpy(mask), torch.from_numpy(decoder_mask)
        pred = model(x, bool_masked_pos, decode_masked_pos)
        labels = ref.pretraining_labels(x, bool_masked_pos, decode_masked_pos, patch_size=8)
        loss = ref.pretraining_loss(pred, labels, bool_masked_pos, decode_masked_pos)
        hidden = model.encoder(x, bool_masked_pos)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    write_case(out, "videomae_v2_pretrain_dual", {"module": state},
               dict(video=video, mask=mask, decoder_mask=decoder_mask, pred=pred.numpy(), loss=loss.numpy(),
                    last_hidden_state=hidden.numpy()), pre_args,
               "PretrainVisionTransformer, tube mask 0.9 + running-cell decoder mask 0.5, engine_for_pretraining loss")

    # V1: no decoder mask (the engine's decode_masked_pos = ~bool_masked_pos: its loss is then a plain mean).
    model = _pretrain(2, decoder_embed_dim=24, decoder_num_heads=3)
    with torch.no_grad():
        bool_masked_pos = torch.from_numpy(mask)
        pred = model(x, bool_masked_pos)
        labels = ref.pretraining_labels(x, bool_masked_pos, ~bool_masked_pos, patch_size=8)
        loss = ref.pretraining_loss(pred, labels, bool_masked_pos, ~bool_masked_pos)
        hidden = model.encoder(x, bool_masked_pos)
    write_case(out, "videomae_v2_pretrain_v1", {"model": model.state_dict(), "epoch": 799, "args": args},
               dict(video=video, mask=mask, pred=pred.numpy(), loss=loss.numpy(), last_hidden_state=hidden.numpy()),
               dict(pre_args, decoder_num_heads=3), "PretrainVisionTransformer, decode_mask=None (VideoMAE V1)")

    # Fine-tuned: mean pooling + fc_norm, and the first token after norm.
    for name, key, seed, classes, pooling in (("videomae_v2_finetune_fc_norm", "model", 3, 5, True),
                                              ("videomae_v2_finetune_norm", "module", 4, 3, False)):
        model = _finetune(seed, classes, pooling)
        with torch.no_grad():
            logits = model(x)
        write_case(out, name, {key: model.state_dict()}, dict(video=video, logits=logits.numpy()), ft_args,
                   f"VisionTransformer (use_mean_pooling={pooling})")

    # A K710 fine-tuned model and a distilled student (bare state dict, other head count and depth).
    model = _finetune(5, 710, True)
    with torch.no_grad():
        logits = model(x)
    write_case(out, "videomae_v2_k710", {"model": model.state_dict(), "epoch": 34},
               dict(video=video, logits=logits.numpy()), ft_args, "VisionTransformer with a 710-class (K710) head")
    model = _finetune(6, 710, True, heads=4, depth=1)
    with torch.no_grad():
        logits = model(x)
    write_case(out, "videomae_v2_distilled", model.state_dict(), dict(video=video, logits=logits.numpy()),
               dict(ft_args, num_heads=4), "VisionTransformer distilled student layout (bare state dict, K710 head)")
