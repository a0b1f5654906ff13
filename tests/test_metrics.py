"""Tests for vidjax.metrics: every metric against values worked out by hand, shape errors, the confusion figure."""

import os

import numpy as np
import pytest
from PIL import Image

from vidjax import metrics

# Four examples, four classes. Ranks of the true class (ties go to the lower index):
# ex 0: label 1 is the highest -> rank 0; ex 1: label 2 is behind class 0 -> rank 1;
# ex 2: label 1 ties class 0 (lower index, ranks first) and is behind class 2 -> rank 2;
# ex 3: label 0 ties class 1 (higher index) -> rank 0.
TOPK_SCORES = [[0.1, 0.5, 0.3, 0.1], [0.4, 0.2, 0.3, 0.1], [0.2, 0.2, 0.5, 0.1], [0.3, 0.3, 0.2, 0.2]]
TOPK_LABELS = [1, 2, 1, 0]

# Macro-F1 / confusion case, five classes: class 2 is never predicted, class 3 is predicted but never true,
# class 4 neither occurs nor is predicted.
F1_LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 0])
F1_PREDS = np.array([0, 0, 1, 1, 1, 0, 0, 3])
F1_SCORES = np.eye(5)[F1_PREDS] + 0.01 * np.arange(5)  # argmax = F1_PREDS


def test_top_k_accuracy_hand_ranks():
    assert metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS, k=1) == 0.5
    assert metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS, k=2) == 0.75
    assert metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS, k=3) == 1.0
    assert metrics.top_k_accuracy(np.array(TOPK_SCORES, np.float32), np.array(TOPK_LABELS, np.int32), k=4) == 1.0
    argmax_accuracy = np.mean(np.argmax(TOPK_SCORES, axis=1) == TOPK_LABELS)
    assert metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS) == argmax_accuracy


def test_top_k_accuracy_constant_scores_are_not_always_right():
    # All scores tie: class c ranks c-th, so label 1 is in the top 2 and label 2 is not.
    scores = np.zeros((2, 3))
    assert metrics.top_k_accuracy(scores, [1, 2], k=1) == 0.0
    assert metrics.top_k_accuracy(scores, [1, 2], k=2) == 0.5


def test_top_k_accuracy_bad_k():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\].*got k=5"):
        metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS, k=5)
    with pytest.raises(ValueError, match="got k=0"):
        metrics.top_k_accuracy(TOPK_SCORES, TOPK_LABELS, k=0)


def test_confusion_matrix_hand_counts():
    cm = metrics.confusion_matrix(F1_SCORES, F1_LABELS)
    expected = np.array([
        [2, 1, 0, 1, 0],  # true 0 -> predicted 0, 0, 1, 3
        [0, 2, 0, 0, 0],
        [2, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ])
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)


def test_macro_f1_hand_computed():
    # class 0: TP 2, FP 2, FN 2 -> 4/8; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2 (never predicted): 0;
    # class 3 (predicted, never true): 0; class 4: left out.
    assert metrics.macro_f1(F1_SCORES, F1_LABELS) == pytest.approx((0.5 + 0.8 + 0 + 0) / 4)
    assert metrics.macro_f1(F1_SCORES, F1_PREDS) == 1.0


def test_classification_metrics_keys_and_top5_with_few_classes():
    out = metrics.classification_metrics(TOPK_SCORES, TOPK_LABELS)
    assert out == {"top1": 0.5, "top5": 1.0, "macro_f1": pytest.approx(metrics.macro_f1(TOPK_SCORES, TOPK_LABELS))}
    # Seven classes, true class always ranked 5th (index 4 of the descending order) or 6th.
    scores = np.tile(np.arange(7, 0, -1, dtype=np.float64), (2, 1))
    out = metrics.classification_metrics(scores, [4, 5])
    assert out["top1"] == 0.0 and out["top5"] == 0.5


