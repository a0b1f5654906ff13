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
    ("vivit_k400", "B/16x2", "Mu/8x2"), ("videomamba_k400", "S/16", "Mu/8")])
def test_variant_is_honoured_with_runlocal(name, full, local):
    """`:runlocal,variant=X` trains X on the embedded dataset; without variant= each form keeps its own size."""
    assert load_config(name).model.variant == full
    assert load_config(name, "runlocal").model.variant == local
    other = "S/16x2" if name == "vivit_k400" else "Ti/16"
    config = load_config(name, f"runlocal,variant={other}")
    assert config.model.variant == other and config.data.source == "synthetic"
    if name in ("timesformer_k400", "vivit_k400"):  # the micro recipes are 2 blocks deep; a named variant keeps its own
        assert load_config(name, "runlocal").model.depth == 2 and config.model.depth == 0
