"""configs/videoprism.py:recipe=contrastive,runlocal, exactly as its docstring's command runs it, learns the embedded
dataset's captions: trained from scratch on the captioned clips (four paraphrases each), its video and text towers
retrieve each held-out clip from its caption among all 256 at least 3x chance (recall@1; 17x measured, 14x from
video to text, median rank 11 of 256). One file per recipe, so that the test runner spreads these few-minute runs
over its workers.
"""

import jax
import pytest
from helpers import load_config

from vidjax import train

pytestmark = pytest.mark.optimized  # a learning run: compiled as users' runs are (conftest.py)


def test_contrastive_runlocal_retrieves_held_out_clips_by_caption_at_three_times_chance(tmp_path, generate_clips_once):
    config = load_config("videoprism", "recipe=contrastive,runlocal")
    assert config.data.source == "synthetic" and config.data.synthetic_task == "captions"
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    chance = result["eval_recall_at_1_chance"]
    assert chance == 1 / config.data.num_eval
    assert result["eval_recall_at_1"] >= 3 * chance, result  # text-to-video, every held-out clip a candidate
    assert result["eval_v2t_recall_at_1"] >= 3 * chance, result  # and video-to-text
