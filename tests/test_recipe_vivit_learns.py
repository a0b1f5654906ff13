"""configs/vivit_k400.py:runlocal, exactly as its docstring's command runs it, learns the embedded dataset.

One file per recipe, so that the test runner spreads these few-minute runs over its workers.
"""

import jax
import pytest
from helpers import load_config

from vidjax import train

# A learning run, compiled as users' runs are; the slow tier (conftest.py).
pytestmark = [pytest.mark.optimized, pytest.mark.slow]


def test_vivit_runlocal_reaches_three_times_chance(tmp_path, generate_clips_once):
    config = load_config("vivit_k400", "runlocal")
    assert config.model.model_type == "factorised_encoder" and config.model.classifier == "gap"
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert result["eval_top1"] >= 3 / 8, result  # 3x chance over the 8 motion directions, held-out clips
