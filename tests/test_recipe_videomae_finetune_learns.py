"""configs/videomae_finetune_k400.py:runlocal learns the embedded dataset as its docstring's two commands run it:
the VideoMAE runlocal pre-training (the README's main command, whose outputs are checked on the way), then the
fine-tune from it; and configs/captioning_charades.py:runlocal, the third command of that chain, captions the
embedded dataset's clips with the fine-tune's frozen encoder. Without their starting checkpoints the recipes stop at
once, naming the command. configs/videomae_v2_finetune.py:runlocal is this fine-tune setting for setting
(tests/test_recipe_videomae_v2_learns.py checks it, and that it starts from a V2 pre-training), so this run shows that
both fine-tunes learn from a pre-training. The fine-tune then teaches a distillation (configs/umt.py:runlocal), whose
student fine-tunes in turn. One file per chain, so that the test runner spreads these few-minute runs
over its workers.
"""

import os
import re

import jax
import numpy as np
import pytest
from helpers import load_config, train_losses

from vidjax import pretrained, train
from vidjax.commands import evaluate
from vidjax.config_lib import ConfigError
from vidjax.data import synthetic
from vidjax.metric_writer import read_metrics


@pytest.mark.parametrize("recipe", ["videomae_finetune_k400", "captioning_charades"])
def test_runlocal_without_init_from_names_the_commands_that_make_it(tmp_path, recipe):
    with pytest.raises(ConfigError, match="(?s)--config=configs/videomae_k400.py:runlocal .*--config.init_from="):
        train.train_and_evaluate(load_config(recipe, "runlocal"), str(tmp_path / "ft"))
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


@pytest.mark.optimized  # a learning run, compiled as users' runs are; the slow tier (conftest.py)
@pytest.mark.slow
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

    captioning = load_config("captioning_charades", "runlocal")
    captioning.init_from = str(tmp_path / "ft")
    result = train.train_and_evaluate(captioning, str(tmp_path / "caption"), devices=devices)
    assert "Initialised" in capsys.readouterr().out  # the frozen encoder came from the fine-tune
    check_captioning_learned(tmp_path / "caption", result, captioning)
    check_distillation_from_the_finetune(tmp_path, devices, capsys)


def check_distillation_from_the_finetune(tmp_path, devices, capsys):
    """configs/umt.py:runlocal, the chain's fourth command (issue 71): the fine-tune is the frozen teacher of a
    micro student; with two seeds, the alignment loss falls and a linear probe on the mean of the student's tokens
    classifies the 256 eval clips at least 1.5x as well as on its random initial weights; the student then
    fine-tunes through init_from."""
    for seed in (0, 1):
        umt = load_config("umt", "runlocal")
        umt.distill.teacher, umt.seed = str(tmp_path / "ft"), seed
        assert umt.data.num_eval >= 256
        result = train.train_and_evaluate(umt, str(tmp_path / f"umt{seed}"), devices=devices)
        losses = train_losses(tmp_path / f"umt{seed}")
        assert losses[result["step"]] < 0.5 * losses[1], losses
        assert result["probe_linear_top1"] >= 1.5 * result["probe_linear_top1_init"], result
    capsys.readouterr()
    config = load_config("videomae_finetune_k400" if umt.model.student_name == "videomae" else "videomamba_k400",
                         "runlocal")
    config.init_from, config.total_steps = str(tmp_path / "umt0"), 64
    # As `python -m vidjax.main` runs it (no --config.model keys typed): the student's architecture is taken.
    result = train.train_and_evaluate(config, str(tmp_path / "ft_umt"), devices=devices, explicit_keys=("total_steps",))
    assert "Initialised" in capsys.readouterr().out and np.isfinite(result["eval_loss"])  # the student's encoder


def direction_said(caption: str, names: list[str]) -> str | None:
    """The direction a caption names: the longest of `names` it contains as whole words ("up and to the left"
    before "left")."""
    found = [name for name in names if re.search(rf"\b{re.escape(name)}\b", caption)]
    return max(found, key=len) if found else None


def check_captioning_learned(workdir, result, config):
    """BLEU-4 well above always answering the most frequent training caption; the generated captions name the
    direction of motion far above chance; `evaluate --checkpoint` alone reproduces the scores (the constant
    caption is in the checkpoint's metadata); the workdir loads as a captioner that writes the same captions."""
    assert result["eval_bleu4"] >= result["eval_bleu4_constant"] + 0.1, result
    blocks = (workdir / "eval_captions.txt").read_text().split("video ")[1:]
    assert len(blocks) == config.data.num_eval
    source = synthetic.SyntheticVideoSource(config.data.num_eval, num_frames=8, height=32, width=32,
                                            split="validation", variant="captions")
    names = sorted({synthetic.direction_name(label) for label in range(8)})
    generated = {}
    for block in blocks:
        index, line = block.splitlines()[:2]
        generated[int(index)] = line.removeprefix("  generated: ")
    right = [direction_said(text, names) == synthetic.direction_name(int(source[i]["label"]))
             for i, text in generated.items()]
    assert np.mean(right) >= 3 / len(names), (np.mean(right), len(names))  # 3x chance (0.605 measured)

    again = evaluate.evaluate_checkpoint(None, str(workdir))  # over all 8 devices; the run used one
    assert set(again) == {k for k in result if k.startswith("eval_")}
    assert again["eval_loss"] == pytest.approx(result["eval_loss"], rel=1e-6)  # a sum in another order
    assert {k: v for k, v in again.items() if k != "eval_loss"} == {k: result[k] for k in again if k != "eval_loss"}

    model = pretrained.load(workdir)
    clips = np.stack([source[i]["video"] for i in range(4)])
    texts = model.caption(model.preprocess(clips), max_new_tokens=config.caption.max_length - 1,
                          num_beams=config.caption.num_beams)
    assert texts == [generated[i] for i in range(4)]
