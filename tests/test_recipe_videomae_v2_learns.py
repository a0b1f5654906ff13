"""configs/videomae_v2.py:runlocal and configs/videomae_v2_finetune.py:runlocal learn the embedded dataset as their
docstrings' two commands run them: VideoMAE V2 pre-training with dual masking (tube 0.9 for the encoder, running cell
0.5 for the decoder), whose reconstruction loss falls, then the fine-tune from it, which reaches 3x chance on the
held-out clips. One file per chain, so that the test runner spreads these runs over its workers."""

import jax
import numpy as np
from helpers import load_config, train_losses

from vidjax import train
from vidjax.metric_writer import read_metrics


def test_recipes_are_the_official_scripts():
    pretraining = load_config("videomae_v2")
    assert (pretraining.model.mask_ratio, pretraining.model.decoder_mask_type, pretraining.model.decoder_mask_ratio
            ) == (0.9, "run_cell", 0.5)
    assert pretraining.data.num_samples == 4 and pretraining.batch_size == 4096  # 1,024 videos x 4 clips
    # The peak lr of vit_b_hybrid_pt.sh: 1e-3 x 1,024 videos / 256.
    assert np.isclose(pretraining.optimizer.base_lr * pretraining.batch_size / pretraining.optimizer.lr_batch_base,
                      4e-3)
    giant = load_config("videomae_v2", "variant=g/14")
    assert (giant.optimizer.grad_clip, giant.model.remat, giant.model.scan_layers) == (0.02, "full", True)
    finetune = load_config("videomae_v2_finetune")
    assert finetune.model.num_classes == finetune.data.num_classes == 710
    assert np.isclose(finetune.optimizer.base_lr * finetune.batch_size / finetune.optimizer.lr_batch_base, 1.4e-3)


def test_v2_pretrain_then_finetune_runlocal_reaches_three_times_chance(tmp_path, generate_clips_once, capsys):
    devices = jax.devices()[:1]
    pretraining = load_config("videomae_v2", "runlocal")
    result = train.train_and_evaluate(pretraining, str(tmp_path / "pt"), devices=devices)
    assert result["step"] == 512  # 8 epochs of 2,048 clips, 32 a step
    losses = train_losses(tmp_path / "pt")
    late = [losses[step] for step in sorted(losses)[-4:]]
    assert np.mean(late) < 0.6 * losses[1], losses  # about 1.25 -> 0.5; the loss covers ~28 tokens a clip: noisy
    evals = [r["eval_loss"] for r in read_metrics(tmp_path / "pt") if r["split"] == "eval"]
    assert len(evals) == 2 and evals[-1] < 0.6, evals
    assert (tmp_path / "pt" / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Seeds 0, 1, 2 of this chain reached 0.86, 0.68 and 0.71 top-1 (issue 38's note).
    config = load_config("videomae_v2_finetune", "runlocal")
    config.init_from = str(tmp_path / "pt")
    result = train.train_and_evaluate(config, str(tmp_path / "ft"), devices=devices)
    assert "Initialised" in capsys.readouterr().out  # the encoder came from the V2 pre-training run
    assert result["eval_top1"] >= 3 / 8, result  # 3x chance over the 8 motion directions, held-out clips
