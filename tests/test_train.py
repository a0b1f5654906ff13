"""The trainer end to end on the embedded dataset: learning, exact resume, sharding, and failure handling."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_sharded_matches_single_device, tiered, train_losses

from vidjax import config_lib, train
from vidjax.models import videomae
from vidjax.train import checkpoint


def tiny_config(**overrides):
    config = config_lib.trainer_config()
    config.model_name = "videomae"
    config.task = "pretrain"
    config.model = videomae.default_config()
    config.model.update(dict(variant="Mu/8", width=32, depth=2, num_heads=2, decoder_width=32, decoder_heads=2,
                             decoder_depth=1, num_frames=4, image_size=32))
    config.data = config_lib.synthetic_data(num_frames=4, image_size=32, num_train=64, num_eval=16)
    config.batch_size = 8
    config.total_steps = 12
    config.optimizer.base_lr = 1e-3 * 256 / 8
    config.optimizer.warmup_epochs = 0.25
    config.log_every = 1
    config.checkpoint_every = 4
    config.eval_every = 0
    config.figure = False
    config.update(overrides)
    return config


@pytest.mark.parametrize("num_workers,prefetch", tiered([(0, 0), (0, 2), (2, 2)], unpack=True))
def test_exact_resume(tmp_path, capsys, num_workers, prefetch):
    """N steps straight vs stopped after k and resumed: bit-identical losses for k+1..N (also with grain workers, and
    with batches prefetched: the data position saved is that of the batches used, not of those read ahead)."""
    config = tiny_config(total_steps=12, checkpoint_every=4, keep_checkpoints=5)
    config.data.num_workers = num_workers
    config.data.prefetch = prefetch
    devices = jax.devices()[:1]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.train_and_evaluate(config, str(full), devices=devices)
    # Stop after k=4: keep only what a run killed after its step-4 checkpoint would have left.
    shutil.copytree(full, cut)
    for step in ("8", "12"):
        shutil.rmtree(cut / "checkpoints" / step)
    capsys.readouterr()
    result = train.train_and_evaluate(config, str(cut), devices=devices)
    assert result["resumed"] and result["trained"]
    assert f"Resuming from checkpoint at step 4 in {cut / 'checkpoints' / '4'}" in capsys.readouterr().out
    a, b = train_losses(full), train_losses(cut)
    assert sorted(b) == list(range(1, 13))  # rows after the restored step were replaced, not duplicated
    for step in range(5, 13):
        assert a[step] == b[step], (step, a[step], b[step])


@pytest.mark.slow
def test_sharded_run_matches_single_device(tmp_path):
    state = assert_sharded_matches_single_device(lambda: tiny_config(total_steps=6, checkpoint_every=6), tmp_path,
                                                 mesh=(2, 4, 1))

    # The trained parameters really are sharded: fsdp splits each embed axis 4 ways, over all 8 devices.
    block = state["params"]["encoder"]["transformer"]["blocks"][0]
    expected = {("mlp", "fc1", "kernel"): ((32, 128), (8, 128)), ("mlp", "fc2", "kernel"): ((128, 32), (128, 8)),
                ("attn", "qkv"): ((32, 3, 2, 16), (8, 3, 2, 16)), ("attn", "proj"): ((2, 16, 32), (2, 16, 8))}
    mu = optax.tree_utils.tree_get(state["opt_state"], "mu")["encoder"]["transformer"]["blocks"][0]
    for path, (shape, shard) in expected.items():
        param, moment = block, mu
        for key in path:
            param, moment = param[key], moment[key]
        assert param.shape == shape and len(param.sharding.device_set) == 8
        assert {s.data.shape for s in param.addressable_shards} == {shard}, path
        assert moment.sharding == param.sharding  # optimizer moments follow their parameter
    norm = block["norm1"]["scale"]
    assert {s.data.shape for s in norm.addressable_shards} == {(32,)}  # norms stay replicated


def nan_update_at(step):
    """An optax stage that turns the update of `step` (1-based) into NaN, inside the jitted step."""
    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        bad = state.count == step - 1
        return (jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates),
                optax.ScaleByScheduleState(count=state.count + 1))

    return optax.GradientTransformation(init, update)


def test_diverged_update_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """Step 8's loss is finite (computed before its update) but its update is NaN: step 8 must not be saved.
    max_skipped_steps=0 stops at the first such step (tests/test_faults.py covers skipping)."""
    config = tiny_config(total_steps=12, checkpoint_every=4, max_skipped_steps=0)
    real = train.optim.make_optimizer
    monkeypatch.setattr(train.optim, "make_optimizer",
                        lambda c, s, *rest: optax.chain(real(c, s, *rest), nan_update_at(8)))
    with pytest.raises(train.NonFiniteLossError,
                       match=r"diverged at step 8: loss [0-9.]+,.*last good checkpoint is step 4"):
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert max(train_losses(tmp_path)) == 7  # the diverged step is not logged as a good one
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    state = checkpoint.Checkpointer(str(tmp_path)).restore(
        4, checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings))
    assert int(state["step"]) == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_config_mismatch_errors():
    with pytest.raises(config_lib.ConfigError, match="does not match config.model.head"):
        train.check_config(tiny_config(task="classification"))
    bad = tiny_config()
    bad.data.num_frames = 8
    with pytest.raises(config_lib.ConfigError, match="config.data gives 8 frames"):
        train.check_config(bad)
    with pytest.raises(config_lib.ConfigError, match="needs 3 devices"):
        train.sharding.create_mesh({"data": 3, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    # The schedule's counts, all named in one message: a 0 log or checkpoint interval was a ZeroDivisionError at the
    # first step.
    with pytest.raises(config_lib.ConfigError) as err:
        train.check_config(tiny_config(log_every=0, checkpoint_every=-1, keep_checkpoints=0))
    message = str(err.value)
    assert "config.log_every=0 must be a whole number >= 1." in message
    assert "config.checkpoint_every=-1 must be a whole number >= 0 (0: only at the end)." in message
    assert "config.keep_checkpoints=0 must be a whole number >= 1." in message
    # Numbers a run would have trained with, wrongly and silently (a negative learning rate, b1 above 1), or failed
    # on deep in a library (a negative seed in grain's shuffle, a 0 stride in the embedded dataset), and a run of no
    # steps, which said that a checkpoint that does not exist had finished it.
    bad = tiny_config(seed=-1, num_epochs=0.0, total_steps=0, memory_limit_gb=-1.0)
    bad.optimizer.update(base_lr=-1e-3, b1=1.5, warmup_epochs=-1.0)
    bad.data.sampling_rate = 0
    with pytest.raises(config_lib.ConfigError) as err:
        train.check_config(bad)
    message = str(err.value)
    assert message.startswith("7 problems with the config"), message
    for line in ("config.seed=-1 must be a whole number >= 0.",
                 "config.num_epochs=0.0 gives the run no steps: set it above 0, or config.total_steps.",
                 "config.memory_limit_gb=-1.0 must be >= 0",
                 "config.optimizer.base_lr=-0.001 must be in [0, inf)",
                 "config.optimizer.b1=1.5 must be in [0, 1) (AdamW's first-moment decay).",
                 "config.optimizer.warmup_epochs=-1.0 must be in [0, inf) (epochs of linear warm-up).",
                 "config.data.sampling_rate=0 spreads a clip over a whole video"):
        assert line in message, (line, message)


def test_classification_task_trains(tmp_path):
    """A classification run; checkpoint_every=0 saves the last step only."""
    config = tiny_config(task="classification", total_steps=8, checkpoint_every=0)
    config.model.head = "classification"
    config.model.num_classes = 5
    with pytest.raises(config_lib.ConfigError, match="config.data.num_classes=8 but config.model.num_classes=5"):
        train.check_config(config)
    config.model.num_classes = config.data.num_classes
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert 0.0 <= result["eval_top1"] <= 1.0 and np.isfinite(result["eval_loss"])
    assert os.listdir(tmp_path / "checkpoints") == ["8"]


def test_unmapped_logical_axis_is_an_error():
    from jax.sharding import PartitionSpec as P

    from vidjax import sharding

    mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
    with pytest.raises(config_lib.ConfigError, match="logical axis 'experts'.*sharding_rules"):
        sharding.logical_to_mesh(P("embed", "experts"), (4, 4), {"embed": "fsdp"}, mesh)
