"""vidjax.predict and loading training checkpoints with vidjax.pretrained: workdirs, step folders, metadata, EMA."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
from test_decode import make_video
from test_train import tiny_config

from vidjax import pretrained, train
from vidjax.commands import predict
from vidjax.pretrained.windows import predict_video, sliding_windows
from vidjax.tasks import predictions

_WORKDIRS: dict = {}


def trained_workdir(task, tmp_path_factory):
    """A 2-step tiny VideoMAE run ("pretrain" or "classification"), trained once per session and shared by the
    inference tests; returns (workdir, the trainer's final params as numpy). One block: compiling the train step
    is most of a run's time."""
    if task not in _WORKDIRS:
        config = tiny_config(task=task, total_steps=2, checkpoint_every=2)
        config.model.depth, config.data.num_eval = 1, 8
        if task == "classification":
            config.model.head, config.model.num_classes = "classification", config.data.num_classes
        workdir = tmp_path_factory.mktemp(f"{task}_run")
        result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
        _WORKDIRS[task] = workdir, jax.tree.map(np.asarray, result["state"]["params"])
    return _WORKDIRS[task]


def make_clip(path, seed=0, num_frames=50, h=40, w=56):
    """A 2 s (25 fps) noise video whose frames all differ; returns its path as a string."""
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, h, w, 3), dtype=np.uint8)
    make_video(path, frames=frames)
    return str(path)


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    return trained_workdir("classification", tmp_path_factory)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_videos")
    bad = folder / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return {"a": make_clip(folder / "a.mp4", 0), "b": make_clip(folder / "b.mp4", 1), "bad": str(bad)}


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def parse_output(text):
    """predict's text output -> {video path: [(label, value), ...]} (the video-level lines, windows left out)."""
    blocks, current = {}, None
    for line in text.splitlines():
        if not line.startswith(" "):
            current = blocks.setdefault(line, [])
        elif line.startswith("  ") and not line.startswith(("   ", "  window ", "  (")):
            label, value = line.strip().rsplit(maxsplit=1)
            current.append((label, float(value)))
    return blocks


def view_probabilities(model, path, **kwargs):
    views = model.read_views(path, **kwargs)
    return softmax(np.asarray(model(model.preprocess(views))))


def test_load_workdir_and_step_folder(cls_run):
    workdir, trained = cls_run
    from_workdir = pretrained.load(workdir)
    from_step = pretrained.load(workdir / "checkpoints" / "2")
    for leaf_a, leaf_b in zip(jax.tree.leaves(from_workdir.params), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf_a), leaf_b)  # the trainer's final params, no optimizer state
    assert from_workdir.task == from_step.task == "classification"
    assert from_workdir.sampling_rate == 1 and from_workdir.has_head
    assert {"mean", "std", "num_frames", "image_size", "sampling_rate", "short_side"} <= set(
        from_workdir.preprocessing)
    assert (from_workdir.preprocessing["num_frames"], from_workdir.preprocessing["image_size"]) == (4, 32)
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(from_workdir(from_workdir.preprocess(frames))),
                                  np.asarray(from_step(from_step.preprocess(frames))))


def test_load_prefers_metadata_and_ema_params(cls_run, tmp_path):
    """A checkpoint with the "metadata" item and EMA weights: names and task from the metadata, EMA weights used."""
    import orbax.checkpoint as ocp

    workdir, trained = cls_run
    config = json.loads((workdir / "checkpoints" / "2" / "config" / "metadata").read_text())
    config["task"] = "multilabel"
    names = [f"action {i}" for i in range(8)]
    metadata = {"model_name": "videomae", "task": "multilabel", "class_names": names, "target_names": None,
                "preprocessing": {"mean": [0.5] * 3, "std": [0.25] * 3, "num_frames": 4, "image_size": 32,
                                  "sampling_rate": 3}}
    ema = jax.tree.map(lambda x: x * 0.5, trained)
    state = {"params": trained, "ema_params": ema, "step": np.int32(7)}
    with ocp.CheckpointManager(tmp_path / "run" / "checkpoints") as manager:
        manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                config=ocp.args.JsonSave(config),
                                                metadata=ocp.args.JsonSave(metadata)))
        manager.wait_until_finished()
    model = pretrained.load(tmp_path / "run")
    assert (model.task, model.class_names, model.sampling_rate) == ("multilabel", names, 3)
    assert model.preprocessing["mean"] == [0.5] * 3 and model.preprocessing["short_side"] == 32
    head = model.params["head"]["kernel"]
    np.testing.assert_array_equal(np.asarray(head), trained["head"]["kernel"] * 0.5)
    assert predictions.output_names(model) == names


