"""vidjax.extract (embeddings of a video list) and vidjax.probe (linear / MLP probes on them)."""

import json
import pathlib

import numpy as np
import pytest
from test_predict import make_clip, trained_workdir

from vidjax import pretrained
from vidjax.commands import extract, probe
from vidjax.commands.convert import convert
from vidjax.pretrained import pooling

# A random-weight TimesformerModel (4 frames x 32 px): a CLS token and no head.
TIMESFORMER = pathlib.Path(__file__).parent / "fixtures" / "parity" / "timesformer_model_divided" / "source"


@pytest.fixture(scope="module")
def video_list(tmp_path_factory):
    """A VideoMAE list of 3 good videos, a corrupt one and a missing one."""
    folder = tmp_path_factory.mktemp("extract_videos")
    for i in range(3):
        make_clip(folder / f"good{i}.mp4", seed=10 + i, num_frames=20)
    (folder / "corrupt.mp4").write_bytes(b"\x1aE\xdf\xa3 not really a matroska file")
    lines = ["good0.mp4 2", "good1.mp4 0", "corrupt.mp4 1", "good2.mp4 1", "missing.mp4 0"]
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder


def read_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data}


def test_extract_mean_and_tokens_with_failures(tmp_path_factory, video_list, tmp_path, capsys):
    workdir, _ = trained_workdir("pretrain", tmp_path_factory)
    common = [f"--checkpoint={workdir}", f"--csv={video_list / 'list.txt'}", f"--root={video_list}",
              "--batch_size=2"]
    assert extract.main([*common, f"--out={tmp_path / 'mean.npz'}"]) == 1
    captured = capsys.readouterr()
    assert "2 failed (listed in the index)" in captured.out
    # The progress line counts the missing video as the summary does: 5 listed, 2 failed.
    assert "corrupt.mp4" in captured.err and "missing.mp4" in captured.err
    assert "extract: 5/5 videos, 2 failed" in captured.err
    mean = read_npz(tmp_path / "mean.npz")
    assert mean["features"].shape == (3, 32) and mean["features"].dtype == np.float32
    assert [p.rsplit("/", 1)[1] for p in mean["paths"]] == ["good0.mp4", "good1.mp4", "good2.mp4"]
    assert mean["index"].tolist() == [0, 1, 3] and mean["label"].tolist() == [2, 0, 1]

    index = json.loads((tmp_path / "mean.index.json").read_text())
    assert index["pool"] == "mean" and index["features_shape"] == [3, 32] and len(index["rows"]) == 3
    failed = {f["path"].rsplit("/", 1)[1]: f["error"] for f in index["failed"]}
    assert set(failed) == {"corrupt.mp4", "missing.mp4"} and "does not exist" in failed["missing.mp4"]

    # Hand-computed: the pre-training encoder on every token (after its final norm), averaged over tokens.
    model = pretrained.load(workdir)
    clip = model.read_views(str(video_list / "good1.mp4"))
    hidden = np.asarray(model.model.encoder(model.preprocess(clip)))
    np.testing.assert_allclose(mean["features"][1], hidden.mean(axis=1)[0], atol=1e-5)

    assert extract.main([*common, f"--out={tmp_path / 'tokens.npz'}", "--pool=tokens"]) == 1
    tokens = read_npz(tmp_path / "tokens.npz")["features"]
    assert tokens.shape == (3, 2 * 4 * 4, 32)  # (4 frames / tubelet 2) x (32 px / patch 8)^2 tokens, width 32
    np.testing.assert_allclose(tokens.mean(axis=1), mean["features"], atol=1e-5)

    capsys.readouterr()
    assert extract.main([*common, f"--out={tmp_path / 'cls.npz'}", "--pool=cls"]) == 2
    err = capsys.readouterr().err
    assert "--pool=cls" in err and "use --pool=mean" in err and not (tmp_path / "cls.npz").exists()
    assert extract.main([*common, f"--out={tmp_path / 'features.txt'}"]) == 2


