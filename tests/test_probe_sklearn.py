"""vidjax.probe's scikit-learn parts: --probe=svm, --pca, --grid, and the per-class table of classification."""

import json
import sys

import numpy as np
import pytest
import sklearn.decomposition as sklearn_decomposition  # the test extra installs it

from vidjax import metrics
from vidjax.commands import probe


def write_features(path, features, **arrays):
    np.savez(path, features=np.asarray(features, np.float32),
             paths=np.array([f"v{i}.mp4" for i in range(len(features))]), **arrays)
    return str(path)


def blobs(n=150, dim=8, seed=0):
    """Three well separated Gaussian blobs (centres 6 apart, std 1): linearly separable."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n).astype(np.int32)
    centres = np.zeros((3, dim))
    centres[1, 0], centres[2, 1] = 6.0, 6.0
    return centres[label] + rng.standard_normal((n, dim)), label


def ring(n=300, seed=0):
    """Class 0 inside radius 1, class 1 on radii 2..3: no line separates them."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n).astype(np.int32)
    r = np.where(label == 0, rng.uniform(0, 1, n), rng.uniform(2, 3, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1), label


def report_of(tmp_path):
    return json.loads((tmp_path / "f.probe.json").read_text())


def test_svm_linear_separates_blobs(tmp_path, capsys):
    x, label = blobs()
    features = write_features(tmp_path / "f.npz", x, label=label, class_names=np.array(["a", "b", "c"]))
    assert probe.main([f"--features={features}", "--task=classification", "--probe=svm"]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["top1"] == 1.0 and report["metrics"]["macro_f1"] == 1.0
    assert report["svm_kernel"] == "linear" and report["svm_c"] == 1.0
    assert set(report["metrics"]) == {"top1", "macro_f1"}  # the same score() path; no top5 with 3 classes
    assert [r["class"] for r in report["per_class"]] == ["a", "b", "c"]
    assert all(r["precision"] == r["recall"] == r["f1"] == 1.0 for r in report["per_class"])
    assert sum(r["support"] for r in report["per_class"]) == report["num_eval"] == 30
    out = capsys.readouterr().out
    assert out.startswith("svm probe, classification, 120 training rows") and "precision  recall" in out


def test_svm_rbf_fits_a_ring_that_linear_cannot(tmp_path):
    x, label = ring()
    features = write_features(tmp_path / "f.npz", x, label=label)
    top1 = {}
    for kernel in ("linear", "rbf"):
        assert probe.main([f"--features={features}", "--task=classification", "--probe=svm",
                           f"--svm_kernel={kernel}", "--svm_c=10"]) == 0
        top1[kernel] = report_of(tmp_path)["metrics"]["top1"]
    assert top1["rbf"] >= 0.95 and top1["linear"] < 0.8, top1


def test_svm_regression_and_multilabel(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    targets = np.stack([x @ rng.standard_normal(6), x[:, 0] * 3.0 + 10.0], axis=1)
    features = write_features(tmp_path / "f.npz", x, targets=targets.astype(np.float32),
                              target_names=np.array(["speed", "size"]))
    assert probe.main([f"--features={features}", "--task=regression", "--probe=svm", "--svm_c=10"]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["ccc_speed"] > 0.95 and report["metrics"]["ccc_size"] > 0.95, report["metrics"]
    assert "per_class" not in report
    multi = write_features(tmp_path / "m.npz", x, labels=(targets > 0).astype(np.float32))
    assert probe.main([f"--features={multi}", "--task=multilabel", "--probe=svm"]) == 2
    assert "svm supports classification and regression only" in capsys.readouterr().err


def test_pca_is_fitted_on_training_rows_only(tmp_path, monkeypatch):
    x, label = blobs(n=100, dim=6)
    train = write_features(tmp_path / "f.npz", x, label=label)
    # Evaluation rows far out along the last axis: a PCA fitted with them would make that axis its first component.
    x_eval, eval_label = blobs(n=40, dim=6, seed=1)
    x_eval[:, 5] *= 1000.0
    evaluation = write_features(tmp_path / "e.npz", x_eval, label=eval_label)
    seen = {}
    real = probe.train_probe

    def spy(task, x_train, y_train, x_eval, **kwargs):
        seen["train"], seen["eval"] = x_train, x_eval
        return real(task, x_train, y_train, x_eval, **kwargs)

    monkeypatch.setattr(probe, "train_probe", spy)
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=classification",
                       "--pca=2", "--epochs=5"]) == 0
    expected = sklearn_decomposition.PCA(n_components=2, svd_solver="full").fit(x.astype(np.float32))
    assert seen["train"].shape == (100, 2) and seen["eval"].shape == (40, 2)
    np.testing.assert_allclose(seen["train"], expected.transform(x.astype(np.float32)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(seen["eval"], expected.transform(x_eval.astype(np.float32)), rtol=1e-4, atol=1e-3)
    with_eval = sklearn_decomposition.PCA(n_components=2).fit(np.concatenate([x, x_eval]))
    assert abs(with_eval.components_[0, 5]) > 0.99 > abs(expected.components_[0, 5]) + 0.5  # the check has teeth
    assert report_of(tmp_path)["pca"] == 2


def test_pca_too_large(tmp_path, capsys):
    x, label = blobs(n=20, dim=6)
    features = write_features(tmp_path / "f.npz", x, label=label)
    assert probe.main([f"--features={features}", "--task=classification", "--pca=7"]) == 2
    assert "--pca=7 exceeds the 16 training rows or the feature dimension 6" in capsys.readouterr().err
    wide = write_features(tmp_path / "w.npz", np.random.default_rng(0).standard_normal((20, 40)), label=label)
    assert probe.main([f"--features={wide}", "--task=classification", "--probe=svm", "--pca=17"]) == 2
    assert "--pca=17 exceeds the 16 training rows" in capsys.readouterr().err
    assert probe.main([f"--features={features}", "--task=classification", "--pca=-1"]) == 2
    assert "--pca=-1" in capsys.readouterr().err
    assert not (tmp_path / "f.probe.json").exists()


def test_grid_svm_rbf_chooses_the_gamma_that_resolves_stripes(tmp_path, capsys):
    """Stripes 0.5 wide along one axis: only the largest gamma (the narrowest kernel) resolves them."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (300, 1))
    label = (np.floor(x[:, 0] * 2) % 2).astype(np.int32)
    features = write_features(tmp_path / "f.npz", x, label=label)
    assert probe.main([f"--features={features}", "--task=classification", "--probe=svm", "--svm_kernel=rbf",
                       "--grid"]) == 0
    grid = report_of(tmp_path)["grid"]
    assert grid["chosen"]["gamma"] == 10.0 and grid["chosen"]["C"] in probe.GRID_C
    assert grid["value"] > 0.9 and grid["num_validation"] == 48 and len(grid["tried"]) == 12
    assert max(t["top1"] for t in grid["tried"] if t["gamma"] < 10.0) < 0.8
    out = capsys.readouterr().out
    assert f"grid: chose C={grid['chosen']['C']:.4g} gamma=10 (validation top1 {grid['value']:.4f} on 48" in out
    assert report_of(tmp_path)["metrics"]["top1"] > 0.9


def test_grid_linear_validates_on_training_rows_only(tmp_path, monkeypatch, capsys):
    x, label = blobs(n=100, dim=4)
    train = write_features(tmp_path / "f.npz", x, label=label)
    x_eval, eval_label = blobs(n=30, dim=4, seed=1)
    evaluation = write_features(tmp_path / "e.npz", x_eval + 100.0, label=eval_label)  # rows easy to recognise
    calls = []
    real = probe.train_probe

    def spy(task, x_train, y_train, x_eval, **kwargs):
        calls.append((x_train, x_eval, kwargs["lr"]))
        return real(task, x_train, y_train, x_eval, **kwargs)

    monkeypatch.setattr(probe, "train_probe", spy)
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=classification", "--grid",
                       "--epochs=3", "--batch_size=20"]) == 0
    assert [lr for _, _, lr in calls[:-1]] == list(probe.GRID_LR)
    for fit, val, _ in calls[:-1]:  # 80 rows fitted, 20 validated, all of them training rows
        assert fit.shape == (80, 4) and val.shape == (20, 4) and np.abs(np.concatenate([fit, val])).max() < 50
        assert not set(map(tuple, fit)) & set(map(tuple, val))
    report = report_of(tmp_path)
    final_train, final_eval, final_lr = calls[-1]
    assert final_train.shape == (100, 4) and final_eval.min() > 50 and final_lr == report["grid"]["chosen"]["lr"]
    assert report["grid"]["chosen"]["lr"] in probe.GRID_LR and report["grid"]["metric"] == "top1"
    assert f"grid: chose lr={final_lr:.4g} (validation top1" in capsys.readouterr().out


def test_per_class_hand_computed(tmp_path, capsys):
    # labels 0 0 1 1 2, predictions 0 1 1 1 0
    labels = np.array([0, 0, 1, 1, 2])
    scores = np.eye(3)[[0, 1, 1, 1, 0]]
    rows = probe.per_class(scores, labels, ["cat", "dog", "eel"])
    assert rows == [
        {"class": "cat", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        {"class": "dog", "precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2},
        {"class": "eel", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
    ]
    assert np.mean([r["f1"] for r in rows]) == pytest.approx(metrics.macro_f1(scores, labels))
    # A class neither present nor predicted is left out; without names the index names it.
    rows = probe.per_class(np.eye(4)[[0, 2]], np.array([0, 2]), None)
    assert [r["class"] for r in rows] == ["0", "2"]
    table = probe.per_class_table(probe.per_class(scores, labels, ["cat", "dog", "eel"]))
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert table[2].split() == ["dog", "0.6667", "1.0000", "0.8000", "2"]


def test_missing_sklearn_names_the_extra(tmp_path, monkeypatch, capsys):
    for name in ("sklearn", "sklearn.svm", "sklearn.decomposition"):
        monkeypatch.setitem(sys.modules, name, None)
    x, label = blobs(n=40)
    features = write_features(tmp_path / "f.npz", x, label=label)
    for flag in ("--probe=svm", "--pca=2"):
        assert probe.main([f"--features={features}", "--task=classification", flag, "--epochs=2"]) == 2
        err = capsys.readouterr().err
        assert "needs scikit-learn" in err and "pip install 'vidjax[probe]'" in err, err
    # The linear probe and the per-class table need no scikit-learn.
    assert probe.main([f"--features={features}", "--task=classification", "--epochs=2"]) == 0
    assert "per_class" in report_of(tmp_path)


def test_small_sets_stratify_and_leave_out_what_would_mislead(tmp_path, capsys):
    # 3 classes of 30, 15 and 5 rows: the 10 held-out rows keep those shares (6, 3, 1) and no top5 is reported.
    x, _ = blobs(n=50)
    label = np.repeat([0, 1, 2], [30, 15, 5]).astype(np.int32)
    features = write_features(tmp_path / "f.npz", x, label=label)
    assert probe.main([f"--features={features}", "--task=classification", "--epochs=5"]) == 0
    report = report_of(tmp_path)
    assert set(report["metrics"]) == {"top1", "macro_f1"}
    assert [r["support"] for r in report["per_class"]] == [6, 3, 1]
    assert report["notes"] == ["top5 is not reported: with 3 classes every row would count as correct."]
    assert "note: top5 is not reported" in capsys.readouterr().out
    # A class of one row cannot be stratified: a random split, said so; a class with no scored row is left out of
    # macro_f1, said so.
    label = np.repeat([0, 1, 2], [30, 19, 1]).astype(np.int32)
    write_features(tmp_path / "f.npz", x, label=label, class_names=np.array(["a", "b", "c"]))
    assert probe.main([f"--features={features}", "--task=classification", "--epochs=5"]) == 0
    notes = report_of(tmp_path)["notes"]
    assert notes[0] == ("the held-out rows are drawn at random, not stratified by class: class [2] has a single "
                        "row. Give more rows per class, or --eval_features."), notes
    assert notes[-1] == ("macro_f1 averages the 2 classes present in the 10 scored rows; 1 of the 3 classes have "
                         "no scored row and are left out."), notes


def test_macro_f1_of_labelled_classes_only():
    scores = np.eye(3)[[0, 1, 2, 2]]  # class 2 is predicted twice but is never the label
    labels = [0, 1, 0, 1]
    assert metrics.macro_f1(scores, labels) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert metrics.macro_f1(scores, labels, labelled_only=True) == pytest.approx(2 / 3)
    assert metrics.classification_metrics(scores, labels, small_set=True) == {
        "top1": 0.5, "macro_f1": pytest.approx(2 / 3)}
    assert "top5" in metrics.classification_metrics(np.eye(6)[[0, 1]], [0, 1], small_set=True)