def test_predict_prints_top_k(cls_run, videos, capsys):
    workdir, _ = cls_run
    assert predict.main([f"--checkpoint={workdir}", videos["a"], videos["b"], "--top_k=5"]) == 0
    blocks = parse_output(capsys.readouterr().out)
    assert list(blocks) == [videos["a"], videos["b"]]
    model = pretrained.load(workdir)
    names = predictions.output_names(model)
    for video in ("a", "b"):
        pairs = blocks[videos[video]]  # one `label  probability` line each
        assert len(pairs) == 5 and all(name in names for name, _ in pairs)
        probs = [p for _, p in pairs]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
        expected = view_probabilities(model, videos[video])[0]
        best = int(np.argmax(expected))
        assert pairs[0][0] == names[best] and abs(probs[0] - expected[best]) < 1e-3


def test_multiview_averages_probabilities(cls_run, videos, tmp_path):
    workdir, _ = cls_run
    out = tmp_path / "new" / "folder" / "views.json"  # missing parent folders are created, as by extract's --out
    assert predict.main([f"--checkpoint={workdir}", videos["a"], "--num_clips=2", "--num_crops=3",
                         f"--json={out}"]) == 0
    report = json.loads(out.read_text())
    got = np.array(report["videos"][0]["aggregate"]["probabilities"])
    per_view = view_probabilities(pretrained.load(workdir), videos["a"], num_clips=2, num_crops=3)
    assert per_view.shape == (6, 8)
    np.testing.assert_allclose(got, per_view.mean(axis=0), atol=1e-6)
    assert abs(got.sum() - 1.0) < 1e-5
    top = report["videos"][0]["aggregate"]["top_k"]
    assert [t["index"] for t in top] == list(np.argsort(-got, kind="stable")[:5])


def test_sliding_windows_json_and_batch_size_invariance(cls_run, videos, tmp_path, capsys):
    workdir, _ = cls_run
    reports = []
    for batch_size in (1, 16):  # 3 windows x 3 crops = 9 clips: two padded batches of 8 devices, or one of 16
        out = tmp_path / f"windows_{batch_size}.json"
        assert predict.main([f"--checkpoint={workdir}", videos["a"], "--window=0.8", "--stride=0.5", "--num_crops=3",
                             f"--batch_size={batch_size}", f"--json={out}"]) == 0
        reports.append(json.loads(out.read_text()))
    text = capsys.readouterr().out
    assert text.count("\n  window ") == 2 * 3 and "\n  window 0.50-1.30 s\n    move_" in text
    video = reports[0]["videos"][0]
    assert [(w["start_s"], w["end_s"]) for w in video["windows"]] == [(0.0, 0.8), (0.5, 1.3), (1.0, 1.8)]
    model = pretrained.load(workdir)
    windows = np.array([w["prediction"]["probabilities"] for w in video["windows"]])
    for (start, end), probs in zip([(0.0, 0.8), (0.5, 1.3), (1.0, 1.8)], windows, strict=True):
        expected = view_probabilities(model, videos["a"], num_crops=3, start_s=start, end_s=end).mean(axis=0)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(video["aggregate"]["probabilities"], windows.mean(axis=0), atol=1e-7)
    other = reports[1]["videos"][0]
    np.testing.assert_allclose(other["aggregate"]["probabilities"], video["aggregate"]["probabilities"], atol=1e-6)
    np.testing.assert_allclose([w["prediction"]["probabilities"] for w in other["windows"]], windows, atol=1e-6)


def test_a_corrupt_video_among_good_ones(cls_run, videos, tmp_path, capsys):
    workdir, _ = cls_run
    out = tmp_path / "mixed.json"
    code = predict.main([f"--checkpoint={workdir}", videos["a"], videos["bad"], videos["b"], f"--json={out}"])
    captured = capsys.readouterr()
    assert code == 1
    assert list(parse_output(captured.out)) == [videos["a"], videos["b"]]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and videos["bad"] in errors[0] and "cannot" in errors[0]
    assert "1 of 3 videos failed to decode" in captured.err
    report = json.loads(out.read_text())
    assert [v["error"] is None for v in report["videos"]] == [True, False, True]
    assert videos["bad"] in report["videos"][1]["error"]


def test_pretraining_checkpoint_is_refused(tmp_path_factory, videos, capsys):
    workdir, _ = trained_workdir("pretrain", tmp_path_factory)
    assert predict.main([f"--checkpoint={workdir}", videos["a"]]) == 2
    err = capsys.readouterr().err
    assert "pre-training checkpoint" in err and "python -m vidjax.extract" in err
    assert "python -m vidjax.visualize" in err


@pytest.mark.parametrize("argv,message", [
    (["--top_k=0"], "--top_k=0 must be at least 1"),
    (["--stride=1"], "--stride needs --window"),
    (["--threshold=1.5"], "--threshold=1.5"),
    (["--num_crops=0"], "--num_crops=0"),
])
def test_bad_arguments_exit_2(videos, argv, message, capsys):
    assert predict.main(["--checkpoint=/nowhere", videos["a"], *argv]) == 2
    assert message in capsys.readouterr().err