def test_extract_mean_pooling_is_the_classifier_input(tmp_path_factory, video_list, tmp_path):
    """A header list with regression columns; mean pooling + fc_norm of a classifier is what its head reads."""
    workdir, _ = trained_workdir("classification", tmp_path_factory)
    rows = ["path,label,speed,size", "good0.mp4,3,0.5,1", "good2.mp4,1,-2,0.25"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    assert extract.main([f"--checkpoint={workdir}", f"--csv={tmp_path / 'list.csv'}", f"--root={video_list}",
                         "--targets=speed,size", f"--out={tmp_path / 'f.npz'}"]) == 0
    out = read_npz(tmp_path / "f.npz")
    assert out["label"].tolist() == [3, 1] and out["target_names"].tolist() == ["speed", "size"]
    model = pretrained.load(workdir)
    assert model.class_names and out["class_names"].tolist() == model.class_names  # the list names none
    np.testing.assert_allclose(out["targets"], [[0.5, 1.0], [-2.0, 0.25]])
    views = np.concatenate([model.read_views(str(video_list / name)) for name in ("good0.mp4", "good2.mp4")])
    logits = np.asarray(model(model.preprocess(views)))
    head = model.params["head"]
    np.testing.assert_allclose(out["features"] @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), logits,
                               atol=1e-5)


def test_extract_reads_only_a_rows_segment(tmp_path_factory, video_list, tmp_path):
    workdir, _ = trained_workdir("classification", tmp_path_factory)
    rows = ["path,label,start,end", "good0.mp4,1,0.0,0.3", "good0.mp4,1,,"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    assert extract.main([f"--checkpoint={workdir}", f"--csv={tmp_path / 'list.csv'}", f"--root={video_list}",
                         f"--out={tmp_path / 'f.npz'}"]) == 0
    features = read_npz(tmp_path / "f.npz")["features"]
    model = pretrained.load(workdir)
    segment = model.read_views(str(video_list / "good0.mp4"), start_s=0.0, end_s=0.3)
    whole = model.read_views(str(video_list / "good0.mp4"))
    assert not np.array_equal(segment, whole)
    runner = pretrained.BatchRunner(model, pooling.pool_fn(model, "mean"), 2)
    expected = np.stack(list(runner.run([segment[0], whole[0]])))
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_extract_cls_token(video_list, tmp_path):
    convert(from_hf=str(TIMESFORMER), out=str(tmp_path / "timesformer"))
    model = pretrained.load(tmp_path / "timesformer")
    (tmp_path / "list.txt").write_text("good0.mp4 0\ngood1.mp4 1\n")
    common = [f"--checkpoint={tmp_path / 'timesformer'}", f"--csv={tmp_path / 'list.txt'}", f"--root={video_list}",
              "--sampling_rate=2"]
    # Missing parent folders of --out are created, as by export's --out and predict's --json.
    assert extract.main([*common, f"--out={tmp_path / 'new' / 'folder' / 'cls.npz'}", "--pool=cls"]) == 0
    assert extract.main([*common, f"--out={tmp_path / 'mean.npz'}"]) == 0
    views = np.concatenate([model.read_views(str(video_list / f"good{i}.mp4"), sampling_rate=2) for i in (0, 1)])
    hidden = np.asarray(model(model.preprocess(views)))  # last_hidden_state: CLS first, then the patch tokens
    np.testing.assert_allclose(read_npz(tmp_path / "new" / "folder" / "cls.npz")["features"], hidden[:, 0], atol=1e-5)
    np.testing.assert_allclose(read_npz(tmp_path / "mean.npz")["features"], hidden[:, 1:].mean(axis=1), atol=1e-5)


def write_features(path, features, **arrays):
    np.savez(path, features=features.astype(np.float32), paths=np.array([f"v{i}.mp4" for i in range(len(features))]),
             **arrays)
    return str(path)


def learnable(task, n=300, dim=12, seed=0):
    """Features and targets with one linear signal (the same for every seed): the probe has something to find."""
    w = np.random.default_rng(123).standard_normal((dim, 4))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) * 3.0 + 1.0
    z = x @ w + 0.1 * rng.standard_normal((n, 4))
    if task == "classification":
        return x, {"label": np.argmax(z, axis=1).astype(np.int32), "class_names": np.array(["a", "b", "c", "d"])}
    if task == "multilabel":
        return x, {"labels": (z[:, :3] > 0).astype(np.float32)}
    return x, {"targets": z[:, :2].astype(np.float32), "target_names": np.array(["speed", "size"])}


