"""Kinetics label spaces (vidjax.data.kinetics) and evaluating a K710 head on K400 / K600 / K700 through VideoMAE V2's
official maps (config.eval_label_space)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vidjax import config_lib, evaluators, tasks, train
from vidjax.data import kinetics


@pytest.mark.parametrize("space, count", [("k400", 400), ("k600", 600), ("k700", 700), ("k710", 710)])
def test_each_space_has_its_class_count_of_distinct_names(space, count):
    names = kinetics.class_names(space)
    assert len(names) == count == len(set(names))
    assert kinetics.space_for(count) == space
    assert kinetics.space_of(names) == space


@pytest.mark.parametrize("dst", ["k400", "k600", "k700"])
def test_k710_map_picks_the_output_of_the_same_class(dst):
    index = kinetics.label_map("k710", dst)
    k710, target = kinetics.class_names("k710"), kinetics.class_names(dst)
    assert index.shape == (len(target),) and len(set(index.tolist())) == len(target)
    assert [k710[i] for i in index] == list(target)
    logits = np.arange(2 * 710, dtype=np.float32).reshape(2, 710)
    np.testing.assert_array_equal(kinetics.logits_in(logits, "k710", dst), logits[:, index])


def test_k400_classes_are_the_first_400_of_k710_in_another_order():
    # K710 lists K400's classes first (sorted differently), then the later releases' new ones.
    assert sorted(kinetics.label_map("k710", "k400").tolist()) == list(range(400))
    assert kinetics.class_names("k400")[:3] == ("abseiling", "air drumming", "answering questions")


def test_maps_that_do_not_exist_say_which_do():
    with pytest.raises(ValueError, match="only K710 maps to K400, K600 and K700"):
        kinetics.label_map("k400", "k710")
    with pytest.raises(ValueError, match="Unknown Kinetics label space 'k500'"):
        kinetics.class_names("k500")
    with pytest.raises(ValueError, match="Logits have 400 classes; the k710 label space has 710"):
        kinetics.logits_in(np.zeros((1, 400)), "k710", "k400")
    np.testing.assert_array_equal(kinetics.label_map("k400", "k400"), np.arange(400))
    assert kinetics.space_for(8) is None and kinetics.space_of(["a", "b"]) is None


class _K710Head:
    """A stand-in model with a 710-way head: logits from the clip's mean pixel and a fixed per-class offset."""

    def __init__(self):
        self.offset = jnp.asarray(np.random.default_rng(0).standard_normal(710), jnp.float32)

    def __call__(self, video):
        return {"logits": jnp.mean(video, axis=(1, 2, 3, 4))[:, None] + self.offset[None]}


def _config(space: str, num_classes: int = 710) -> ml_collections.ConfigDict:
    config = config_lib.load_config_file("configs/videomae_v2_finetune.py", "runlocal")
    config.model.num_classes = config.data.num_classes = num_classes
    config.eval_label_space = space
    return config


def _eval_outputs(config, model, batch):
    """The classification evaluator's per-example outputs of one batch (`Evaluator.batch_outputs`)."""
    context = train.eval_context(config, None, metadata={}, sources={})  # the task's spec and readout, handed in
    return evaluators.get("classification")(context).batch_outputs(model, batch)


def test_eval_scores_k710_outputs_in_k400_order_over_views():
    video = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 2, 4, 4, 3)), jnp.float32)  # (B, views, ...)
    batch = {"video": video, "label": jnp.asarray([0, 5, 399])}
    model = _K710Head()
    out = _eval_outputs(_config("k400"), model, batch)
    assert out["scores"].shape == (3, 400)
    logits = np.asarray(model(video.reshape(6, *video.shape[2:]))["logits"]).reshape(3, 2, 710)
    mapped = logits[..., kinetics.label_map("k710", "k400")]
    expected = np.exp(mapped - mapped.max(-1, keepdims=True))
    expected = (expected / expected.sum(-1, keepdims=True)).mean(1)
    np.testing.assert_allclose(np.asarray(out["scores"]), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(out["loss"]), -np.log(expected[np.arange(3), [0, 5, 399]]), rtol=1e-5)
    # Without a label space the head's 710 classes are scored as they are.
    assert _eval_outputs(_config(""), model, batch)["scores"].shape == (3, 710)


def _evals_problems(config: ml_collections.ConfigDict) -> list[str]:
    return evaluators.config_problems(config, tasks.training_of(config.task))


def test_eval_label_space_needs_a_k710_head_and_a_known_release():
    assert _evals_problems(_config("k600")) == []  # the classification evaluator's label_space
    (problem,) = _evals_problems(_config("k400", num_classes=8))
    assert "config.model.num_classes=8; set it to 710" in problem
    (problem,) = _evals_problems(_config("k500"))
    assert "config.eval_label_space='k500'" in problem and "k400, k600 or k700" in problem
