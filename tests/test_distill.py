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
    config = load_config("umt", "runlocal,student=videomae")
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
    config = load_config("umt", "runlocal,student=videomae")
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

    # The run is its student for a fine-tune (`init_from`): a VideoMAE classifier takes the student's encoder.
    from flax import nnx

    from vidjax.models import ParamKeys, videomae

    cfg = config.model.student.copy_and_resolve_references()
    cfg.update(head="classification", use_mean_pooling=True, num_classes=8)
    with nnx.use_eager_sharding(False):
        fresh = nnx.to_pure_dict(nnx.state(videomae.Model(cfg, rngs=ParamKeys(1))))
    fresh = jax.device_put(fresh, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    params, report = pretrained.init_from(tmp_path / "run", "videomae", cfg, fresh)
    assert "encoder/patch_embed/kernel" in report["loaded"] and len(report["loaded"]) == 2 + 2 * 13  # 13 a block
    assert sorted(report["fresh"]) == ["fc_norm/bias", "fc_norm/scale", "head/bias", "head/kernel"]
    np.testing.assert_array_equal(np.asarray(params["encoder"]["patch_embed"]["kernel"]),
                                  np.asarray(result["state"]["params"]["student"]["encoder"]["patch_embed"]["kernel"]))


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


def test_a_teacher_runs_at_the_resolution_that_matches_the_students_grid(teacher_dir):
    """A student on 48 px clips (a 6x6 grid a frame) with the 32 px tower as its teacher: the refusal names
    teacher.image_size=48, and with it the teacher starts from the tower's table resized (transformers'
    interpolate_pos_encoding; tests/test_image_encoder.py checks the outputs against it)."""
    from flax import nnx

    from vidjax import pretrained
    from vidjax.models import ParamKeys, image_encoder

    config = tiny_config(teacher_dir)
    config.model.student.image_size = config.data.image_size = 48
    with pytest.raises(ConfigError, match=r"set --config.model.teacher.num_frames=4 "
                                          r"--config.model.teacher.image_size=48"):
        train.prepare(config, devices=jax.devices()[:1])
    config.model.teacher.image_size = 48
    train.prepare(config, devices=jax.devices()[:1])
    cfg = config.model.teacher
    with nnx.use_eager_sharding(False):
        fresh = nnx.to_pure_dict(nnx.state(image_encoder.Model(cfg, rngs=ParamKeys(0))))
    params, report = pretrained.init_from(teacher_dir, "image_encoder", cfg, fresh)
    assert not report["fresh"] and not report["unused"]
    table = np.asarray(pretrained.load(teacher_dir).params["pos_embed"])
    resized = np.asarray(params["pos_embed"])
    assert table.shape == (17, 32) and resized.shape == (37, 32)
    np.testing.assert_array_equal(resized[0], table[0])  # the class row is kept
    np.testing.assert_allclose(resized, image_encoder.resize_positions(
        {"pos_embed": table}, pretrained.load(teacher_dir).config, cfg)["pos_embed"], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=["dp", "dp_fsdp_tensor"])
def test_sharded_matches_one_device(teacher_dir, mesh):
    """8 simulated devices (data parallel; data x fsdp x tensor, the teacher sharded like the student) give the
    one-device losses and student to 1e-5, and the teacher stays as it was."""
    from helpers import run_steps

    config = tiny_config(teacher_dir)
    single, one = run_steps(config, jax.devices()[:1], steps=3)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    sharded, eight = run_steps(config, jax.devices(), steps=3)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(eight["params"]["student"]), jax.device_get(one["params"]["student"]))


@pytest.mark.slow
def test_exact_resume(teacher_dir, tmp_path, capsys):
    """Stopped after its step-2 checkpoint and resumed: the straight run's losses bit for bit (the masks' draws and
    the teacher included)."""
    from helpers import run_then_resume

    config = tiny_config(teacher_dir)
    config.total_steps, config.checkpoint_every, config.keep_checkpoints, config.log_every = 6, 2, 5, 1
    run_then_resume(config, tmp_path, capsys)


def test_a_timesformer_student_runs_a_tube_masks_tokens_and_refuses_other_masks(teacher_dir):
    """With every position visible, the TimeSformer student's tokens are its own output's, frame by frame (the CLS
    left out); it takes tube masks, and attention masks (other positions in each frame) are refused."""
    from flax import nnx

    from vidjax.models import ParamKeys, timesformer

    cfg = timesformer.default_config()
    cfg.update(variant="Mu/8", width=32, depth=2, num_heads=2, num_frames=4, image_size=32, head="none")
    with nnx.use_eager_sharding(False):
        model = timesformer.Model(cfg, rngs=ParamKeys(0))
    video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
    every = jnp.broadcast_to(jnp.arange(64), (2, 64))
    tokens = model.layer_tokens(video, every, 2)
    full = model(video)["last_hidden_state"][:, 1:]  # (h, w, t) order
    frame_major = jnp.swapaxes(full.reshape(2, 16, 4, 32), 1, 2).reshape(2, 64, 32)
    np.testing.assert_allclose(tokens[-1], frame_major, atol=1e-5)
    # A tube: positions 1, 5, 6 of every frame.
    tube = jnp.asarray([[f * 16 + p for f in range(4) for p in (1, 5, 6)]] * 2)
    kept = model.layer_tokens(video, tube, 1)[0]
    assert kept.shape == (2, 12, 32) and np.isfinite(np.asarray(kept)).all()

    config = tiny_config(teacher_dir)
    student_config(config, "timesformer")
    with pytest.raises(ConfigError, match="config.distill.mask_type='attention': a timesformer student takes tube "
                                          "masks only"):
        train.prepare(config, devices=jax.devices()[:1])
    config.distill.mask_type = "tube"
    assert not train.config_problems(config)


