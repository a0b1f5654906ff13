"""A new user's own data and checkpoints: a folder of real videos fine-tuned from a converted checkpoint of another
width with only the source, folder, init_from and batch flags; the checkpoint's stored config reproducing its
evaluation alone; and start-up problems reported all together."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from helpers import load_config
from ml_collections import config_flags
from test_decode import make_video

from vidjax import config_lib, pretrained, train
from vidjax.commands import evaluate
from vidjax.convert import common
from vidjax.metric_writer import read_metrics
from vidjax.models import videomae

ROOT = pathlib.Path(__file__).parent.parent
CLASSES = ("clap", "jump", "wave")
# The converted checkpoint's architecture: none of it is the recipe's (runlocal: Mu/8, width 96, depth 4, 3 heads).
CKPT_MODEL = dict(variant="Mu/8", width=48, depth=1, num_heads=3, mlp_dim=96, ln_eps=1e-5, fc_norm_eps=1e-5,
                  num_frames=8, image_size=32, head="classification", num_classes=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/<class>/*.mp4 (4 a class) and eval/<class>/*.mp4 (2 a class): 12-frame H.264 clips whose grey level
    and noise band differ by class."""
    base = tmp_path_factory.mktemp("own_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("eval", 2)):
        for c, name in enumerate(CLASSES):
            (base / split / name).mkdir(parents=True)
            for k in range(count):
                frames = np.full((12, 36, 52, 3), 40 + 80 * c, np.uint8)
                frames[:, -8:] = rng.integers(0, 256, (12, 8, 52, 3), dtype=np.uint8)
                make_video(base / split / name / f"{name}_{k}.mp4", frames=frames)
    return base


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A `python -m vidjax.convert`-style checkpoint of a randomly initialised VideoMAE of CKPT_MODEL's architecture,
    with a 5-class head."""
    from flax import nnx

    model_config = videomae.default_config()
    model_config.update(CKPT_MODEL)
    with nnx.use_eager_sharding(False):
        model = videomae.Model(model_config, rngs=nnx.Rngs(1))
    flat = {k: np.asarray(v) for k, v in common.flatten_params(nnx.to_pure_dict(nnx.state(model))).items()}
    preprocessing = {"mean": list(model_config.pixel_mean), "std": list(model_config.pixel_std), "num_frames": 8,
                     "image_size": 32}
    path = tmp_path_factory.mktemp("converted") / "tiny_videomae"
    common.write_converted(common.Converted("videomae", model_config, flat, preprocessing,
                                            [f"k{i}" for i in range(5)], {"path": "random init"}), path)
    return path


def run_module(module, *args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # conftest's XLA_FLAGS: 8 CPU devices, as in this process
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def folder_run(folders, converted, tmp_path_factory):
    """The runlocal fine-tuning recipe on the folder, from the converted checkpoint: the documented command with
    only the source, folder, init_from and batch flags."""
    workdir = tmp_path_factory.mktemp("folder_run")
    proc = run_module("vidjax.main", "--config=configs/videomae_finetune_k400.py:runlocal", f"--workdir={workdir}",
                      "--config.data.source=folder", f"--config.data.train_folder={folders / 'train'}",
                      f"--config.data.eval_folder={folders / 'eval'}", f"--config.init_from={converted}",
                      "--config.batch_size=8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout


@pytest.mark.slow
def test_a_class_folder_fine_tunes_from_a_converted_checkpoint_of_another_width(folder_run):
    workdir, out = folder_run
    # The model took the checkpoint's architecture; the classes (and the head) came from the folder tree.
    assert "width 0 -> 48" in out and "depth 0 -> 1" in out and "ln_eps" in out, out
    assert "3 classes in the data" in out
    step_dir = pretrained.latest_step_dir(workdir)
    stored = pretrained.read_config(step_dir)
    model = stored.model
    assert (model.width, model.depth, model.num_heads, model.mlp_dim, model.ln_eps) == (48, 1, 3, 96, 1e-5)
    assert model.num_classes == stored.training.data.num_classes == 3 and stored.class_names == list(CLASSES)
    assert stored.training.model.drop_path == 0.0 and stored.training.model.num_frames == 8  # the recipe's own
    loaded = pretrained.load(workdir)
    assert loaded.params["head"]["kernel"].shape == (48, 3)
    evals = [row for row in read_metrics(workdir) if row["split"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval_top1"] <= 1.0


@pytest.mark.slow
def test_evaluate_with_the_checkpoint_alone_reproduces_the_runs_final_eval(folder_run, tmp_path):
    """`python -m vidjax.evaluate --checkpoint=DIR`: the config stored with the checkpoint gives the model, the data
    and its 3 classes; a --config.KEY flag without --config changes that stored config."""
    workdir, _ = folder_run
    final = [row for row in read_metrics(workdir) if row["split"] == "eval"][-1]
    proc = run_module("vidjax.evaluate", f"--checkpoint={workdir}", "--config.eval_batches=0",
                      f"--out={tmp_path / 'eval.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((tmp_path / "eval.json").read_text())
    keys = [k for k in final if k.startswith("eval_")]
    assert keys and {k: written[k] for k in keys} == {k: final[k] for k in keys}  # exactly
    assert written["num_examples"] == 6
    # The same in Python, with no config at all.
    assert evaluate.evaluate_checkpoint(None, str(workdir)) == {k: final[k] for k in keys}


@pytest.mark.slow
def test_evaluate_names_what_a_converted_checkpoint_lacks_and_what_conflicts(converted, folder_run):
    with pytest.raises(config_lib.ConfigError, match=r"--checkpoint=.*converted checkpoint.*no data to evaluate "
                                                     r"on.*--config=FILE"):
        evaluate.evaluate_checkpoint(None, str(converted))
    # A command line that sets another head for the trained model: both values named, with the flag to drop.
    workdir, _ = folder_run
    config = pretrained.read_config(workdir).training
    config.model.num_classes = 8
    with pytest.raises(config_lib.ConfigError, match=r"num_classes: checkpoint 3, --config.model.num_classes 8. "
                                                     r"Drop those flags"):
        evaluate.evaluate_checkpoint(config, str(workdir), explicit_keys={"model.num_classes"})


def folder_config(folders, converted, **overrides):
    config = load_config("videomae_finetune_k400", "runlocal")
    config.data.update(source="folder", train_folder=str(folders / "train"), eval_folder=str(folders / "eval"))
    config.update({"init_from": str(converted), "batch_size": 8, **overrides})
    return config


def test_chosen_architecture_keys_that_contradict_the_checkpoint_are_listed_together(folders, converted):
    config = folder_config(folders, converted)
    config.model.update(width=60, depth=2)
    with pytest.raises(config_lib.ConfigError) as err:
        train.prepare(config, explicit_keys={"model.width", "model.depth", "model.drop_path"})
    message = str(err.value)
    assert "width: checkpoint 48, --config.model.width 60" in message
    assert "depth: checkpoint 1, --config.model.depth 2" in message and "drop_path" not in message
    # The same config built in Python keeps its values: the shapes then fail to fit, every differing setting named.
    resolved, _, _, mesh = train.prepare(folder_config(folders, converted), explicit_keys=set())
    resolved.model.update(width=60, depth=2)
    fresh = train.build(resolved, 12, mesh).init_params()
    with pytest.raises(config_lib.ConfigError, match=r"(?s)config.init_from=.*parameter .* has shape.*depth: "
                                                     r"checkpoint 1, config.model.depth 2; width: checkpoint 48, "
                                                     r"config.model.width 60"):
        pretrained.init_from(config.init_from, "videomae", resolved.model, fresh)


def test_start_up_problems_come_out_together(folders, converted, tmp_path):
    config = folder_config(folders, converted, batch_size=12)
    config.data.update(num_classes=5, train_crop="centre")
    config.optimizer.ema_decay = 1.0
    with pytest.raises(config_lib.ConfigError) as err:
        train.train_and_evaluate(config, str(tmp_path / "run"), explicit_keys={"data.num_classes"})
    message = str(err.value)
    assert message.startswith("5 problems with the config"), message  # the head follows the chosen count
    assert "ema_decay=1.0" in message and "train_crop='centre'" in message
    for split in ("train", "eval"):
        assert f"{split}_folder=" in message and "has 3 class folders (clap, jump, wave) but config.data." \
            "num_classes=5; set --config.data.num_classes=3" in message
    assert "config.batch_size=12 must be divisible by the number of processes (1) and of devices (8)" in message
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_a_batch_larger_than_the_data_says_the_largest_that_fits(folders, converted):
    config = folder_config(folders, converted, batch_size=64)
    with pytest.raises(config_lib.ConfigError, match=r"train split \(config.data.train_folder=.*\) has 12 videos, "
                                                     r"fewer than one batch of config.batch_size=64; the largest "
                                                     r"batch size that fits .* 8 device.* is 8: --config.batch_size=8"):
        train.prepare(config, explicit_keys=set())
    config.data.num_samples = 2  # two clips a video: 12 videos fill 24 clips
    with pytest.raises(config_lib.ConfigError, match=r"\(32 videos x 2 clips each\).* is 24: --config.batch_size=24"):
        train.prepare(config, explicit_keys=set())


def test_class_count_inference_and_the_head():
    from vidjax.data import pipeline

    data = config_lib.data_config(source="csv")
    listed = type("Listed", (), {"class_names": None, "num_classes": 4})()  # a list whose largest label is 3
    named = type("Named", (), {"class_names": ["a", "b", "c", "d", "e"]})()
    assert pipeline.resolve_num_classes(data, {"train": listed, "eval": listed}) == 4
    assert pipeline.resolve_num_classes(data, {"train": listed, "eval": named}) == 5
    with pytest.raises(config_lib.ConfigError, match="splits disagree.*shows 5 classes.*shows 2 classes"):
        pipeline.resolve_num_classes(data, {"train": named, "eval": type("Two", (), {"class_names": ["a", "b"]})()})
    data.num_classes = 6
    with pytest.raises(config_lib.ConfigError, match=r"shows 5 classes \(a, b, c, d, e\), but "
                                                     r"config.data.num_classes=6: set --config.data.num_classes=5"):
        pipeline.resolve_num_classes(data, {"train": named})


def test_command_line_keys(monkeypatch):
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    argv = ["prog", f"--config={ROOT / 'configs/videomae_finetune_k400.py'}:runlocal,variant=Ti/16",
            "--config.model.width=48", "--config.data.source=folder"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags finds the --config.KEY flags in sys.argv
    values(argv)
    keys = config_lib.command_line_keys(values["config"])
    assert keys == {"model.width", "data.source", "model.variant"}
    assert config_lib.chosen(keys, "model.width") and not config_lib.chosen(keys, "model.depth")
    assert config_lib.chosen({"model"}, "model.depth") and config_lib.chosen(None, "anything")


def test_the_synthetic_source_keeps_its_count_and_a_python_config_is_taken_as_given(tmp_path):
    config = load_config("videomae_finetune_k400", "runlocal")
    config.needs_init_from = ""
    resolved, train_source, _, _ = train.prepare(config, devices=jax.devices()[:1])
    assert resolved.data.num_classes == resolved.model.num_classes == 8 and len(train_source.class_names) == 8
    config.model.num_classes = 3  # a Python config's explicit head that disagrees with the data's count
    with pytest.raises(config_lib.ConfigError, match="config.data.num_classes=8 but config.model.num_classes=3"):
        train.prepare(config, devices=jax.devices()[:1])
