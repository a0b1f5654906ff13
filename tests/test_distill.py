"""Unmasked-teacher distillation (`vidjax.tasks.distill`, `vidjax.models.distill`): the attention masks keep exactly
the configured count, drawn without replacement in proportion to the teacher's attention; a tiny student learns from
a converted CLIP teacher (the parity fixture's), which stays as it was loaded; and the configs it cannot run are
refused in one line each, before anything is compiled. Default tier."""

import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, train_losses

from vidjax import train
from vidjax.commands.convert import convert
from vidjax.config_lib import ConfigError
from vidjax.models import distill
from vidjax.patches import MaskSpec
from vidjax.tasks import distill as distill_task

CLIP = pathlib.Path(__file__).parent / "fixtures" / "parity" / "clip_vision" / "source"
# The fixture's tower: ViT width 32, 2 blocks, 2 heads, patches of 8 on 32 px (a 4 x 4 grid a frame).
TEACHER = dict(variant="B/8", width=32, depth=2, num_heads=2, mlp_dim=48, num_frames=4, image_size=32)


def inclusion(weights: np.ndarray, keep: int) -> np.ndarray:
    """Each item's probability of being among `keep` drawn without replacement, each draw in proportion to the
    weights of the items left: summed over every ordered draw."""
    p = weights / weights.sum()
    out = np.zeros_like(p)
    for order in itertools.permutations(range(len(p)), keep):
        prob, left = 1.0, 1.0
        for i in order:
            prob *= p[i] / left
            left -= p[i]
        out[list(order)] += prob
    return out


def test_attention_masks_keep_the_count_and_draw_in_proportion_to_the_attention():
    attention = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    draws = 40_000
    for keep in (1, 2):
        mask = distill_task.attention_mask(jax.random.key(keep), jnp.broadcast_to(attention, (draws, 1, 6)), keep)
        kept = ~np.asarray(mask)
        assert (kept.sum(axis=1) == keep).all()  # exactly `keep` a slice: without replacement
        np.testing.assert_allclose(kept.mean(axis=0), inclusion(attention, keep), atol=0.01)
    # keep 1 is the attention itself; keep 2 is not twice it (draws without replacement flatten the largest).
    assert inclusion(attention, 2)[0] < 2 * attention[0]


def test_attention_and_random_masks_have_the_tube_masks_count():
    grid = (4, 4, 4)
    spec = MaskSpec(grid=grid, ratio=0.75)
    attention = jax.random.uniform(jax.random.key(0), (3, 4, 16))
    config = load_config("umt", "runlocal")
    config.distill.keep_ratio = 0.25
    per_slice = distill_task.masked_per_slice(config, grid)
    mask = np.asarray(distill_task.attention_mask(jax.random.key(1), attention, 16 - per_slice))
    assert mask.shape == (3, 64) and (mask.sum(axis=1) == spec.num_masked).all()
    assert (mask.reshape(3, 4, 16).sum(axis=2) == per_slice).all()  # the same count in every slice
    # A zero-attention token is never kept while others can be.
    zero = attention.at[:, :, 0].set(0.0)
    assert np.asarray(distill_task.attention_mask(jax.random.key(2), zero, 4)).reshape(3, 4, 16)[:, :, 0].all()


def tiny_config(teacher_dir, **distill_overrides):
    """A 2-block micro VideoMAE student on 4 x 32 px clips, the fixture's CLIP as its per-frame teacher (a 4 x 4 x 4
    grid each), its 2 blocks aligned; batch 8, 4 steps, no evaluation."""
    config = load_config("umt", "runlocal")
    config.model.teacher_name = "image_encoder"
    config.model.teacher = distill.default_config("videomae", "image_encoder").teacher
    config.model.teacher.update(TEACHER)
    config.model.student.update(num_frames=4, tubelet_size=1, depth=2)
    config.model.num_layers = 2
    config.data.update(num_frames=4, num_train=32, num_eval=8)
    config.distill.update({"teacher": str(teacher_dir), **distill_overrides})
    config.batch_size, config.total_steps = 8, 4
    config.eval_every, config.evals = 0, {}
    return config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "clip"
    convert(from_hf=str(CLIP), out=str(out))
    return out


def test_a_student_learns_from_a_frozen_clip_teacher(teacher_dir, tmp_path):
    config = tiny_config(teacher_dir)
    config.total_steps = 8
    result = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    losses = train_losses(tmp_path / "run")
    assert 0.0 < losses[8] < losses[1] <= 4.0  # 2 - 2 cos lies in [0, 4]
    from vidjax import pretrained

    teacher = pretrained.load(teacher_dir).params
    trained = result["state"]["params"]["teacher"]
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(teacher), jax.tree.leaves(trained),
                                 strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(("change", "message"), [
    (dict(keep_ratio=0.0), "config.distill.keep_ratio=0.0 is the share of each time slice's tokens"),
    (dict(keep_ratio=1.5), "give a value in (0, 1]"),
    (dict(mask_type="block"), "config.distill.mask_type='block': choose one of attention, random, tube"),
    (dict(teacher=""), "config.distill.teacher is empty"),
])
def test_bad_distill_settings_are_refused_in_one_line(teacher_dir, change, message):
    config = tiny_config(teacher_dir, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        train.prepare(config, devices=jax.devices()[:1])


def test_a_teacher_that_is_no_encoder_and_a_grid_that_does_not_match_are_refused(teacher_dir):
    config = tiny_config(teacher_dir)
    config.model.teacher_name = "gpt2"
    with pytest.raises(ConfigError, match="config.model.teacher_name='gpt2' cannot be the teacher: a gpt2 model is "
                                          "not part of a distillation here"):
        train.prepare(config, devices=jax.devices()[:1])
    config = tiny_config(teacher_dir)
    config.model.teacher.image_size = 16
    with pytest.raises(ConfigError, match=r"the teacher gives a 4x2x2 grid .* the student a 4x4x4 one, .* set "
                                          r"--config.model.teacher.num_frames=4 --config.model.teacher.image_size=32"):
        train.prepare(config, devices=jax.devices()[:1])
    config = tiny_config(teacher_dir)
    config.model.student_name = "image_encoder"
    with pytest.raises(ConfigError, match="config.model.student_name='image_encoder' cannot be the student"):
        train.prepare(config, devices=jax.devices()[:1])
