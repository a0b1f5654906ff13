"""Strict config arguments, config files and their shared blocks."""

import pytest
from helpers import load_config

from vidjax import config_lib
from vidjax.config_lib import ConfigError


def test_parse_arg_types_and_bare_flags():
    arg = config_lib.parse_arg("variant=S/16,runlocal,steps=5,lr=0.5", variant="B/16", runlocal=False, steps=1,
                               lr=1.0)
    assert arg.to_dict() == {"variant": "S/16", "runlocal": True, "steps": 5, "lr": 0.5}
    assert config_lib.parse_arg(None, runlocal=False).runlocal is False
    assert config_lib.parse_arg("runlocal=False", runlocal=True).runlocal is False


@pytest.mark.parametrize("arg, message", [
    ("runlcoal", "Unknown config argument 'runlcoal'; valid arguments: runlocal, variant"),
    ("runlocal=2", "must be a bool"),
    ("variant", "needs a value"),
])
def test_parse_arg_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.parse_arg(arg, variant="B/16", runlocal=False)


def test_kinetics_recipe_is_the_published_one():
    config = load_config("videomae_k400")
    assert config.model.variant == "B/16" and config.model.num_frames == 16 and config.model.image_size == 224
    assert config.model.tubelet_size == 2 and config.model.mask_ratio == 0.9 and config.data.sampling_rate == 4
    assert (config.model.decoder_depth, config.model.decoder_width or 384) == (4, 384)
    assert config.model.norm_pix_loss and config.batch_size == 2048 and config.num_epochs == 800
    data = config.data
    assert (data.train_crop, tuple(data.crop_scales), data.flip) == ("multi_scale", (1.0, 0.875, 0.75, 0.66), True)
    assert data.short_side == 320 and data.source == "csv" and data.num_classes == 400
    opt = config.optimizer
    assert (opt.b1, opt.b2, opt.weight_decay, opt.warmup_epochs, opt.min_lr) == (0.9, 0.95, 0.05, 40, 1e-5)
    assert opt.base_lr * config.batch_size / opt.lr_batch_base == pytest.approx(1.2e-3)  # 1.5e-4 x 2048/256
    assert load_config("videomae_k400", "variant=L/16").model.variant == "L/16"
    local = load_config("videomae_k400", "runlocal")
    assert local.data.source == "synthetic" and local.model.image_size == local.data.image_size



@pytest.mark.parametrize("name, full, local", [
    ("videomae_k400", "B/16", "Mu/8"), ("videomae_finetune_k400", "B/16", "Mu/8"), ("timesformer_k400", "B/16", "Mu/8"),
    ("vivit_k400", "B/16x2", "Mu/8x2"), ("videomamba_k400", "S/16", "Mu/8"), ("vjepa2", "L/16", "Mu/4")])
def test_variant_is_honoured_with_runlocal(name, full, local):
    """`:runlocal,variant=X` trains X on the embedded dataset; without variant= each form keeps its own size."""
    assert load_config(name).model.variant == full
    assert load_config(name, "runlocal").model.variant == local
    other = "S/16x2" if name == "vivit_k400" else "Ti/16"
    config = load_config(name, f"runlocal,variant={other}")
    assert config.model.variant == other and config.data.source == "synthetic"
    if name in ("timesformer_k400", "vivit_k400"):  # the micro recipes are 2 blocks deep; a named variant keeps its own
        assert load_config(name, "runlocal").model.depth == 2 and config.model.depth == 0


def test_svt_recipe_is_the_published_one():
    """configs/svt_k400.py: SVT's 8x32 ViT-B/16 recipe and its views; :rand_fr the reference's frame counts;
    :runlocal a micro model whose config has no problems."""
    from vidjax import tasks, train

    config = load_config("svt_k400")
    bb = config.model.backbone
    assert (bb.variant, bb.num_frames, bb.image_size, bb.qkv_bias, bb.ln_eps, bb.drop_path) == ("B/16", 8, 224, True,
                                                                                                1e-6, 0.1)
    assert (config.model.head_hidden_dim, config.model.head_bottleneck_dim, config.model.out_dim) == (2048, 256, 65536)
    assert config.data.sampling_rate == 32 and config.batch_size == 32 and config.num_epochs == 20
    opt = config.optimizer
    assert opt.base_lr * config.batch_size / opt.lr_batch_base == pytest.approx(5e-4 * 32 / 256)
    assert (opt.min_lr, opt.weight_decay, opt.weight_decay_end, opt.grad_clip, opt.grad_clip_mode) == (
        1e-6, 0.04, 0.4, 3.0, "per_tensor")
    s = config.svt
    assert (s.teacher_temp, s.student_temp, s.center_momentum, s.teacher_momentum, s.freeze_last_layer_epochs) == (
        0.04, 0.1, 0.9, 0.996, 1.0)
    spec = tasks.training_of("svt").view_spec(config)
    assert spec.view_frames == (8,) * 10 and (spec.global_size, spec.local_size) == (224, 96)
    assert (spec.global_scale, spec.local_scale, spec.jitter_p, spec.grayscale_p) == ((0.4, 1.0), (0.05, 0.4), 0.8,
                                                                                      0.2)
    assert tasks.training_of("svt").view_spec(load_config("svt_k400", "rand_fr")).view_frames == (
        4, 8, 2, 2, 4, 4, 8, 8, 16, 16)
    local = load_config("svt_k400", "runlocal")
    assert local.model.backbone.depth == 2 and local.data.source == "synthetic"
    assert train.config_problems(local) == []


