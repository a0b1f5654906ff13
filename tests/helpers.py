"""Helpers shared by the tests: config files, losses from metrics.jsonl, and the sharded-vs-single-device check."""

import pathlib

import jax
import numpy as np

from vidjax import config_lib, train
from vidjax.metric_writer import read_metrics


def load_config(name, arg=None):
    """`get_config(arg)` of configs/<name>.py."""
    return config_lib.load_config_file(str(pathlib.Path(__file__).parent.parent / "configs" / f"{name}.py"), arg)


def train_losses(workdir):
    return {row["step"]: row["loss"] for row in read_metrics(workdir) if row["split"] == "train"}


def assert_sharded_matches_single_device(make_config, tmp_path, mesh=(2, 2, 2)):
    """Trains `make_config()` on 1 device and on all 8 with mesh (data, fsdp, tensor); losses agree to rtol 1e-5.

    Returns the 8-device final state, for checks of how its parameters are sharded.
    """
    train.train_and_evaluate(make_config(), str(tmp_path / "one"), devices=jax.devices()[:1])
    sharded = make_config()
    sharded.mesh.data, sharded.mesh.fsdp, sharded.mesh.tensor = mesh
    assert jax.device_count() == 8
    state = train.train_and_evaluate(sharded, str(tmp_path / "eight"))["state"]
    one, eight = train_losses(tmp_path / "one"), train_losses(tmp_path / "eight")
    assert sorted(one) == sorted(eight) and one, (one, eight)
    for step in one:
        np.testing.assert_allclose(eight[step], one[step], rtol=1e-5, err_msg=f"step {step}")
    return state
