"""SVT through the one trainer: the multi-view step (compiled once, one backbone trace per view shape), the
teacher, centre and held last layer, sharded equals one device, exact resume with the k-NN evaluation, the views
cut from a video file, and the optimizer pieces SVT adds (per-tensor clipping, a weight decay schedule)."""

import av
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_config, run_steps, run_then_resume

from vidjax import losses, train
from vidjax.commands import evaluate
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline, views
from vidjax.metric_writer import read_metrics
from vidjax.models import timesformer
from vidjax.train import optim


def tiny_svt_config(**svt):
    """A tiny SVT run on the embedded dataset: width 32, 4 x 32 x 32 globals, 2 locals of 2 x 16 x 16, batch 8."""
    config = load_config("svt_k400", "runlocal")
    config.model.backbone.update(width=32, depth=1, num_heads=2, num_frames=4)
    config.model.update(head_hidden_dim=32, head_bottleneck_dim=16, out_dim=64)
    config.data.update(num_train=64, num_eval=16, num_frames=4)
    config.svt.update({"num_local": 2, "local_frames": (2, 2), "local_size": 16, "knn_k": 5, **svt})
    config.batch_size = 8
    config.total_steps = 6
    config.log_every, config.checkpoint_every, config.eval_every = 1, 2, 0
    config.optimizer.base_lr = 1e-3 * 256 / 8
    config.optimizer.warmup_epochs = 0.25
    return config


@pytest.mark.slow
def test_step_compiles_once_with_one_backbone_trace_per_view_shape(monkeypatch):
    """Views of 4 shapes (2 and 4 frames, 32 and 16 px): the student traces the backbone once per shape, the
    teacher once per global shape, and three steps compile the step once."""
    traced = []
    call = timesformer.Model.__call__

    def record(self, video, *args, **kwargs):
        traced.append(tuple(video.shape[1:]))
        return call(self, video, *args, **kwargs)

    monkeypatch.setattr(timesformer.Model, "__call__", record)
    config = tiny_svt_config(global_frames=(2, 4), local_frames=(2, 4, 2))
    groups = views.view_groups(train.tasks.training_of("svt").view_spec(config))
    assert [g.key for g in groups] == ["views_2x32", "views_4x32", "views_2x16", "views_4x16"]
    from vidjax import sharding

    mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
    source = pipeline.make_source(config.data, "train")
    setup = train.build(config, len(source), mesh)
    batches = iter(pipeline.make_dataset(config, "train", source, train.tasks.training_of("svt").input_spec(config)))
    batch = next(batches)
    assert {k: v.shape for k, v in batch.items() if k.startswith("views_")} == {
        "views_2x32": (8, 1, 2, 32, 32, 3), "views_4x32": (8, 1, 4, 32, 32, 3),
        "views_2x16": (8, 2, 2, 16, 16, 3), "views_4x16": (8, 1, 4, 16, 16, 3)}
    step = train.make_train_step(config, setup)
    state = setup.init_state()
    for i in range(3):
        state, metrics = step(state, sharding.global_batch(batch if i == 0 else next(batches),
                                                           sharding.batch_sharding(mesh)))
        assert np.isfinite(float(metrics["loss"]))
    assert step._cache_size() == 1
    teacher = [(2, 32, 32, 3), (4, 32, 32, 3)]
    student = [(2, 32, 32, 3), (4, 32, 32, 3), (2, 16, 16, 3), (4, 16, 16, 3)]
    assert sorted(traced) == sorted(teacher + student), traced