def test_vjepa2_recipe_is_the_published_one():
    """configs/vjepa2.py: V-JEPA 2's ViT-L/16 pre-training as its pretrain-256px-16f.yaml has it; H and g by
    :variant=; :runlocal a micro model whose config has no problems."""
    from vidjax import tasks, train
    from vidjax.data import multiblock
    from vidjax.models import vjepa2

    config = load_config("vjepa2")
    m = config.model
    assert (m.variant, m.num_frames, m.image_size, m.tubelet_size, m.remat, m.num_mask_tokens) == (
        "L/16", 16, 256, 2, "full", 2)
    assert (m.predictor_width, m.predictor_depth, m.predictor_heads) == (384, 12, 12)
    assert vjepa2.dims(load_config("vjepa2", "variant=g/16").model)["num_heads"] == 22
    data = config.data
    assert (data.train_crop, tuple(data.resized_crop_area), tuple(data.resized_crop_ratio), data.flip) == (
        "random_resized", (0.3, 1.0), (0.75, 1.35), False)
    assert config.batch_size == 3072 and config.optimizer.ema_decay == 0
    opt = config.optimizer
    assert opt.base_lr * config.batch_size / opt.lr_batch_base == pytest.approx(5.25e-4)
    assert opt.warmup_start * 5.25e-4 == pytest.approx(1e-4) and opt.schedule == "wsd"
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.grad_clip) == (0.9, 0.999, 1e-8, 0.04, 0.0)
    assert tuple(config.vjepa2.ema) == (0.99925, 0.99925) and config.vjepa2.loss_exp == 1.0
    from vidjax.tasks import vjepa2 as vjepa2_task

    spec = vjepa2_task.mask_spec(config)
    assert spec.masks == multiblock.VJEPA2_MASKS and spec.grid == (8, 16, 16)
    assert spec.keep == ((496, 976), (128, 1440))  # the official batch-of-24 minimum's median counts
    local = load_config("vjepa2", "runlocal")
    assert local.data.source == "synthetic" and local.total_steps == 0
    assert train.config_problems(local) == [] and tasks.training_of(local.task).teacher is not None


def test_an_unknown_embedded_dataset_variant_is_a_config_problem():
    """config.data.synthetic_task names the target the embedded clips carry by its batch key; a task's name there
    (what it held before the variants were named by their keys) is refused before anything is built, with the
    choices."""
    from vidjax.data import pipeline

    config = load_config("videomae_k400", "runlocal")
    assert pipeline.data_config_problems(config) == []
    config.data.synthetic_task = "multilabel"
    (problem,) = pipeline.data_config_problems(config)
    assert "config.data.synthetic_task='multilabel'; choose one of label, labels, targets, captions" in problem
    with pytest.raises(ConfigError, match=r"^config.data.synthetic_task='multilabel'; choose one of") as err:
        config_lib.raise_problems([problem, problem])  # the source of each split finds it too: shown once
    assert str(err.value) == problem


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("resized_crop_area", (1.2, 0.3), "config.data.resized_crop_area=(1.2, 0.3) must be (low, high) with 0 < low <= "
                                      "high <= 1"),
    ("resized_crop_ratio", (0.0, -1.0), "config.data.resized_crop_ratio=(0.0, -1.0) must be (low, high) with 0 < "
                                        "low <= high"),
    ("crop_scales", (), "config.data.crop_scales=() must be one or more shares of the short side in (0, 1]"),
    ("crop_scales", (1.0, 0.0), "config.data.crop_scales=(1.0, 0.0) must be one or more shares"),
    ("short_side", -1, "config.data.short_side=-1 must be >= 0"),
    ("sampling_rate", -1, "config.data.num_frames=16 must be >= 1 and sampling_rate=-1 >= 0")])
def test_crop_and_clip_settings_that_would_fail_in_every_worker_are_config_problems(setting, value, message):
    """Each of these stopped a run at its first clip from files, inside an input worker, with numpy's or math's words
    ("high - low < 0", "math domain error"), and passed unseen on the embedded dataset, whose clips are not cropped;
    now a line that names the setting and its range, before anything is built."""
    from vidjax.data import pipeline

    config = load_config("videomae_k400")
    assert pipeline.data_config_problems(config) == []
    config.data[setting] = value
    (problem,) = pipeline.data_config_problems(config)
    assert problem.startswith(message), problem
