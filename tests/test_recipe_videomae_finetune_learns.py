"""configs/videomae_finetune_k400.py:runlocal learns the embedded dataset as its docstring's two commands run it:
the VideoMAE runlocal pre-training, then the fine-tune from it. Without the pre-training it stops at once, naming
the command. One file per recipe, so that the test runner spreads these few-minute runs over its workers.
"""

import jax
import pytest
from helpers import load_config

from vidjax import train
from vidjax.config_lib import ConfigError


def test_finetune_runlocal_without_init_from_names_the_pretraining_command(tmp_path):
    with pytest.raises(ConfigError, match="(?s)--config=configs/videomae_k400.py:runlocal .*--config.init_from="):
        train.train_and_evaluate(load_config("videomae_finetune_k400", "runlocal"), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def test_pretrain_then_finetune_runlocal_reaches_three_times_chance(tmp_path, generate_clips_once, capsys):
    devices = jax.devices()[:1]
    train.train_and_evaluate(load_config("videomae_k400", "runlocal"), str(tmp_path / "pt"), devices=devices)
    config = load_config("videomae_finetune_k400", "runlocal")
    config.init_from = str(tmp_path / "pt")
    result = train.train_and_evaluate(config, str(tmp_path / "ft"), devices=devices)
    assert "Initialised" in capsys.readouterr().out  # the encoder came from the pre-training run
    assert result["eval_top1"] >= 3 / 8, result  # 3x chance over the 8 motion directions, held-out clips