@pytest.mark.parametrize("task,probe_kind,metric,floor", [
    ("classification", "linear", "top1", 0.8),  # chance: about 0.25
    ("classification", "mlp", "top1", 0.7),
    ("multilabel", "linear", "mAP", 0.85),  # chance: the positive rate, about 0.5
    ("regression", "linear", "ccc_speed", 0.9),
])
def test_probe_learns_the_signal(tmp_path, capsys, task, probe_kind, metric, floor):
    x, arrays = learnable(task)
    features = write_features(tmp_path / "train.npz", x, **arrays)
    assert probe.main([f"--features={features}", f"--probe={probe_kind}", "--lr=0.01",  # the task: the file's
                       "--epochs=60", "--batch_size=64"]) == 0
    report = json.loads((tmp_path / "train.probe.json").read_text())
    assert report["task"] == task
    assert report["num_train"] == 240 and report["num_eval"] == 60
    assert report["metrics"][metric] > floor, report["metrics"]
    expected = {"classification": {"top1", "macro_f1"}, "multilabel": {"mAP"},  # no top5 of 4 classes
                "regression": {"ccc_speed", "ccc_size", "ccc_mean", "mse"}}[task]
    assert set(report["metrics"]) == expected
    assert f"{metric} {report['metrics'][metric]:.4f}" in capsys.readouterr().out


def test_probe_on_separate_eval_features_and_noise(tmp_path):
    x, arrays = learnable("classification", n=200)
    train = write_features(tmp_path / "train.npz", x, **arrays)
    x_eval, eval_arrays = learnable("classification", n=100, seed=1)
    evaluation = write_features(tmp_path / "eval.npz", x_eval, **eval_arrays)
    out = tmp_path / "report.json"
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=classification",
                       "--lr=0.01", "--epochs=40", "--batch_size=50", f"--out={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["num_train"] == 200 and report["num_eval"] == 100 and report["metrics"]["top1"] > 0.8
    # Labels unrelated to the features: the probe stays near chance.
    noise = dict(arrays, label=np.random.default_rng(5).integers(0, 4, 200).astype(np.int32))
    write_features(tmp_path / "noise.npz", x, **noise)
    assert probe.main([f"--features={tmp_path / 'noise.npz'}", "--task=classification", "--epochs=40"]) == 0
    assert json.loads((tmp_path / "noise.probe.json").read_text())["metrics"]["top1"] < 0.5


