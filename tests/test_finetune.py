"""Fine-tuning through the one trainer: tasks, losses, multi-view evaluation, EMA, checkpoint metadata, recipes."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config
from test_train import tiny_config

from vidjax import config_lib, evaluators, train
from vidjax.data import pipeline
from vidjax.metric_writer import read_metrics
from vidjax.tasks import training_of


def task_config(task, **overrides):
    """The tiny VideoMAE with a linear head on the embedded dataset's `task` variant."""
    config = tiny_config(task=task, **overrides)
    config.model.update(head="classification", use_mean_pooling=True)
    config.data.synthetic_task = training_of(task).synthetic_task
    config.model.num_classes = 2 if task == "regression" else config.data.num_classes
    config.optimizer.label_smoothing = 0.0
    return config


class FixedLogits:
    """A stand-in model: returns the given logits (B, C) whatever the video, as the trainer's models do."""

    def __init__(self, logits):
        self.logits = jnp.asarray(logits, jnp.float32)

    def __call__(self, video, rng=None):
        return {"logits": self.logits[: video.shape[0]]}


def config_of(task, **loss):
    config = ml_collections.ConfigDict(dict(task=task, optimizer=dict(label_smoothing=0.0),
                                            loss=dict(regression="mse")))
    config.loss.update(loss)
    return config


def test_losses_against_hand_computed_values():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    video = jnp.zeros((2, 1, 1, 1, 3))
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    label = np.array([0, 2])
    ce = -log_softmax[[0, 1], label]
    loss, aux = training_of("classification").loss_fn(config_of("classification"))(FixedLogits(logits), {"video": video,
                                                                                      "label": label}, None)
    np.testing.assert_allclose(loss, ce.mean(), rtol=1e-6)
    assert float(aux["accuracy"]) == 0.5
    # Class weights: PyTorch's weighted mean, sum_i w_(y_i) l_i / sum_i w_(y_i).
    weights = np.array([1.0, 1.0, 3.0], np.float32)
    loss, _ = training_of("classification").loss_fn(config_of("classification"), class_weights=weights)(
        FixedLogits(logits), {"video": video, "label": label}, None)
    np.testing.assert_allclose(loss, (ce[0] + 3 * ce[1]) / 4, rtol=1e-6)

    # Multi-label: sigmoid BCE averaged over examples and classes; pos_weight scales the positive terms.
    labels = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    sig = 1 / (1 + np.exp(-logits))
    pos_weight = np.array([2.0, 1.0, 0.5], np.float32)
    bce = -(pos_weight * labels * np.log(sig) + (1 - labels) * np.log(1 - sig))
    loss, _ = training_of("multilabel").loss_fn(config_of("multilabel"), pos_weight=pos_weight)(
        FixedLogits(logits), {"video": video, "labels": labels}, None)
    np.testing.assert_allclose(loss, bce.mean(), rtol=1e-5)

    # Regression: MSE, or 1 - CCC averaged over targets (population moments over the batch).
    pred = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0]])
    target = np.array([[0.5, 1.0], [1.0, 2.0], [1.5, 3.0]])
    batch = {"video": jnp.zeros((3, 1, 1, 1, 3)), "targets": target}
    loss, aux = training_of("regression").loss_fn(config_of("regression"))(FixedLogits(pred), batch, None)
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-6)

    def ccc(p, t):
        return 2 * np.mean((p - p.mean()) * (t - t.mean())) / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)

    expected_ccc = (ccc(pred[:, 0], target[:, 0]) + ccc(pred[:, 1], target[:, 1])) / 2
    ccc_loss = training_of("regression").loss_fn(config_of("regression", regression="ccc"))
    loss, aux = ccc_loss(FixedLogits(pred), batch, None)
    np.testing.assert_allclose(loss, 1 - expected_ccc, rtol=1e-5)
    np.testing.assert_allclose(aux["ccc"], expected_ccc, rtol=1e-5)