def test_not_a_checkpoint_exits_2(tmp_path, videos, capsys):
    assert predict.main([f"--checkpoint={tmp_path}", videos["a"]]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint={tmp_path}" in err and "not a converted checkpoint" in err and "training workdir" in err


def test_json_on_stdout_for_scripts(cls_run, videos, capsys):
    workdir, _ = cls_run
    assert predict.main([f"--checkpoint={workdir}", videos["a"], "--top_k=2", "--json=-"]) == 0
    report = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert report["videos"][0]["path"] == videos["a"] and len(report["videos"][0]["aggregate"]["top_k"]) == 2


def test_a_raw_hugging_face_folder_gets_the_convert_command(videos, capsys):
    source = pathlib.Path(__file__).parent / "fixtures" / "parity" / "videomae_classification_bin" / "source"
    assert predict.main([f"--checkpoint={source}", videos["a"]]) == 2
    err = capsys.readouterr().err
    assert "is a Hugging Face checkpoint" in err and "Traceback" not in err
    assert f"python -m vidjax.convert --from_hf {source} --out {source}_vidjax" in err


def test_sliding_windows():
    assert sliding_windows(2.0, 0.8, 0.5) == [(0.0, 0.8), (0.5, 1.3), (1.0, 1.8)]
    assert sliding_windows(2.0, 1.0, 1.0) == [(0.0, 1.0), (1.0, 2.0)]
    assert sliding_windows(0.5, 1.0, 1.0) == [(0.0, 0.5)]  # shorter than a window: one window


def test_multilabel_and_regression_predictions(cls_run, videos):
    """The same head read as multi-label (sigmoid per class) and as regression (raw values with target names)."""
    workdir, _ = cls_run
    model = pretrained.load(workdir)
    logits = np.asarray(model(model.preprocess(model.read_views(videos["a"], num_crops=3))))

    multilabel = dataclasses.replace(model, task="multilabel")
    runner = pretrained.BatchRunner(multilabel, predictions.scores_fn("multilabel"), 8)
    scores, _ = predict_video(multilabel, runner, videos["a"], num_crops=3)
    np.testing.assert_allclose(scores, (1 / (1 + np.exp(-logits))).mean(axis=0), atol=1e-6)
    names = predictions.output_names(multilabel)
    threshold = float(np.sort(scores)[-3])  # exactly three classes reach it
    described = predictions.describe("multilabel", scores, names, 2, threshold)
    assert [r["index"] for r in described["above_threshold"]] == list(np.argsort(-scores, kind="stable")[:3])
    assert len(described["top_k"]) == 2
    lines = predictions.format_prediction("multilabel", described)
    assert len(lines) == 3 and lines[0].strip().rsplit(maxsplit=1)[0] == names[int(np.argmax(scores))]
    lines = predictions.format_prediction("multilabel", predictions.describe("multilabel", scores, names, 2, 0.99))
    assert lines[0] == "  (no class scores >= 0.99; the highest:)" and len(lines) == 3

    targets = [f"value_{i}" for i in range(8)]
    regression = dataclasses.replace(model, task="regression", target_names=targets)
    runner = pretrained.BatchRunner(regression, predictions.scores_fn("regression"), 8)
    values, _ = predict_video(regression, runner, videos["a"], num_crops=3)
    np.testing.assert_allclose(values, logits.mean(axis=0), atol=1e-6)
    described = predictions.describe("regression", values, predictions.output_names(regression), 5, 0.5)
    assert list(described["values"]) == targets
    lines = predictions.format_prediction("regression", described)
    assert [line.split() for line in lines[:2]] == [["value_0", f"{values[0]:.4f}"], ["value_1", f"{values[1]:.4f}"]]
    assert len(lines) == 8


def test_init_from_a_pretraining_workdir(tmp_path_factory):
    """Fine-tuning can start from a training run as from a converted checkpoint: the encoder is copied."""
    workdir, trained = trained_workdir("pretrain", tmp_path_factory)
    config = tiny_config(task="classification")
    config.model.update(head="classification", num_classes=8, depth=1)
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    params, report = pretrained.init_from(workdir, "videomae", config.model, setup.init_state()["params"])
    assert {"head/kernel", "head/bias", "fc_norm/scale"} <= set(report["fresh"])
    assert "encoder_to_decoder/kernel" in report["unused"] and "encoder/norm/scale" in report["unused"]
    np.testing.assert_array_equal(np.asarray(params["encoder"]["patch_embed"]["kernel"]),
                                  trained["encoder"]["patch_embed"]["kernel"])
