"""Memory controls: gradient accumulation equals one big batch, remat policies rematerialise each block of every
model family (and leave the maths unchanged: here for dots_saveable, in test_strategies for "full"), and the
compiled step's memory is reported and checked before the first step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config, run_steps, tiny_family_config

from vidjax import train
from vidjax.config_lib import ConfigError
from vidjax.models import get_model, layers, vjepa2

FAMILIES = ("videomae", "timesformer", "vivit", "videomamba")


def assert_trees_close(a, b, rtol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def test_gradient_accumulation_equals_one_big_batch():
    """Batch 8 in one piece vs 4 micro-batches of 2 (on a 2-way data mesh): same losses and parameters to 1e-5."""
    # One encoder block: compiling the two steps is the test's time (10 CPU s, 13 with the tiny model's two).
    one_losses, one = run_steps(tiny_family_config("videomae", depth=1), jax.devices()[:2], steps=2)
    config = tiny_family_config("videomae", depth=1)
    config.grad_accum_steps = 4
    accum_losses, accum = run_steps(config, jax.devices()[:2], steps=2)
    np.testing.assert_allclose(accum_losses, one_losses, rtol=1e-5)
    assert_trees_close(accum["params"], one["params"], rtol=1e-5)
    assert_trees_close(accum["opt_state"], one["opt_state"], rtol=1e-5)


@pytest.mark.parametrize("k", [1, 4])
def test_a_batch_in_host_memory_trains_as_one_on_the_chips(k):
    """config.batch_memory="host": the global batch stays in pinned host memory, folded into its micro-batches, each
    copied to the chips when the loop reaches it. The same rows make each micro-batch as from a batch on the chips, so
    the losses and the state after two steps are the same (k micro-batches on a 2-way data mesh)."""
    config = tiny_family_config("videomae", depth=1)
    config.grad_accum_steps = k
    chips_losses, chips = run_steps(config, jax.devices()[:2], steps=2)
    config.batch_memory = "host"
    mesh = train.sharding.create_mesh(config.mesh, jax.devices()[:2])
    folded = train.batch_putter(config, mesh)({"x": np.arange(8 * 2 * 3, dtype=np.int32).reshape(8, 2, 3)})["x"]
    assert folded.rows.shape == (k, 8 // k, 8, 128) and folded.rows.sharding.memory_kind == "pinned_host"
    assert folded.row_shape == (2, 3)  # micro-batch k - 1: rows k - 1, 2k - 1, ..., zero-padded to a tile
    np.testing.assert_array_equal(np.asarray(folded.rows)[-1].reshape(8 // k, -1)[:, :6],
                                  np.arange(48).reshape(8 // k, k, 6)[:, -1])
    host_losses, host = run_steps(config, jax.devices()[:2], steps=2)
    np.testing.assert_allclose(host_losses, chips_losses, rtol=1e-6)
    assert_trees_close(host["params"], chips["params"], rtol=1e-6)
    assert_trees_close(host["opt_state"], chips["opt_state"], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "bool", "bfloat16", "int32", "float32"])
def test_a_folded_batch_gives_each_micro_batch_its_rows_back(dtype):
    """A batch array kept in host memory is folded into micro-batches with each row's elements packed into a whole
    TPU tile of 32-bit words (15 elements padded); micro-batch i comes back on the chips as rows i, i + k, ... in
    their own shape and dtype, bit for bit."""
    import ml_dtypes

    k, rows = 4, 8
    values = np.random.default_rng(0).normal(size=(rows, 3, 5)) * 100
    x = values > 0 if dtype == "bool" else values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    folded = train.fold_micro_batches({"x": x}, k)["x"]
    assert folded.rows.shape == (k, rows // k, 8, 128) and folded.rows.dtype.itemsize == 4  # one tile of words
    on_chips = train.sharding.batch_sharding(train.sharding.create_mesh({"data": 2}, jax.devices()[:2]))
    for i in range(k):
        micro = jax.jit(lambda rows, i=i: train.Folded(rows, folded.row_shape, folded.dtype).micro_batch(i, on_chips))(
            folded.rows)
        assert micro.dtype == x.dtype and micro.shape == (rows // k, 3, 5)
        np.testing.assert_array_equal(np.asarray(micro), x[i::k])


def test_batch_memory_is_device_or_host():
    config = tiny_family_config("videomae")
    config.batch_memory = "hbm"
    with pytest.raises(ConfigError, match=r"config.batch_memory='hbm': 'device' \(the step's global batch on the "
                                          r"chips\) or 'host'"):
        train.host_batch(config)


def test_gradient_accumulation_must_divide_the_batch():
    config = tiny_family_config("videomae")
    mesh = train.sharding.create_mesh({"data": 2}, jax.devices()[:2])
    for k in (3, 8, 0):  # 8 does not split over 2 shards: micro-batches of 1
        config.grad_accum_steps = k
        with pytest.raises(ConfigError, match=f"config.grad_accum_steps={k} must be >= 1 and split"):
            train.check_grad_accum(config, mesh)


def test_device_pixel_micro_batches_take_whole_videos_with_their_clips_rows():
    """A device-pixel batch holds one row a video (its planes, its num_samples crops) and num_samples rows a video for
    its clips' fields (masks, labels), video-major: each micro-batch takes whole videos with their own clips' rows.
    The loss here is zero only where every clip's label row is its own video's; a micro-batch count that does not
    divide the videos is refused with the fix."""
    videos, samples = 8, 3
    ids = jnp.arange(videos, dtype=jnp.float32)
    batch = {"planes_y": jnp.broadcast_to(ids[:, None, None, None], (videos, 1, 2, 2)).astype(jnp.uint8),
             "crop_box": jnp.zeros((videos, samples, 4)), "crop_flip": jnp.zeros((videos, samples), bool),
             "labels": jnp.repeat(ids, samples)}  # the video's id on each of its clips' rows
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss_fn(model, micro, key):
        assert micro["crop_box"].shape[0] * samples == micro["labels"].shape[0]
        clips = jnp.repeat(micro["planes_y"][:, 0, 0, 0].astype(jnp.float32), samples)
        miss = jnp.mean((clips - micro["labels"]) ** 2)
        return miss + 0.0 * model.kernel[...].sum(), {"miss": miss}

    mesh = train.sharding.create_mesh({"data": 2}, jax.devices()[:2])
    for k in (1, 2, 4):
        (loss, aux), _ = train.loss_and_grads(loss_fn, graphdef, params, batch, jax.random.key(0), k, mesh)
        assert float(aux["miss"]) == 0.0, k
        # The same micro-batches from a batch folded into them in host memory (config.batch_memory="host").
        folded = train.batch_putter(config_with(k, "host"), mesh)(jax.tree.map(np.asarray, batch))
        (loss, aux), _ = train.loss_and_grads(loss_fn, graphdef, params, folded, jax.random.key(0), k, mesh,
                                              in_host_memory=True)
        assert float(aux["miss"]) == 0.0, k
    with pytest.raises(ConfigError, match=r"config.grad_accum_steps=3 must divide the batch's 8 videos \(batch_size "
                                          r"/ data.num_samples, with device pixels each micro-batch takes whole"):
        train.loss_and_grads(loss_fn, graphdef, params, batch, jax.random.key(0), 3, mesh)
    with pytest.raises(ConfigError, match=r"config.grad_accum_steps=4 must divide the batch's 2 videos"):
        train.fold_micro_batches(jax.tree.map(lambda x: np.asarray(x)[:2 * x.shape[0] // videos], batch), 4)


def config_with(k, batch_memory):
    config = tiny_family_config("videomae")
    config.grad_accum_steps, config.batch_memory, config.batch_size = k, batch_memory, 8
    return config


def count_remat(model_name, remat):
    """Rematerialised regions in the traced forward pass of a tiny `model_name` model."""
    config = tiny_family_config(model_name, remat=remat)
    with nnx.use_eager_sharding(False):
        model = get_model(model_name).Model(config.model, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    video = jax.ShapeDtypeStruct((2, 4, 32, 32, 3), np.float32)
    mask = jax.ShapeDtypeStruct((2, model.encoder.num_tokens), bool) if model_name == "videomae" else None
    jaxpr = jax.make_jaxpr(lambda s, v, m: nnx.merge(graphdef, s)(v, m))(state, video, mask)
    return len(re.findall(r"\b(?:checkpoint|remat2)\[", str(jaxpr)))  # how jaxprs print jax.checkpoint


@pytest.mark.parametrize("model_name", FAMILIES)
def test_remat_is_per_block(model_name):
    """One rematerialised region per block under either policy. That "full" remat trains like no remat (losses to
    1e-5) is checked for every family by test_strategies, whose fsdp + tensor runs rematerialise."""
    depth = 2 + (model_name == "videomae")  # VideoMAE: 2 encoder blocks and 1 decoder block
    inner = count_remat(model_name, "none")  # VideoMamba's chunked scan remats its own chunks
    assert count_remat(model_name, "full") == count_remat(model_name, "dots_saveable") == inner + depth


@pytest.mark.slow
def test_dots_saveable_trains_like_no_remat():
    # One block, rematerialised or not: compiling the two steps is the test's time (6 CPU s, 11 with two blocks).
    reference, _ = run_steps(tiny_family_config("timesformer", depth=1), jax.devices()[:1])
    remat, _ = run_steps(tiny_family_config("timesformer", depth=1, remat="dots_saveable"), jax.devices()[:1])
    np.testing.assert_allclose(remat, reference, rtol=1e-5)


def test_unknown_remat_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="config.model.remat='some'; choose one of none, full, dots_saveable"):
        layers.check_remat("some")


@pytest.mark.slow
def test_memory_reported_before_the_first_step_and_checked(tmp_path, capsys):
    config = tiny_family_config("videomae")
    config.update(total_steps=1, checkpoint_every=1, figure=False, eval_batches=1)
    train.train_and_evaluate(config, str(tmp_path / "fits"), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    report = out.index("Memory per device (train step): state and batch")
    assert report < out.index("First step (compilation included)")
    assert "(no device limit reported)" in out  # the CPU backend has no limit

    config.memory_limit_gb = 1e-4  # about 100 KiB: the tiny model's state alone is larger
    with pytest.raises(ConfigError, match=r"The train step needs [0-9.]+ GiB per device .* \(config.memory_limit_gb\)"
                                          r"\. To fit: raise config.grad_accum_steps"):
        train.train_and_evaluate(config, str(tmp_path / "small"), devices=jax.devices()[:1])
    assert not (tmp_path / "small" / "checkpoints").exists() or not any((tmp_path / "small" / "checkpoints").iterdir())


class FakeDevice:
    """A device that reports a memory limit, as GPUs and TPUs do."""

    device_kind = "Fake accelerator"

    def __init__(self, limit):
        self.limit = limit

    def memory_stats(self):
        return {"bytes_limit": self.limit}


def test_memory_limit_reported_by_the_device():
    config = tiny_family_config("timesformer")
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    state = jax.eval_shape(setup.init_state)
    batch = {"video": jax.ShapeDtypeStruct((8, 4, 32, 32, 3), np.uint8),
             "label": jax.ShapeDtypeStruct((8,), np.int32), "decode_failures": jax.ShapeDtypeStruct((8,), np.int32)}
    compiled = train.make_train_step(config, setup).lower(state, batch).compile()
    report = train.memory_report(config, compiled, FakeDevice(2**40))
    assert report["total_bytes"] >= report["temp_bytes"] > 0 and report["argument_bytes"] > 0
    with pytest.raises(ConfigError, match="but Fake accelerator has 0.00 GiB\\. To fit"):
        train.memory_report(config, compiled, FakeDevice(1000))


def test_recipes_accept_the_memory_keys():
    config = load_config("videomae_k400", "runlocal")
    config.model.remat, config.grad_accum_steps, config.memory_limit_gb = "full", 2, 16.0
    train.check_config(config)


@pytest.mark.slow
def test_bench_reports_remat_grad_accum_and_memory():
    """--remat / --grad_accum reach the benchmarked step; micro-batches shrink the compiled temporaries."""
    from vidjax.bench import step as bench

    results = {}
    for remat, accum in (("none", 1), ("full", 4)):
        # Batch 32: 4 micro-batches of 8 over the 8 simulated devices; 8 x 64 x 64 clips, so that activations
        # rather than the parameter-sized buffers dominate the temporaries. One encoder and one decoder block: the
        # test's time is compiling (the test took 14 CPU s, 40 with Mu's 4 + 4 blocks), and the temporaries shrink
        # as much (to 0.45 of them; 0.42 with 4 + 4).
        config = bench.bench_config("videomae", "Mu/8", 8, 64, 32, "pretrain", "float32", 10, remat, accum)
        config.model.update(depth=1, decoder_depth=1)
        assert config.model.remat == remat and config.grad_accum_steps == accum
        results[accum] = bench.time_vidjax(config, "pretrain", steps=1, warmup=0)
        assert results[accum]["seconds_per_step"] > 0 and results[accum]["argument_bytes"] > 0
    assert 0 < results[4]["temp_bytes"] < 0.6 * results[1]["temp_bytes"]


# XLA:CPU hands some fusions to YNNPACK (a dense attention's products and softmax, for one) and does not count what
# YNNPACK holds inside them; compiled without those fusions, XLA's plan holds every buffer (docs/performance.md,
# "V-JEPA 2 long clips").
EVERY_BUFFER_PLANNED = {"xla_cpu_experimental_ynn_fusion_type": ""}


def encoder_temp_bytes(frames, attention_impl):
    """XLA's temporaries for V-JEPA 2's encoder (Mu/16 narrowed to one block of 3 heads) on one float32 clip of
    `frames` x 128 x 128: frames / 2 x 64 tokens. Compiled only."""
    cfg = vjepa2.default_config()
    cfg.update(variant="Mu/16", depth=1, predictor=False, num_frames=frames, image_size=128,
               attention_impl=attention_impl)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: vjepa2.Model(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, video: nnx.merge(graphdef, state)(video)["last_hidden_state"])
    video = jax.ShapeDtypeStruct((1, frames, 128, 128, 3), jnp.float32)
    compiled = forward.lower(state, video).compile(compiler_options=EVERY_BUFFER_PLANNED)
    return compiled.memory_analysis().temp_size_in_bytes


def test_long_clip_inference_memory_is_linear_in_frames():
    """Long clips at bounded memory: at 2,048 and 4,096 tokens the backend's attention rule ("auto": blockwise at
    these lengths) keeps the encoder's temporaries linear in the frames and below the score matrices a dense
    attention holds; dense attention's, the check that these figures see score matrices at all, grow fourfold."""
    scores = 3 * 4096**2 * 4  # one layer's score matrices at 4,096 tokens, 3 heads, float32
    auto = [encoder_temp_bytes(frames, "auto") for frames in (64, 128)]
    assert auto[1] < 2.3 * auto[0] and auto[1] < scores / 2, auto
    dense = [encoder_temp_bytes(frames, "heads_major") for frames in (64, 128)]
    assert dense[1] > 3.5 * dense[0] and dense[1] > scores, dense



