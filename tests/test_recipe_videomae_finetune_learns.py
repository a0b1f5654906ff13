"""configs/videomae_finetune_k400.py:runlocal learns the embedded dataset as its docstring's two commands run it:
the VideoMAE runlocal pre-training (the README's main command, whose outputs are checked on the way), then the
fine-tune from it. Without the pre-training it stops at once, naming the command. One file per recipe, so that the
test runner spreads these few-minute runs over its workers.
"""

import os

import jax
import pytest
from helpers import load_config, train_losses

from vidjax import train
from vidjax.config_lib import ConfigError
from vidjax.metric_writer import read_metrics


def test_finetune_runlocal_without_init_from_names_the_pretraining_command(tmp_path):
    with pytest.raises(ConfigError, match="(?s)--config=configs/videomae_k400.py:runlocal .*--config.init_from="):
        train.train_and_evaluate(load_config("videomae_finetune_k400", "runlocal"), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def check_pretraining_learned_and_wrote_its_outputs(workdir, result, config, devices):
    """The reconstruction loss falls well below the predict-the-mean level (~1); metrics, TensorBoard events,
    checkpoints and the reconstruction figure are written; running the finished job again changes nothing."""
    total, every = result["step"], config.eval_every
    losses = train_losses(workdir)
    logged = sorted(losses)
    assert logged[0] == 1 and logged[-1] == total and all(s % config.log_every == 0 for s in logged[1:-1])
    assert losses[total] < 0.7 * losses[1], losses
    rows = read_metrics(workdir)
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == list(range(every, total + 1, every))
    assert evals[-1]["eval_loss"] < min(evals[0]["eval_loss"], 0.6)  # README: the loss falls to about 0.5
    assert {"loss", "lr", "grad_norm", "steps_per_s", "clips_per_s"} <= set(rows[-2])
    assert result["eval_loss"] == evals[-1]["eval_loss"]
    assert os.listdir(workdir / "tensorboard")
    saved = range(config.checkpoint_every, total + 1, config.checkpoint_every)
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(s) for s in saved]
    with open(workdir / "reconstruction.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Re-running a finished job does not train again and leaves its outputs alone.
    before = (workdir / "metrics.jsonl").read_text()
    again = train.train_and_evaluate(config, str(workdir), devices=devices)
    assert {k: v for k, v in again.items() if k != "state"} == {"step": total, "resumed": True, "trained": False}
    assert int(again["state"]["step"]) == total
    assert (workdir / "metrics.jsonl").read_text() == before


def test_pretrain_then_finetune_runlocal_reaches_three_times_chance(tmp_path, generate_clips_once, capsys):
    devices = jax.devices()[:1]
    pretraining = load_config("videomae_k400", "runlocal")
    result = train.train_and_evaluate(pretraining, str(tmp_path / "pt"), devices=devices)
    assert result["step"] == 512  # the README's numbers: 512 steps, evals at 256 and 512
    check_pretraining_learned_and_wrote_its_outputs(tmp_path / "pt", result, pretraining, devices)
    config = load_config("videomae_finetune_k400", "runlocal")
    config.init_from = str(tmp_path / "pt")
    result = train.train_and_evaluate(config, str(tmp_path / "ft"), devices=devices)
    assert "Initialised" in capsys.readouterr().out  # the encoder came from the pre-training run
    assert result["eval_top1"] >= 3 / 8, result  # 3x chance over the 8 motion directions, held-out clips