def test_probe_errors(tmp_path, capsys):
    x, arrays = learnable("classification", n=20)
    features = write_features(tmp_path / "f.npz", x, **arrays)
    assert probe.main([f"--features={features}", "--task=regression"]) == 2
    assert "no `targets` array for --task=regression (it has ['label'])" in capsys.readouterr().err
    tokens = write_features(tmp_path / "tokens.npz", np.zeros((20, 5, 3)), **arrays)
    assert probe.main([f"--features={tokens}", "--task=classification"]) == 2
    assert "extract with --pool=mean or --pool=cls" in capsys.readouterr().err
    assert probe.main([f"--features={features}", "--task=classification", "--holdout=1.5"]) == 2
    assert "--holdout=1.5" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("path,label\nv0.mp4,0\n")  # a video list instead of its features
    assert probe.main([f"--features={tmp_path / 'list.txt'}", "--task=classification"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'list.txt'}: not an .npz of features; give the output "
                                       f"of `python -m vidjax.extract`.\n")
    np.save(tmp_path / "array.npy", x)
    assert probe.main([f"--features={tmp_path / 'array.npy'}", "--task=classification"]) == 2
    assert "array.npy: not an .npz of features" in capsys.readouterr().err
    assert probe.main(["--features=no_such.npz", "--task=classification"]) == 2
    assert "no_such.npz: no such file" in capsys.readouterr().err
    for path, said in (("no_such.npz", "no such file"), (tmp_path / "list.txt", "not an .npz of features"),
                       (tmp_path / "array.npy", "not an .npz of features")):
        assert probe.main([f"--features={path}"]) == 2  # no --task: the same lines
        assert said in capsys.readouterr().err
    (tmp_path / "cut.npz").write_bytes(pathlib.Path(features).read_bytes()[:300])  # a copy cut short
    for task in ([], ["--task=classification"]):
        assert probe.main([f"--features={tmp_path / 'cut.npz'}", *task]) == 2
        assert "cut.npz: a damaged .npz (not a whole zip file); copy it again, or extract again." in (
            capsys.readouterr().err)
    # No --task, and the file holds no targets, or those of two tasks.
    unlabelled = write_features(tmp_path / "unlabelled.npz", x)
    assert probe.main([f"--features={unlabelled}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {unlabelled} holds no targets (`label` (classification)")
    both = write_features(tmp_path / "both.npz", x, targets=np.zeros((20, 1), np.float32), **arrays)
    assert probe.main([f"--features={both}"]) == 2
    assert "holds the targets of 2 tasks (classification, regression): choose one with --task." in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        probe.main([f"--features={features}", "--task=ranking"])
    assert exit_info.value.code == 2 and "--task" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["videomae_k400", pytest.param("svt_k400", marks=pytest.mark.slow),
                                    "captioning_charades"])
def test_every_family_extracts_from_a_random_init(recipe, tmp_path):
    """pretrained.init gives a runlocal model as load would (with random weights): extract pools the tokens of the
    video model in it, a VideoMAE pre-training's encoder, an SVT's backbone and a captioner's encoder. (The other
    families go through colabs/embeddings_and_probes.ipynb.)"""
    from helpers import load_config

    from vidjax.data import sources, synthetic

    config = load_config(recipe, "runlocal")
    if recipe == "captioning_charades":
        config.model.decoder.vocab_size = 64  # a trained captioner's comes from its tokenizer
    model = pretrained.init(config.model_name, config.model, seed=1, sampling_rate=1)
    assert model.preprocessing["num_frames"] == config.data.num_frames and model.params
    clips = synthetic.SyntheticVideoSource(2, num_frames=8, height=32, width=32)
    listed = synthetic.write_files(clips, tmp_path)
    arrays, failed = extract.extract(model, sources.CsvVideoSource(listed, root=tmp_path), batch_size=2)
    assert not failed and arrays["features"].shape[0] == 2 and np.isfinite(arrays["features"]).all()
    video = model.preprocess(model.read_views(arrays["paths"][0]))
    module = model.model
    if recipe == "svt_k400":  # the CLS token of the backbone, which the DINO head reads
        np.testing.assert_allclose(extract.extract(model, sources.CsvVideoSource(listed, root=tmp_path),
                                                   pool="cls")[0]["features"][0],
                                   np.asarray(module(video)["cls"])[0], rtol=1e-4, atol=1e-5)
    if recipe == "captioning_charades":  # the frozen encoder's tokens, averaged
        tokens = module.encoder(video)["last_hidden_state"]
        np.testing.assert_allclose(arrays["features"][0], np.asarray(tokens.mean(axis=1))[0], rtol=1e-4, atol=1e-5)