def eval_outputs(task, config, model, batch):
    """The per-example outputs of one batch from the task's default evaluator (`Evaluator.batch_outputs`)."""
    context = train.eval_context(config, None, metadata={}, sources={})  # the task's spec and readout, handed in
    return evaluators.get(training_of(task).evaluator)(context).batch_outputs(model, batch)


def test_multi_view_eval_averages_probabilities_not_logits():
    # 1 video, 3 views: one very sure of class 0, two fairly sure of class 1. Averaged probabilities pick class 1,
    # averaged logits would pick class 0.
    view_logits = np.array([[20.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])
    batch = {"video": jnp.zeros((1, 3, 1, 1, 1, 3)), "label": np.array([2])}
    out = eval_outputs("classification", config_of("classification"), FixedLogits(view_logits), batch)
    softmax = np.exp(view_logits) / np.exp(view_logits).sum(1, keepdims=True)
    np.testing.assert_allclose(out["scores"][0], softmax.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["loss"][0], -np.log(softmax.mean(0)[2]), rtol=1e-6)
    assert np.argmax(softmax.mean(0)) == 1 and np.argmax(view_logits.mean(0)) == 0
    assert out["label"].tolist() == [2]
    multi = eval_outputs("multilabel", config_of("multilabel"), FixedLogits(view_logits),
                         {"video": batch["video"], "labels": np.array([[1.0, 0.0, 0.0]])})
    np.testing.assert_allclose(multi["scores"][0], (1 / (1 + np.exp(-view_logits))).mean(0), rtol=1e-6)
    reg = eval_outputs("regression", config_of("regression"), FixedLogits(view_logits),
                       {"video": batch["video"], "targets": np.zeros((1, 3))})
    np.testing.assert_allclose(reg["scores"][0], view_logits.mean(0), rtol=1e-6)


def test_balanced_and_explicit_weights():
    config = task_config("classification")
    config.data.num_classes = 3
    config.loss.class_weights = "balanced"
    source = [{"label": np.int32(c)} for c in (0, 0, 0, 1)]  # class 2 has no example
    class_weights, pos_weight = training_of(config.task).loss_weights(config, source)
    np.testing.assert_allclose(class_weights, [4 / (3 * 3), 4 / (3 * 1), 0.0], rtol=1e-6)
    assert pos_weight is None
    config.loss.class_weights = "1,2,3"
    np.testing.assert_array_equal(training_of(config.task).loss_weights(config, source)[0], [1, 2, 3])
    for bad in ("1,2", "a,b,c", "1,-2,3"):
        config.loss.class_weights = bad
        with pytest.raises(config_lib.ConfigError, match="config.loss.class_weights"):
            training_of(config.task).loss_weights(config, source)
    config = task_config("multilabel")
    config.data.num_classes = 3
    config.loss.pos_weight = "balanced"
    source = [{"labels": np.float32(v)} for v in ([1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0])]
    np.testing.assert_allclose(training_of(config.task).loss_weights(config, source)[1], [1 / 3, 3.0, 1.0], rtol=1e-6)
    config.loss.class_weights = "balanced"
    with pytest.raises(config_lib.ConfigError, match="class_weights applies to task='classification'"):
        training_of(config.task).loss_weights(config, source)


def test_config_mistakes_are_named():
    config = task_config("regression")
    config.model.num_classes = 3
    with pytest.raises(config_lib.ConfigError, match="2 targets .*velocity_x.*num_classes=3"):
        train.check_config(config)
    config = task_config("regression")
    config.loss.mixup_alpha = 0.8
    with pytest.raises(config_lib.ConfigError, match="mixup / cutmix .* not to task='regression'"):
        train.check_config(config)
    config = task_config("classification")
    config.task = "detection"
    with pytest.raises(config_lib.ConfigError, match="config.task must be one of pretrain, classification"):
        train.check_config(config)
    config = task_config("classification")
    config.optimizer.ema_decay = 1.0
    with pytest.raises(config_lib.ConfigError, match="ema_decay=1.0 must be in"):
        train.check_config(config)
    config = task_config("multilabel")
    config.data.synthetic_task = "label"
    with pytest.raises(config_lib.ConfigError, match="--config.data.synthetic_task=labels"):
        train.check_config(config)
    config = task_config("classification")
    config.loss.mixup_prob = 1.5
    with pytest.raises(config_lib.ConfigError, match="mixup_prob=1.5"):
        train.check_config(config)
    config = task_config("multilabel")
    config.data.source = "csv"  # a VideoMAE list: single labels only
    with pytest.raises(config_lib.ConfigError, match=r"trains on 'labels' targets, but .* gives \['label'\]"):
        train.check_targets(config, [{"path": "a.mp4", "label": np.int32(0), "index": 0}])


def test_an_epoch_counts_videos_with_repeated_augmentation():
    config = task_config("classification", batch_size=8)
    config.data.num_samples = 2  # 4 videos x 2 clips a step: 64 videos are 16 steps
    assert train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1])).steps_per_epoch == 16