@pytest.mark.slow
def test_teacher_centre_and_held_last_layer():
    """One epoch of 8 steps with the last layer held for 2: it stays at its init for 2 steps while the rest moves;
    the teacher is the scheduled EMA of the student; the centre moves off zero; entropy is logged."""
    config = tiny_svt_config(freeze_last_layer_epochs=0.25, teacher_momentum=0.9)
    devices = jax.devices()[:1]
    from vidjax import sharding

    setup = train.build(config, 64, sharding.create_mesh(config.mesh, devices))
    init = jax.device_get(setup.init_state())
    _, two = run_steps(config, devices, steps=2)
    two = jax.device_get(two)
    np.testing.assert_array_equal(two["params"]["head"]["last_layer"]["kernel"],
                                  init["params"]["head"]["last_layer"]["kernel"])
    assert not np.allclose(two["params"]["head"]["mlp"][0]["kernel"], init["params"]["head"]["mlp"][0]["kernel"])
    _, three = run_steps(config, devices, steps=3)
    three = jax.device_get(three)
    assert not np.allclose(three["params"]["head"]["last_layer"]["kernel"],
                           init["params"]["head"]["last_layer"]["kernel"])
    # Teacher after one step: m * init + (1 - m) * student, m = the cosine's value at step 0 (the base, 0.9).
    _, one = run_steps(config, devices, steps=1)
    one = jax.device_get(one)
    m = float(losses.teacher_momentum_schedule(setup.total_steps, 0.9)(0))
    assert m == pytest.approx(0.9)
    expected = jax.tree.map(lambda t, s: m * t + (1 - m) * s, init["ema_params"], one["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), one["ema_params"], expected)
    assert np.abs(one["center"]).max() > 0 and np.isfinite(one["center"]).all()


@pytest.mark.slow
def test_accumulation_runs_the_teacher_per_micro_batch_and_equals_one_big_batch():
    """2 micro-batches of 4: the teacher runs inside the accumulation loop on each micro-batch alone, and the losses,
    the student, the teacher and the centre (from the mean of the micro-batches' mean outputs) are one big batch's to
    1e-5. Without the head's batch norm, whose statistics are the micro-batch's under accumulation, and with SGD:
    AdamW turns float noise into whole steps where a gradient is zero in exact arithmetic (the keys' bias, which
    softmax ignores)."""
    config = tiny_svt_config()
    config.model.head_use_bn, config.optimizer.name, config.optimizer.weight_decay_end = False, "sgd", -1
    single, one = run_steps(config, jax.devices()[:1], steps=3)
    config.grad_accum_steps = 2
    accum, two = run_steps(config, jax.devices()[:1], steps=3)
    np.testing.assert_allclose(accum, single, rtol=1e-5)
    one, two = jax.device_get(one), jax.device_get(two)
    for key in ("center", "params", "ema_params"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), two[key], one[key])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1)], ids=["dp", "fsdp"])
