"""V-JEPA 2 pre-training through the one trainer: the masks drawn in the input path, a context encoder that sees only
its tokens, the target encoder's features and momentum, the L1 loss, sharded equals one device, exact resume with
the attentive-probe evaluation, and the config mistakes it names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config, run_steps, run_then_resume

from vidjax import sharding, tasks, train
from vidjax.commands import evaluate
from vidjax.data import multiblock, pipeline
from vidjax.metric_writer import read_metrics
from vidjax.models import vjepa2
from vidjax.tasks import vjepa2 as vjepa2_task


def tiny_config(**overrides):
    """A tiny V-JEPA 2 run on the embedded dataset: width 32, 1 block, 4 x 32 x 32 clips (grid 2 x 8 x 8), batch 8."""
    config = load_config("vjepa2", "runlocal")
    config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, predictor_width=24, predictor_depth=1,
                        predictor_heads=2, num_frames=4)
    config.data.update(num_train=64, num_eval=16, num_frames=4)
    config.batch_size = 8
    config.total_steps = 6
    config.log_every, config.checkpoint_every, config.eval_every = 1, 2, 0
    config.optimizer.base_lr = 1e-3 * config.optimizer.lr_batch_base / 8
    config.optimizer.warmup_epochs = 0.25
    config.update(overrides)
    return config


def first_batch(config):
    source = pipeline.make_source(config.data, "train")
    setup = train.build(config, len(source), sharding.create_mesh(config.mesh, jax.devices()[:1]))
    spec = tasks.training_of("vjepa2").input_spec(config, setup.abstract_model)
    return setup, next(iter(pipeline.make_dataset(config, "train", source, spec)))


def test_the_input_path_draws_fixed_length_multiblock_masks_for_every_clip():
    """Every training batch carries each mask entry's context and target indices, of the entry's fixed lengths,
    ascending, disjoint, inside the grid, and the same spatial blocks at every time step; eval batches carry none."""
    config = tiny_config()
    spec = vjepa2_task.mask_spec(config)
    assert spec.grid == (2, 8, 8) and len(spec.masks) == 2
    _, batch = first_batch(config)
    tokens = 2 * 8 * 8
    for i, (n_context, n_target) in enumerate(spec.keep):
        context, target = batch[f"context_ids_{i}"], batch[f"target_ids_{i}"]
        assert context.shape == (8, n_context) and target.shape == (8, n_target)
        assert context.dtype == np.int32 and target.dtype == np.int32
        for c, t in zip(context, target, strict=True):
            assert (np.diff(c) > 0).all() and (np.diff(t) > 0).all() and not set(c) & set(t)
            assert 0 <= min(c.min(), t.min()) and max(c.max(), t.max()) < tokens
    # Before truncation, a clip's target is its blocks' union, the same positions in every frame (temporal scale 1).
    rng = np.random.default_rng(0)
    for mask in multiblock.VJEPA2_MASKS:
        size = multiblock.block_size(rng, spec.grid, mask)
        starts = multiblock.block_starts(rng, spec.grid, size, 4, mask.num_blocks)
        frames = multiblock.target_masks(spec.grid, size, starts).reshape(4, 2, 64)
        np.testing.assert_array_equal(frames[:, 0], frames[:, 1])
    source = pipeline.make_source(config.data, "eval")
    eval_spec = tasks.training_of("vjepa2").input_spec(config, None)
    eval_batch = next(iter(pipeline.make_dataset(config, "eval", source, eval_spec)))
    assert not any(key.startswith(("context_ids", "target_ids")) for key in eval_batch)


def test_the_context_encoder_sees_only_its_tokens():
    """The context encoder's tokens do not change when the pixels of the other tokens do (no leak of the targets),
    and with every index it gives the full encoder's tokens, in any order (rotary positions go with the index)."""
    cfg = tiny_config().model
    with nnx.use_eager_sharding(False):
        model = vjepa2.Model(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.standard_normal((2, 4, 32, 32, 3)), jnp.float32)
    context = jnp.asarray(np.stack([np.sort(rng.permutation(128)[:40]) for _ in range(2)]), jnp.int32)
    seen = model.encoder(video, keep_ids=context)
    assert seen.shape == (2, 40, 32)
    # Every pixel of the tokens off the context changes.
    grid_mask = np.ones((2, 2, 8, 8), bool)
    for b in range(2):
        grid_mask.reshape(2, -1)[b, np.asarray(context[b])] = False
    pixels = np.repeat(np.repeat(np.repeat(grid_mask, 2, axis=1), 4, axis=2), 4, axis=3)[..., None]
    changed = jnp.where(pixels, video + 5.0, video)
    np.testing.assert_allclose(model.encoder(changed, keep_ids=context), seen, atol=1e-5)
    full = model.encoder(video)
    order = jnp.asarray(np.stack([rng.permutation(128) for _ in range(2)]), jnp.int32)
    np.testing.assert_allclose(model.encoder(video, keep_ids=order),
                               jnp.take_along_axis(full, order[..., None], axis=1), atol=1e-5)