def test_resuming_with_other_train_state_settings_is_a_clear_error(tmp_path):
    config = task_config("classification", total_steps=1, checkpoint_every=1)
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    config.total_steps, config.optimizer.ema_decay = 2, 0.5
    with pytest.raises(config_lib.ConfigError, match="(?s)does not fit the train state.*ema_decay.*new --workdir"):
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])


def test_classification_run_writes_metadata_ema_and_confusion_matrix(tmp_path):
    config = task_config("classification", total_steps=3, checkpoint_every=3, figure=True)
    config.optimizer.ema_decay = 0.5
    config.optimizer.layer_decay = 0.75
    config.loss.mixup_alpha, config.loss.cutmix_alpha = 0.8, 1.0
    config.loss.class_weights = "balanced"
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    state = result["state"]
    # The EMA is a different point from the weights, and evaluation used it.
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state["ema_params"]),
                                                       jax.tree.leaves(state["params"]), strict=True))
    evals = [r for r in read_metrics(tmp_path) if r["split"] == "eval"]
    assert {"eval_loss", "eval_top1", "eval_top5", "eval_macro_f1"} <= set(evals[-1])
    meta = json.loads((tmp_path / "checkpoints" / "3" / "metadata" / "metadata").read_text())
    assert meta["task"] == "classification" and meta["class_names"][:2] == ["move_right", "move_up_right"]
    assert meta["preprocessing"]["num_frames"] == 4 and meta["target_names"] is None
    with open(tmp_path / "confusion_matrix.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_is_invariant_to_batch_size_and_devices(tmp_path):
    """The same weights scored with batch 4 on one device and batch 8 over 8 devices: the same per-video scores."""
    config = task_config("classification", total_steps=1, checkpoint_every=1)
    params = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])["state"]["params"]
    params = jax.device_get(params)
    outs = []
    for batch_size, devices in ((4, jax.devices()[:1]), (8, jax.devices())):
        cfg = task_config("classification", batch_size=batch_size)
        cfg.data.num_eval = 13  # not a whole number of batches: the last one is padded, the padding not scored
        cfg.data.test_num_crops = 2  # two views each
        mesh = train.sharding.create_mesh(cfg.mesh, devices)
        setup = train.build(cfg, 64, mesh)
        placed = jax.device_put(params, setup.state_shardings["params"])
        source = pipeline.make_source(cfg.data, "eval")
        (evaluation,) = evaluators.from_config(train.eval_context(cfg, setup, metadata={}, sources={"eval": source}))
        summary = evaluation.run(placed)
        outs.append((summary, evaluation.evaluator.outputs))
    (a, out_a), (b, out_b) = outs
    np.testing.assert_allclose(out_a["scores"], out_b["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_a["label"], out_b["label"])
    assert a["eval_top1"] == b["eval_top1"] and out_a["scores"].shape == (13, 8)
    source = pipeline.make_source(cfg.data, "eval")
    np.testing.assert_array_equal(out_a["label"], [source[i]["label"] for i in range(13)])


def test_finetune_recipe_is_the_published_one():
    config = load_config("videomae_finetune_k400")
    m, d, opt, loss = config.model, config.data, config.optimizer, config.loss
    assert (m.variant, m.head, m.num_classes, m.use_mean_pooling, m.drop_path) == (
        "B/16", "classification", 400, True, 0.1)
    assert opt.base_lr * config.batch_size / opt.lr_batch_base == pytest.approx(2e-3)  # 1e-3 x 512 / 256
    assert (opt.layer_decay, opt.label_smoothing, opt.warmup_epochs, config.num_epochs) == (0.75, 0.1, 5, 100)
    assert (loss.mixup_alpha, loss.cutmix_alpha, opt.b2, opt.min_lr) == (0.8, 1.0, 0.999, 1e-6)
    assert (d.rand_augment, d.erase_prob, d.num_samples, d.test_num_clips, d.test_num_crops) == (
        "rand-m7-n4-mstd0.5-inc1", 0.25, 2, 5, 3)
    train.check_config(config)
    local = load_config("videomae_finetune_k400", "runlocal")
    assert local.data.source == "synthetic" and local.model.num_classes == local.data.num_classes == 8
    train.check_config(local)


@pytest.mark.optimized  # the first to ask for pretrained_run, a learning run
@pytest.mark.slow
def test_evaluate_command_scores_a_workdir_like_the_trainer(tmp_path, pretrained_run):
    from vidjax.commands import evaluate

    config = task_config("classification", total_steps=2, checkpoint_every=2)
    config.optimizer.ema_decay = 0.5
    result = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    out = tmp_path / "eval" / "test.json"
    outputs = {}
    summary = evaluate.evaluate_checkpoint(config, str(tmp_path / "run"), str(out), outputs=outputs)  # 8 devices
    # The trainer evaluated its EMA weights; so does the command (from the checkpoint it wrote).
    assert summary["eval_top1"] == result["eval_top1"]
    np.testing.assert_allclose(summary["eval_loss"], result["eval_loss"], rtol=1e-5)
    written = json.loads(out.read_text())
    assert written["num_examples"] == 16 and written["eval_top1"] == summary["eval_top1"]
    assert outputs["scores"].shape == (16, config.model.num_classes) and outputs["label"].shape == (16,)
    assert summary["eval_top1"] == (outputs["scores"].argmax(1) == outputs["label"]).mean()
    assert (tmp_path / "eval" / "test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A pre-training checkpoint of the same encoder (the end-to-end tests' run below) has no head to evaluate.
    with pytest.raises(config_lib.ConfigError, match="no trained values for .*head/kernel.*pre-training checkpoint"):
        evaluate.evaluate_checkpoint(config, str(pretrained_run))


def test_videomamba_recipe_uses_the_fine_tuning_options():
    config = load_config("videomamba_k400")
    d, opt = config.data, config.optimizer
    assert opt.base_lr * config.batch_size / opt.lr_batch_base == pytest.approx(8e-4) and d.num_samples == 2
    assert (config.loss.mixup_alpha, config.loss.cutmix_alpha, opt.layer_decay) == (0.8, 1.0, 0.75)
    assert (d.rand_augment, d.erase_prob, d.test_num_clips, d.test_num_crops) == ("rand-m7-n4-mstd0.5-inc1", 0.25, 4, 3)
    assert load_config("videomamba_k400", "variant=Ti/16").data.rand_augment == "rand-m5-n2-mstd0.5-inc1"
    assert not config.needs_init_from
    train.check_config(config)
    # From a masked pre-training: videomamba_middle_mask/run_f8x224.sh's settings, and init_from is required.
    masked = load_config("videomamba_k400", "variant=M/16,masked")
    opt = masked.optimizer
    assert opt.base_lr * masked.batch_size / opt.lr_batch_base == pytest.approx(4e-4) and opt.layer_decay == 0.8
    assert (masked.num_epochs, masked.model.drop_path, opt.weight_decay) == (45, 0.4, 0.05)
    assert "--config.init_from=OpenGVLab/VideoMamba/videomamba_m16_k400_mask_pt_f8_res224.pth" in \
        masked.needs_init_from
    train.check_config(masked)
    local = load_config("videomamba_k400", "runlocal")
    assert local.loss.mixup_alpha == 0.0 and local.data.source == "synthetic"
    train.check_config(local)


def test_videomamba_runlocal_trains_from_scratch_with_its_settings():
    """The micro recipe learns from random weights (configs/videomamba_k400.py's docstring has the runs): 4-frame
    tubelets, 2 blocks, sin-cos tables, temporal-first scans, x_proj at N(0, 0.2), 16 epochs; no init_from needed."""
    local = load_config("videomamba_k400", "runlocal")
    m = local.model
    assert (m.tubelet_size, m.depth, m.position_init, m.token_order, m.x_proj_init_std) == (
        4, 2, "sincos", "temporal_first", 0.2)
    assert local.num_epochs == 16 and not local.needs_init_from and not local.init_from
    assert load_config("videomamba_k400").model.token_order == "spatial_first"  # the published recipe: the reference
    assert load_config("videomamba_k400", "runlocal,variant=Ti/16").model.depth == 0  # a named size keeps its depth
    train.check_config(local)


# End to end on the embedded dataset: pre-train, then fine-tune from that checkpoint, for each task.

E2E_DATA = dict(num_train=2048, num_eval=256)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, generate_clips_once):
    """A short masked pre-training of the tiny VideoMAE on the embedded dataset: its workdir. The fine-tuning runs
    that start from it read the same generated clips (generate_clips_once)."""
    workdir = tmp_path_factory.mktemp("pretrain")
    config = tiny_config(batch_size=32, total_steps=300, checkpoint_every=300, log_every=100)
    config.data.update(E2E_DATA)
    config.optimizer.base_lr = 3e-3 * 256 / 32
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
    return workdir


def finetune(task, init_from, workdir, steps, num_classes=8):
    config = task_config(task, batch_size=32, total_steps=steps, checkpoint_every=steps, log_every=100)
    config.data.update(E2E_DATA, num_classes=num_classes)
    config.model.update(head_init_scale=1.0, num_classes=2 if task == "regression" else num_classes)
    config.optimizer.update(base_lr=3e-3 * 256 / 32, b2=0.999, warmup_epochs=0.3)
    config.init_from = str(init_from)
    result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
    return config, result


# Classification from a pre-training is tests/test_recipe_videomae_finetune_learns.py: the runlocal recipes themselves.


@pytest.mark.optimized  # learning runs: compiled as users' runs are (conftest.py)
@pytest.mark.slow
def test_pretrain_then_finetune_multilabel_and_regression_beat_trivial_predictors(pretrained_run, tmp_path):
    config, result = finetune("multilabel", pretrained_run, tmp_path / "multilabel", steps=400, num_classes=4)
    source = pipeline.make_source(config.data, "eval")
    labels = np.stack([source[i]["labels"] for i in range(len(source))])
    trivial_map = labels.mean(0).mean()  # constant scores: each class's AP is its share of positives
    assert result["eval_mAP"] > trivial_map + 0.1, (result, trivial_map)
    _, result = finetune("regression", pretrained_run, tmp_path / "regression", steps=800)
    # A constant prediction has CCC 0 for each target.
    assert result["eval_ccc_velocity_x"] > 0.3 and result["eval_ccc_velocity_y"] > 0.3, result
    assert result["eval_ccc_mean"] > 0.3