@pytest.mark.parametrize("k", [1, 4])
def test_mixup_and_cutmix_are_made_per_micro_batch_with_its_key(k):
    """Mixing is made inside the micro-batch loop, as the published recipes mix each GPU's batch: at
    grad_accum_steps=1 the step's loss is the whole batch mixed with the step's key (the step is unchanged); with k
    micro-batches it is the mean over micro-batches i (rows i, i + k, ...) each mixed with fold_in(key, i), so only
    one micro-batch's mixed float32 clips are alive at a time (the whole batch's were: a VideoMAE-S/16 fine-tune on
    one v6e chip needed 21 GiB at 2 clips a micro-batch and at 8 alike)."""
    from vidjax import sharding, tasks
    from vidjax.data import pipeline

    config = tiny_family_config("timesformer", depth=1)
    config.data.pixels = "host"
    config.loss.mixup_alpha, config.loss.cutmix_alpha, config.loss.mixup_prob = 0.8, 1.0, 1.0
    config.grad_accum_steps = k
    mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
    source = pipeline.make_source(config.data, "train")
    spec = tasks.training_of(config.task)
    setup = train.build(config, len(source), mesh)
    batch = next(iter(pipeline.make_dataset(config, "train", source, spec.input_spec(config, setup.abstract_model))))
    batch = sharding.global_batch(batch, sharding.batch_sharding(mesh))
    state = setup.init_state()
    model, loss_fn = nnx.merge(setup.graphdef, state["params"]), spec.loss_fn(config)
    clips = train.clip_spec(config.model_name, config.model)
    rng = jax.random.fold_in(jax.random.key(config.seed), 0)

    def by_hand(micro, key):
        micro = train._device_batch(config, micro, clips["mean"], clips["std"], spec.video_keys(config, True))
        micro, key = train._mixed(config, spec, micro, key)
        return float(loss_fn(model, micro, key)[0])

    expected = np.mean([by_hand(jax.tree.map(lambda x, i=i: x[i::k], batch), jax.random.fold_in(rng, i) if k > 1
                                else rng) for i in range(k)])
    _, metrics = train.make_train_step(config, setup)(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
