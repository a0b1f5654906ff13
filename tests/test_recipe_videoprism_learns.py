"""configs/videoprism.py's two runlocal recipes for its first two commands, exactly as its docstring runs them:
- recipe=contrastive learns the embedded dataset's captions: trained from scratch on the captioned clips (four
  paraphrases each), its video and text towers retrieve each held-out clip from its caption among all 256 at least 3x
  chance (recall@1; 17x measured, 14x from video to text, median rank 11 of 256);
- the default recipe, the pooler, trains its attention-pooling classifier on that run's frozen encoder to at least 3x
  chance top-1 on the held-out scene-cue clips (0.559 measured; 0.504 on a frozen random-init encoder, the docstring).
One file per recipe, so that the test runner spreads these few-minute runs over its workers.
"""

import jax
import pytest
from helpers import load_config

from vidjax import train

# A learning run, compiled as users' runs are; the slow tier (conftest.py).
pytestmark = [pytest.mark.optimized, pytest.mark.slow]


def test_contrastive_runlocal_retrieves_by_caption_and_its_frozen_encoder_trains_the_pooler_to_three_times_chance(
        tmp_path, generate_clips_once, capsys):
    config = load_config("videoprism", "recipe=contrastive,runlocal")
    assert config.data.source == "synthetic" and config.data.synthetic_task == "captions"
    result = train.train_and_evaluate(config, str(tmp_path / "clip"), devices=jax.devices()[:1])
    chance = result["eval_recall_at_1_chance"]
    assert chance == 1 / config.data.num_eval
    assert result["eval_recall_at_1"] >= 3 * chance, result  # text-to-video, every held-out clip a candidate
    assert result["eval_v2t_recall_at_1"] >= 3 * chance, result  # and video-to-text

    pooler = load_config("videoprism", "runlocal")
    assert pooler.model.freeze_encoder and pooler.data.synthetic_scene_cue and pooler.data.num_classes == 8
    pooler.init_from = str(tmp_path / "clip")
    result = train.train_and_evaluate(pooler, str(tmp_path / "pooler"), devices=jax.devices()[:1])
    assert "Initialised" in capsys.readouterr().out  # the frozen encoder came from the contrastive run
    assert result["eval_top1"] >= 3 / 8, result  # 3x chance over the 8 motion directions, held-out clips