@pytest.mark.slow
def test_the_target_encoder_targets_and_its_momentum():
    """One step: the targets are the EMA encoder's tokens, layer-normed, at the target indices; the loss is their L1
    distance to the predictor's outputs, averaged over the entries; the EMA moves by the scheduled momentum."""
    config = tiny_config()
    config.vjepa2.ema = (0.9, 0.99)
    setup, batch = first_batch(config)
    state = setup.init_state()
    normalised = {"video": (jnp.asarray(batch["video"], jnp.float32) / 255.0 - jnp.asarray(config.model.pixel_mean))
                  / jnp.asarray(config.model.pixel_std)}
    device_batch = {**{k: jnp.asarray(v) for k, v in batch.items()}, **normalised}
    teacher = tasks.training_of("vjepa2").teacher
    fields, carry = teacher.before_update(config, setup, state, device_batch)
    target = nnx.merge(setup.graphdef, state["ema_params"]).encoder(normalised["video"])
    for i in range(2):
        ids = device_batch[f"target_ids_{i}"]
        expected = jnp.take_along_axis(target, ids[..., None], axis=1)
        mean = expected.mean(-1, keepdims=True)
        expected = (expected - mean) / jnp.sqrt(((expected - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(fields[f"target_features_{i}"], expected, atol=1e-5)
    assert 0.5 < float(carry["target_std"]) < 1.5
    loss_fn = tasks.training_of("vjepa2").loss_fn(config)
    model = nnx.merge(setup.graphdef, state["params"])
    loss, metrics = loss_fn(model, {**device_batch, **fields}, None)
    by_hand = [jnp.abs(vjepa2_task.predict_targets(model, normalised["video"], device_batch[f"context_ids_{i}"],
                                                   device_batch[f"target_ids_{i}"], i)
                       - fields[f"target_features_{i}"]).mean() for i in range(2)]
    np.testing.assert_allclose(loss, (by_hand[0] + by_hand[1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_mask_1"], by_hand[1], rtol=1e-5)
    schedule = teacher.ema_schedule(config, 10)
    assert float(schedule(0)) == pytest.approx(0.9) and float(schedule(5)) == pytest.approx(0.945)
    assert float(schedule(10)) == pytest.approx(0.99)
    _, one = run_steps(config, jax.devices()[:1], steps=1)
    one, init = jax.device_get(one), jax.device_get(state)
    expected = jax.tree.map(lambda t, s: 0.9 * t + 0.1 * s, init["ema_params"], one["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), one["ema_params"], expected)


@pytest.mark.slow
def test_accumulation_runs_the_target_encoder_per_micro_batch_and_equals_one_big_batch():
    """2 micro-batches of 4: the target encoder runs inside the accumulation loop on each micro-batch alone (its
    tokens for the whole batch no longer sit beside the step), and the losses, the context encoder and the target
    encoder are one big batch's to 1e-5. With SGD: AdamW turns float noise into whole steps where a gradient is zero
    in exact arithmetic (the keys' bias, which softmax ignores)."""
    config = tiny_config()
    config.optimizer.name = "sgd"
    single, one = run_steps(config, jax.devices()[:1], steps=3)
    config.grad_accum_steps = 2
    accum, two = run_steps(config, jax.devices()[:1], steps=3)
    np.testing.assert_allclose(accum, single, rtol=1e-5)
    one, two = jax.device_get(one), jax.device_get(two)
    for key in ("params", "ema_params"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), two[key], one[key])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1)], ids=["dp", "fsdp"])
def test_sharded_matches_one_device(mesh):
    """8 simulated devices (data parallel, fsdp) give the one-device losses and target encoder to 1e-5."""
    config = tiny_config()
    single, one = run_steps(config, jax.devices()[:1], steps=3)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    sharded, eight = run_steps(config, jax.devices(), steps=3)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(eight["ema_params"]), jax.device_get(one["ema_params"]))


def test_config_problems_are_reported_together():
    config = tiny_config()
    config.optimizer.ema_decay = 0.99
    config.model.num_mask_tokens = 1
    config.vjepa2.loss_exp = 0.0
    text = "\n".join(train.config_problems(config))
    assert "ema_decay" in text and "num_mask_tokens=2" in text and "loss_exp=0.0" in text
    config = tiny_config()
    config.vjepa2.masks = [dict(spatial_scale=(0.5, 0.2))]
    config.model.num_mask_tokens = 1
    assert any("config.vjepa2.masks: BlockMask.spatial_scale" in p for p in train.config_problems(config))
    config = tiny_config()
    del config.vjepa2
    assert any("needs a config.vjepa2 block" in p for p in train.config_problems(config))


@pytest.mark.slow
def test_exact_resume_and_attentive_probe_evaluation(tmp_path, capsys):
    """Stopped after step 2 and resumed: losses, target spreads and target encoder bit-identical to the straight
    run; the attentive probe of the random-init target encoder is logged at step 0 and kept on resume; `evaluate
    --checkpoint` alone reproduces the run's figures."""
    config = tiny_config()
    result, resumed, full, cut = run_then_resume(config, tmp_path, capsys)
    assert {"eval_attentive_top1", "eval_attentive_top5", "eval_attentive_top1_init"} <= result.keys()
    assert 0 <= result["eval_attentive_top1"] <= result["eval_attentive_top5"] <= 1
    rows = {(r["step"], r["split"]): r for r in read_metrics(cut)}
    full_rows = {(r["step"], r["split"]): r for r in read_metrics(full)}
    for step in range(3, 7):
        assert rows[(step, "train")]["target_std"] == full_rows[(step, "train")]["target_std"] > 0.1
    assert rows[(0, "eval")]["eval_attentive_top1_init"] == result["eval_attentive_top1_init"]
    assert resumed["eval_attentive_top1"] == result["eval_attentive_top1"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"]["ema_params"]),
                 jax.device_get(result["state"]["ema_params"]))
    summary = evaluate.evaluate_checkpoint(None, str(full))
    assert summary["eval_attentive_top1"] == pytest.approx(result["eval_attentive_top1"])
