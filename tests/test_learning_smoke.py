"""Learning, checked in the default tier: one short run per kind of task, each the smallest config and step count at
which its training loss falls by a clear margin (the runlocal recipes' learning tests, which train for minutes and
check accuracy against chance, are the slow tier: docs/architecture.md, "Testing").

Each run is the trainer's own jitted step (`train.make_train_step`: the task's loss, its gradients, the optimizer,
an EMA teacher where the task has one) over the embedded dataset's batches from the input path, after the trainer's
start-up (`train.prepare`). A change that breaks a task's learning (its loss's sign, its targets, its gradients, the
optimizer's update) leaves the loss where it started or sends it up, and the test fails: each was seen failing with
its loss's sign flipped.
"""

import jax
import numpy as np
import pytest
from helpers import run_steps
from test_captioning import tiny_config as tiny_captioning_config
from test_contrastive_task import tiny_config as tiny_contrastive_config
from test_finetune import task_config
from test_svt_task import tiny_svt_config
from test_train import tiny_config as tiny_pretrain_config
from test_vjepa2_task import tiny_config as tiny_vjepa2_config

from vidjax import train


def losses_of(config, steps: int) -> np.ndarray:
    """The training losses of `steps` updates of `config` on one device, after the trainer's start-up."""
    devices = jax.devices()[:1]
    config.total_steps = steps  # the learning-rate schedule over these steps
    config.data.num_train = config.batch_size  # one batch of clips, seen at every step: a loss that can fall fast
    config, _, _, _ = train.prepare(config, None, devices)
    losses, _ = run_steps(config, devices, steps=steps)
    assert np.all(np.isfinite(losses)), losses
    return np.asarray(losses)


def assert_falls(losses: np.ndarray, by: float, window: int = 4):
    """The mean of the last `window` losses is below (1 - by) x the mean of the first `window`, in magnitude: every
    task's loss is at least 0 (a cross-entropy, a squared or absolute error, 2 - 2 cos), so a loss that goes negative
    and on down (its sign flipped) fails as one that rises does."""
    first, last = np.abs(losses[:window].mean()), np.abs(losses[-window:].mean())
    assert last < (1 - by) * first, f"the loss went from {first:.4f} to {last:.4f}, not down by {by:.0%}: {losses}"


# The margins are about half the fall seen in each run (the losses' first four steps against their last four, on
# this machine): pre-training 1.12 -> 0.96, classification 2.07 -> 1.74, multi-label 0.68 -> 0.59, regression 0.23 ->
# 0.08, captioning 3.75 -> 3.49, SVT 5.21 -> 3.93, V-JEPA 2 1.00 -> 0.66, contrastive 2.04 -> 1.13.
def test_pretraining_learns():
    assert_falls(losses_of(tiny_pretrain_config(), steps=24), by=0.07)


@pytest.mark.parametrize("task, by", [("classification", 0.08), ("multilabel", 0.07), ("regression", 0.3)])
def test_a_head_task_learns(task, by):
    assert_falls(losses_of(task_config(task), steps=24), by=by)


def test_captioning_learns():
    assert_falls(losses_of(tiny_captioning_config(), steps=24), by=0.035)


def test_svt_learns():
    # The teacher follows the student faster than the recipe's 0.99 (a 24-step run): its targets are ones the
    # student has learnt to predict, and the loss falls past the noise of the views' random crops.
    assert_falls(losses_of(tiny_svt_config(teacher_momentum=0.9), steps=24), by=0.12)


def test_vjepa2_learns():
    assert_falls(losses_of(tiny_vjepa2_config(), steps=24), by=0.17)


def test_contrastive_learns():
    assert_falls(losses_of(tiny_contrastive_config(), steps=24), by=0.22)