def test_average_precision_hand_ranking():
    # Shuffled input; by score the targets rank 1 0 1 0 0: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    scores = [0.5, 0.9, 0.6, 0.7, 0.8]
    targets = [0, 1, 0, 1, 0]
    ap = metrics.average_precision(np.array(scores)[:, None], np.array(targets)[:, None])
    assert ap.dtype == np.float64 and ap.shape == (1,)
    assert ap[0] == pytest.approx(5 / 6)
    # scikit-learn's documented example for average_precision_score gives 0.8333...
    ap = metrics.average_precision([[0.1], [0.4], [0.35], [0.8]], [[0], [0], [1], [1]])
    assert ap[0] == pytest.approx(5 / 6)


def test_average_precision_ties_enter_together():
    # Thresholds 0.9 (P 0, R 0), 0.8 (the tie: TP 1 of 3 -> P 1/3, R 1/2), 0.4 (P 2/4, R 1):
    # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12, whatever the order of the tied pair (positive-first would give 1/2).
    scores = np.array([[0.9, 0.8], [0.8, 0.8], [0.8, 0.8], [0.4, 0.8]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    ap = metrics.average_precision(scores, targets)
    assert ap[0] == pytest.approx(5 / 12)
    assert metrics.average_precision(scores[::-1], targets[::-1])[0] == pytest.approx(5 / 12)
    # All scores tied: one threshold, P = prevalence, R = 1 (rank by rank, 1 0 1 0 would give 1/2 + 1/4 = 3/4).
    assert ap[1] == pytest.approx(0.5)


def test_mean_average_precision_skips_classes_without_positives():
    scores = np.array([[0.5, 0.9, 0.1], [0.9, 0.8, 0.2], [0.6, 0.8, 0.3], [0.7, 0.4, 0.4], [0.8, 0.1, 0.5]])
    targets = np.array([[0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    # class 0: ranks 1 0 1 0 0 -> 5/6; class 1: 0.9 neg, 0.8 tie (1 pos, 1 neg), 0.4 pos -> 5/12; class 2: none.
    ap = metrics.average_precision(scores, targets)
    np.testing.assert_allclose(ap[:2], [5 / 6, 5 / 12])
    assert np.isnan(ap[2])
    assert metrics.mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 5 / 12) / 2)
    assert metrics.multilabel_metrics(scores.tolist(), targets.tolist()) == {"mAP": pytest.approx(5 / 8)}


def test_mean_average_precision_without_any_positive_raises():
    with pytest.raises(ValueError, match=r"no class has a positive.*\(3, 2\)"):
        metrics.mean_average_precision(np.ones((3, 2)), np.zeros((3, 2)))


def test_average_precision_rejects_soft_targets():
    with pytest.raises(ValueError, match=r"targets \(2, 1\) must be 0/1.*0.5"):
        metrics.average_precision([[0.1], [0.2]], [[0.5], [1.0]])


def test_ccc_hand_values():
    t = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population variance 1.25
    pred = np.stack([t, np.full(4, 3.0), 2 * t + 1, -t], axis=1)
    target = np.stack([t, t, t, t], axis=1)
    values = metrics.ccc(pred, target)
    assert values.dtype == np.float64 and values.shape == (4,)
    # 2t+1: mean 6, var 5, cov 2.5 -> 2 * 2.5 / (5 + 1.25 + 3.5^2) = 10/37.
    # -t: mean -2.5, var 1.25, cov -1.25 -> -2.5 / (1.25 + 1.25 + 25) = -1/11.
    np.testing.assert_allclose(values, [1.0, 0.0, 10 / 37, -1 / 11], rtol=1e-12)


def test_ccc_constant_cases():
    # Both constant and equal (0.1 does not survive mean() exactly): denominator 0 -> 1.
    assert metrics.ccc([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]).tolist() == [1.0]
    # Both constant, different: no covariance, positive denominator -> 0.
    assert metrics.ccc([[0.1], [0.1]], [[0.3], [0.3]]).tolist() == [0.0]
    # Constant target, varying prediction -> 0.
    assert metrics.ccc([[1.0], [2.0]], [[0.3], [0.3]]).tolist() == [0.0]


def test_regression_metrics_keys_and_values():
    target = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    pred = np.stack([2 * target[:, 0] + 1, target[:, 1]], axis=1)
    out = metrics.regression_metrics(pred, target, ["velocity_x", "velocity_y"])
    # Squared errors: column 0 has (t + 1)^2 = 4, 9, 16, 25; column 1 is exact -> mse = 54 / 8.
    assert out == {
        "ccc_velocity_x": pytest.approx(10 / 37),
        "ccc_velocity_y": pytest.approx(1.0),
        "ccc_mean": pytest.approx((10 / 37 + 1) / 2),
        "mse": pytest.approx(54 / 8),
    }
    assert list(metrics.regression_metrics(pred, target)) == ["ccc_target_0", "ccc_target_1", "ccc_mean", "mse"]
    with pytest.raises(ValueError, match=r"got 1 target names \['vx'\] for pred/target of shape \(4, 2\)"):
        metrics.regression_metrics(pred, target, ["vx"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.top_k_accuracy([0.1, 0.9], [1]), r"scores \(N, C\) must be 2-D, got shape \(2,\)"),
        (lambda: metrics.macro_f1(np.zeros((3, 2)), [0, 1]), r"scores \(3, 2\) and labels \(2,\) must have the same"),
        (lambda: metrics.confusion_matrix(np.zeros((2, 2)), [[0], [1]]), r"labels \(N,\) must be 1-D.*\(2, 1\)"),
        (lambda: metrics.confusion_matrix(np.zeros((2, 2)), [0.0, 1.0]), "integer class indices, got dtype float64"),
        (lambda: metrics.top_k_accuracy(np.zeros((2, 3)), [0, 3]), r"labels must lie in \[0, 3\).*found \[3\]"),
        (lambda: metrics.classification_metrics(np.zeros((0, 3)), []), r"no examples \(shape \(0, 3\)\)"),
        (lambda: metrics.top_k_accuracy([[np.nan, 1.0]], [0]), "contains 1 NaN values"),
        (lambda: metrics.average_precision(np.zeros((3, 2)), np.zeros((3, 4))),
         r"scores \(3, 2\) and targets \(3, 4\) must have the same shape"),
        (lambda: metrics.ccc(np.zeros((3, 2)), np.zeros((3,))), r"target \(N, K\) must be 2-D, got shape \(3,\)"),
        (lambda: metrics.ccc(np.zeros((3, 2)), np.zeros((4, 2))), r"pred \(3, 2\) and target \(4, 2\)"),
    ],
)
def test_bad_inputs_raise_naming_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------- confusion figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_figure_png_size_and_colours(tmp_path):
    sizes = {}
    for num_classes in (3, 6):
        cm = np.diag(np.arange(1, num_classes + 1))
        cm[1] = [1, 1] + [0] * (num_classes - 2)  # row 1 half / half
        path = tmp_path / "nested" / f"cm{num_classes}.png"
        metrics.confusion_matrix_figure(cm, None, str(path), title="val")
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            assert image.format == "PNG"
            rgb = np.asarray(image.convert("RGB"))
        sizes[num_classes] = rgb.shape[1], rgb.shape[0]
        # The grid is the bottom-right C*cell square (less a 4 px margin); sample each cell near its corner,
        # away from the count written at its centre.
        cell = metrics.cell_size(num_classes)
        origin_y, origin_x = rgb.shape[0] - 4 - num_classes * cell, rgb.shape[1] - 4 - num_classes * cell
        corners = rgb[origin_y + 2 :: cell, origin_x + 2 :: cell][:num_classes, :num_classes].astype(int)
        np.testing.assert_array_equal(corners[0, 0], [8, 48, 107])  # row fraction 1
        np.testing.assert_array_equal(corners[0, 1], [255, 255, 255])  # row fraction 0
        np.testing.assert_allclose(corners[1, 0], [131.5, 151.5, 181], atol=0.5)  # row fraction 1/2
        np.testing.assert_array_equal(corners[1, 0], corners[1, 1])
        np.testing.assert_array_equal(corners[2, 2], [8, 48, 107])
    # Same label widths (one-digit indices): three more classes add three cells in each direction.
    assert metrics.cell_size(3) == metrics.cell_size(6) == 40
    assert sizes[6][0] - sizes[3][0] == sizes[6][1] - sizes[3][1] == 3 * 40


def test_confusion_matrix_figure_many_classes_and_long_names(tmp_path):
    num_classes = 200
    names = [f"a very long class name number {i:03d}" for i in range(num_classes)]
    path = tmp_path / "cm.png"
    metrics.confusion_matrix_figure(np.eye(num_classes, dtype=np.int64), names, path)
    cell = metrics.cell_size(num_classes)
    assert cell == 20  # no counts drawn above 30 classes, so the cells shrink
    with Image.open(path) as image:
        width, height = image.size
    # Grid plus margins for the (truncated) names: names cannot widen the image beyond a bounded label area.
    assert num_classes * cell < width < num_classes * cell + 200
    assert num_classes * cell < height < num_classes * cell + 200
    assert metrics.cell_size(1000) * 1000 == 4000


def test_confusion_matrix_figure_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"square \(C, C\).*\(2, 3\)"):
        metrics.confusion_matrix_figure(np.zeros((2, 3)), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"got 1 class_names for a confusion matrix of shape \(2, 2\)"):
        metrics.confusion_matrix_figure(np.zeros((2, 2)), ["a"], tmp_path / "x.png")
    assert not os.listdir(tmp_path)


def test_confusion_matrix_figure_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def save_half_then_fail(self, fp, *args, **kwargs):
        if hasattr(fp, "write"):
            fp.write(PNG_MAGIC)  # a partial file, as a full disk or a kill would leave
        else:
            with open(fp, "wb") as f:
                f.write(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    path = tmp_path / "cm.png"
    with pytest.raises(OSError, match="disk full"):
        metrics.confusion_matrix_figure(np.eye(3, dtype=int), None, path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []

    # An earlier figure at the path survives a failed rewrite untouched.
    path.write_bytes(b"previous figure")
    with pytest.raises(OSError, match="disk full"):
        metrics.confusion_matrix_figure(np.eye(3, dtype=int), None, path)
    assert path.read_bytes() == b"previous figure"
    assert os.listdir(tmp_path) == ["cm.png"]


def test_retrieval_recall_and_median_rank_by_hand():
    # Query 0's item (0) ranks 1st, query 1's (1) 3rd, query 2's (2) 2nd behind a tie broken towards the lower index.
    similarity = [[0.9, 0.1, 0.2], [0.5, 0.1, 0.3], [0.4, 0.0, 0.4]]
    got = metrics.retrieval_metrics(similarity, ks=(1, 2, 5))
    assert got == {"recall_at_1": 1 / 3, "recall_at_2": 2 / 3, "recall_at_5": 1.0, "median_rank": 2.0}
    # Several queries (captions) per item: targets name each query's item.
    got = metrics.retrieval_metrics([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]], targets=[1, 0, 1], ks=(1,))
    assert got["recall_at_1"] == 2 / 3
    assert metrics.retrieval_metrics(np.ones((4, 4)), ks=(1,))["recall_at_1"] == 0.25  # only query 0 (ties: index 0)
    with pytest.raises(ValueError, match="targets must index the 2 items"):
        metrics.retrieval_metrics([[0.2, 0.8]], targets=[2])