@pytest.mark.slow
def test_a_timesformer_student_learns_with_tube_masks(teacher_dir, tmp_path):
    """The input path's tube masks (the same positions in every frame) feed a TimeSformer student."""
    config = tiny_config(teacher_dir, mask_type="tube")
    config.model.student_name = "timesformer"
    config.model.student = distill.default_config("timesformer").student
    config.model.student.update(variant="Mu/8", width=32, depth=2, num_heads=2, num_frames=4, image_size=32)
    config.total_steps = 8
    train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    losses = train_losses(tmp_path / "run")
    assert 0.0 < losses[8] < losses[1] <= 4.0


@pytest.mark.parametrize("order", ["spatial_first", "temporal_first"])
def test_a_videomamba_student_scans_the_visible_tokens(order):
    """With every token visible the VideoMamba student's last tokens are its own output's (the CLS left out), in
    either scan order; with some dropped, its tokens come back frame by frame in the visible ids' order, the last
    two blocks' streams each normalised."""
    from flax import nnx

    from vidjax.models import ParamKeys, videomamba

    cfg = videomamba.default_config()
    cfg.update(variant="Mu/8", width=32, depth=2, num_frames=4, image_size=32, head="none", scan_chunk=16,
               token_order=order)
    with nnx.use_eager_sharding(False):
        model = videomamba.Model(cfg, rngs=ParamKeys(0))
    video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
    every = jnp.broadcast_to(jnp.arange(64), (2, 64))  # tubelet 1: a 4 x 4 x 4 grid
    np.testing.assert_allclose(model.layer_tokens(video, every, 1)[0],
                               model(video)["last_hidden_state"][:, 1:], atol=1e-5)
    visible = jnp.asarray([[0, 3, 7, 16, 20, 31], [1, 2, 9, 17, 18, 30]])
    two = model.layer_tokens(video, visible, 2)
    assert [y.shape for y in two] == [(2, 6, 32), (2, 6, 32)]
    assert all(np.isfinite(np.asarray(y)).all() for y in two)


@pytest.mark.slow
def test_a_videomamba_student_learns_with_attention_masks(teacher_dir, tmp_path):
    """configs/umt.py:student=videomamba's micro student (temporal-first scans) on the CLIP teacher's attention
    masks: its scans run over the kept tokens only."""
    config = tiny_config(teacher_dir)
    student = load_config("umt", "runlocal,student=videomamba").model.student
    student.update(num_frames=4, tubelet_size=1)
    config.model.student_name, config.model.student = "videomamba", student
    config.model.num_layers = 2
    config.total_steps = 8
    train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    losses = train_losses(tmp_path / "run")
    assert 0.0 < losses[8] < losses[1] <= 4.0


COMMAND_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from test_distill import student_config, tiny_config


def get_config(arg=None):
    config = tiny_config({teacher!r})
    if arg:  # another student family
        student_config(config, arg)
    return config
"""


def student_config(config, name: str) -> None:
    """`config` with a micro student of family `name` (TimeSformer) in place of its VideoMAE one."""
    config.model.student_name = name
    config.model.student = distill.default_config(name).student
    config.model.student.update(variant="Mu/8", width=32, depth=2, num_heads=2, num_frames=4, image_size=32)


BAD_COMMANDS = {  # name: (config argument, flags, what the one line says)
    "not_an_encoder": ("", ["--config.model.teacher_name=gpt2"],
                       "config.model.teacher_name='gpt2' cannot be the teacher"),
    "grid": ("", ["--config.model.teacher.image_size=16"],
             "set --config.model.teacher.num_frames=4 --config.model.teacher.image_size=32"),
    "keep_ratio": ("", ["--config.distill.keep_ratio=1.5"], "give a value in (0, 1]"),
    "student_mask": ("timesformer", [], "config.distill.mask_type='attention': a timesformer student takes tube masks "
                                        "only"),
}


@pytest.fixture(scope="module")
def bad_commands(teacher_dir, tmp_path_factory):
    """{name: (CompletedProcess, workdir)} of `python -m vidjax.main` on each bad setting, run side by side."""
    import concurrent.futures
    import os
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("bad_commands")
    config = folder / "tiny_umt.py"
    config.write_text(COMMAND_CONFIG.format(tests=str(pathlib.Path(__file__).parent), teacher=str(teacher_dir)))
    env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu")

    def run(name):
        arg, flags, _ = BAD_COMMANDS[name]
        workdir = folder / name
        return name, (subprocess.run(
            [sys.executable, "-m", "vidjax.main", f"--config={config}{':' + arg if arg else ''}",
             f"--workdir={workdir}", *flags], cwd=pathlib.Path(__file__).parent.parent, env=env, capture_output=True,
            text=True, timeout=300), workdir)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, BAD_COMMANDS))


@pytest.mark.parametrize("name", BAD_COMMANDS)
def test_bad_input_through_the_command_is_one_line_exit_2_and_nothing_written(bad_commands, name):
    """A teacher that is not an encoder, a teacher grid that cannot match the student's, a keep ratio outside (0, 1],
    a student family that cannot take the mask: `python -m vidjax.main` says so in one line, exit 2, no workdir."""
    done, workdir = bad_commands[name]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and BAD_COMMANDS[name][2] in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not workdir.exists()  # nothing written