def test_sharded_matches_one_device(mesh):
    """8 simulated devices (data parallel, fsdp) give the one-device losses, teacher and centre to 1e-5."""
    config = tiny_svt_config()
    single, one = run_steps(config, jax.devices()[:1], steps=3)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    sharded, eight = run_steps(config, jax.devices(), steps=3)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    np.testing.assert_allclose(jax.device_get(eight["center"]), jax.device_get(one["center"]), rtol=1e-5, atol=1e-6)
    backbone = ("ema_params", "backbone", "blocks", 0, "mlp", "fc1", "kernel")
    a, b = eight, one
    for key in backbone:
        a, b = a[key], b[key]
    np.testing.assert_allclose(jax.device_get(a), jax.device_get(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_exact_resume_and_knn_evaluation(tmp_path, capsys):
    """Stopped after step 2 and resumed: losses, entropies, teacher and centre bit-identical to the straight run;
    the k-NN eval of the random-init teacher is logged at step 0 and kept on resume; `evaluate --checkpoint`
    alone reproduces the run's k-NN figures."""
    config = tiny_svt_config()
    result, resumed, full, cut = run_then_resume(config, tmp_path, capsys)
    assert {"eval_knn_top1", "eval_knn_top5", "eval_knn_top1_init", "eval_knn_top5_init"} <= result.keys()
    assert 0 <= result["eval_knn_top1"] <= result["eval_knn_top5"] <= 1
    rows = {(r["step"], r["split"]): r for r in read_metrics(cut)}
    for step in range(1, 7):
        assert 0 < rows[(step, "train")]["teacher_entropy"] < np.log(config.model.out_dim)
        assert 0 < rows[(step, "train")]["teacher_batch_entropy"] <= np.log(config.model.out_dim) + 1e-4
    assert rows[(0, "eval")]["eval_knn_top1_init"] == result["eval_knn_top1_init"]
    assert resumed["eval_knn_top1_init"] == result["eval_knn_top1_init"]
    assert resumed["eval_knn_top1"] == result["eval_knn_top1"]
    for key in ("ema_params", "center"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"][key]),
                     jax.device_get(result["state"][key]))
    summary = evaluate.evaluate_checkpoint(None, str(full))
    assert summary["eval_knn_top1"] == pytest.approx(result["eval_knn_top1"])


def test_config_problems_are_reported_together():
    config = tiny_svt_config(local_scale=(0.5, 0.2), knn_k=0)
    config.optimizer.ema_decay = 0.99
    problems = train.config_problems(config)
    text = "\n".join(problems)
    assert "config.svt: local_scale" in text and "ema_decay" in text and "knn_k=0" in text
    config = load_config("timesformer_k400", "runlocal")
    config.task = "svt"
    assert any("config.model_name='timesformer'" in p for p in train.config_problems(config))
    with pytest.raises(ConfigError, match="weight_decay_end"):
        sgd = tiny_svt_config()
        sgd.optimizer.name = "sgd"
        optim.make_optimizer(sgd, optax.constant_schedule(0.1), 10)


def test_views_from_a_video_file_decode_only_their_frames(tmp_path):
    """A listed video file is cut into the views: only the frames they use are decoded, each view shows its own
    frames (the frame number is written into each frame's brightness)."""
    path = tmp_path / "ramp.mp4"
    frames = np.repeat(np.repeat((np.arange(64) * 4).astype(np.uint8)[:, None, None, None], 48, 1), 48, 2)
    frames = np.repeat(frames, 3, axis=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        stream.codec_context.qscale = 1
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    config = tiny_svt_config(global_shift=2, local_fraction=4, jitter_p=0.0, grayscale_p=0.0, flip_p=0.0,
                             local_scale=(1.0, 1.0), global_scale=(1.0, 1.0))
    config.data.update(sampling_rate=4, short_side=32)  # a window of 16 of the 64 frames
    spec = train.tasks.training_of("svt").view_spec(config)
    preprocess = pipeline.Preprocess(data=config.data, source=None, train=True, pixel_mean=(0.5,) * 3,
                                     pixel_std=(0.5,) * 3, views=spec)
    out = preprocess.load({"path": str(path), "index": 0, "label": 1}, np.random.default_rng(3))
    assert out["views_4x32"].shape == (2, 4, 32, 32, 3) and out["views_2x16"].shape == (2, 2, 16, 16, 3)
    expected = views.view_frame_indices(64, spec, np.random.default_rng(3))
    shown = [np.round(v.mean(axis=(1, 2, 3)) / 4) for v in (*out["views_4x32"], *out["views_2x16"])]
    for view, (got, want) in enumerate(zip(shown, expected, strict=True)):
        np.testing.assert_allclose(got, want, atol=1, err_msg=f"view {view}")
    assert out["label"] == 1 and out["index"] == 0


def test_per_tensor_clipping_and_scheduled_weight_decay():
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    clipped, _ = optim.clip_by_tensor_norm(1.0).update(grads, optax.EmptyState())
    np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], grads["b"])  # under the limit: untouched (a global clip would scale it)
    schedule = losses.cosine_schedule(0.04, 0.4, 10)
    tx = optim.add_scheduled_decayed_weights(schedule, lambda p: {"w": True, "bias": False})
    params = {"w": jnp.ones(2), "bias": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update(zeros, state, params)
        np.testing.assert_allclose(updates["w"], float(schedule(step)) * np.ones(2), rtol=1e-6)
        np.testing.assert_array_equal(updates["bias"], np.zeros(2))
    assert float(schedule(0)) == pytest.approx(0.04) and float(schedule(10)) == pytest.approx(0.4)
