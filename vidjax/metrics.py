"""Whole-split evaluation metrics for video classification, multi-label and regression tasks (numpy, host side).

Every metric is computed over all examples of a split at once (never a mean of per-batch values), from scores
(logits or probabilities: only their order matters) gathered on the host. Inputs may be lists or arrays.

- Top-k accuracy (Kinetics / Something-Something protocol): an example counts when its true class is among the k
  highest scores. Ties are broken towards the lower class index, as `np.argmax` does, so top-1 equals the argmax
  accuracy and constant scores are not counted as correct for every class.
- Macro-F1: argmax predictions; F1 = 2 TP / (2 TP + FP + FN) per class, averaged over the classes that occur in
  the labels or in the predictions (a class with no true and no predicted example is left out).
- Confusion matrix: counts, rows = true class, columns = argmax-predicted class; `confusion_matrix_figure` draws it.
- Average precision per class: the area under the precision-recall curve as scikit-learn's
  `average_precision_score` computes it, AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in
  decreasing order (examples with tied scores enter together, no interpolation). NaN for a class with no positive.
- mAP (Charades protocol): the mean of the per-class APs over the classes that have at least one positive.
- CCC, Lin's concordance correlation coefficient per target (the affective-computing / AVEC protocol):
  2 cov(p, t) / (var(p) + var(t) + (mean(p) - mean(t))^2) with population (ddof=0) moments. 1 is perfect
  agreement, 0 for constant predictions; when both are constant and equal the denominator is 0 and CCC is 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidjax.visualize_lib import save_image, text_size

_PAD = 4
_MAX_NAME_CHARS = 16
_MAX_CELL_PX = 40  # cell size while counts are written in the cells
_MAX_COUNTED_CLASSES = 30  # above this, cells are too small for counts
_MAX_GRID_PX = 4000  # larger label sets get smaller cells so the image stays a few thousand pixels wide
_LOW_RGB = np.array([255, 255, 255], np.float64)  # row fraction 0
_HIGH_RGB = np.array([8, 48, 107], np.float64)  # row fraction 1 (matplotlib's "Blues" dark end)


# ---------------------------------------------------------------------------------------------- input checks


def _array(x, name: str, ndim: int, dtype=None) -> np.ndarray:
    x = np.asarray(x) if dtype is None else np.asarray(x, dtype)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no examples (shape {x.shape}); metrics need at least one")
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        raise ValueError(f"{name} contains {int(np.isnan(x).sum())} NaN values; check the model outputs/data")
    return x


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = _array(scores, "scores (N, C)", 2, np.float64)
    labels = _array(labels, "labels (N,)", 1)
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must have the same number of examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    num_classes = scores.shape[1]
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_classes}) for scores {scores.shape}; "
                         f"found {labels[bad][:5].tolist()} at positions {np.flatnonzero(bad)[:5].tolist()}")
    return scores, labels.astype(np.int64)


def _same_shape(a, b, names: tuple[str, str], allow_1d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if allow_1d and a.ndim == 1 and b.ndim == 1:
        a, b = a[:, None], b[:, None]
    a, b = _array(a, f"{names[0]} (N, K)", 2), _array(b, f"{names[1]} (N, K)", 2)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {a.shape} and {names[1]} {b.shape} must have the same shape")
    return a, b


# --------------------------------------------------------------------------------------------- classification


def top_k_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of examples whose true class is among the `k` highest of its scores (N, C); labels (N,) int."""
    scores, labels = _scores_labels(scores, labels)
    num_classes = scores.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}] for scores {scores.shape}, got k={k}")
    true = scores[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(num_classes)[None, :] < labels[:, None]
    rank = ((scores > true) | ((scores == true) & lower_index)).sum(axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(scores, labels) -> np.ndarray:
    """int64 (C, C) counts: entry [i, j] = examples of true class i whose argmax prediction is j."""
    scores, labels = _scores_labels(scores, labels)
    num_classes = scores.shape[1]
    flat = labels * num_classes + scores.argmax(axis=1)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def macro_f1(scores, labels) -> float:
    """Mean per-class F1 of the argmax predictions over classes present in the labels or the predictions."""
    cm = confusion_matrix(scores, labels)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    seen = (tp + fp + fn) > 0
    return float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])))


def classification_metrics(scores, labels) -> dict[str, float]:
    """{"top1", "top5", "macro_f1"}; "top5" uses k = min(5, C), so it is 1.0 when there are 5 classes or fewer."""
    scores, labels = _scores_labels(scores, labels)
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, min(5, scores.shape[1])),
        "macro_f1": macro_f1(scores, labels),
    }


# ------------------------------------------------------------------------------------------------ multi-label


def average_precision(scores, targets) -> np.ndarray:
    """float64 (C,) per-class AP of scores (N, C) against 0/1 targets (N, C); NaN where a class has no positive."""
    scores, targets = _same_shape(scores, targets, ("scores", "targets"))
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError(f"targets {targets.shape} must be 0/1 (multi-hot); found values such as "
                         f"{np.unique(targets[~np.isin(targets, (0.0, 1.0))])[:5].tolist()}")
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        ranked_scores, ranked_targets = scores[order, c], targets[order, c]
        # One precision-recall point per distinct score: the last example of each run of tied scores.
        last_of_tie = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(order) - 1]
        tp = np.cumsum(ranked_targets)[last_of_tie]
        precision = tp / (last_of_tie + 1)
        recall = tp / positives
        ap[c] = np.sum(np.diff(recall, prepend=0.0) * precision)
    return ap


def mean_average_precision(scores, targets) -> float:
    """Mean of the per-class APs over the classes with at least one positive (Charades mAP)."""
    ap = average_precision(scores, targets)
    if np.isnan(ap).all():
        raise ValueError(f"no class has a positive example in targets of shape {np.shape(targets)}; mAP is "
                         "undefined: evaluate on a split with labelled positives")
    return float(np.nanmean(ap))


def multilabel_metrics(scores, targets) -> dict[str, float]:
    """{"mAP"}: mean_average_precision of scores (N, C) against multi-hot targets (N, C)."""
    return {"mAP": mean_average_precision(scores, targets)}


# ------------------------------------------------------------------------------------------------- regression


def ccc(pred, target) -> np.ndarray:
    """float64 (K,) Lin's concordance correlation of pred vs target, both (N, K) (or both (N,), giving (1,))."""
    pred, target = _same_shape(pred, target, ("pred", "target"), allow_1d=True)
    # Constant columns get exact zero moments: rounding in mean() would otherwise leave ~1e-34 variances and an
    # arbitrary ratio when prediction and target are both constant.
    const_p = (pred == pred[0]).all(axis=0)
    const_t = (target == target[0]).all(axis=0)
    mean_p = np.where(const_p, pred[0], pred.mean(axis=0))
    mean_t = np.where(const_t, target[0], target.mean(axis=0))
    dp, dt = pred - mean_p, target - mean_t
    var_p = np.where(const_p, 0.0, np.mean(dp * dp, axis=0))
    var_t = np.where(const_t, 0.0, np.mean(dt * dt, axis=0))
    cov = np.where(const_p | const_t, 0.0, np.mean(dp * dt, axis=0))
    denom = var_p + var_t + (mean_p - mean_t) ** 2
    return np.where(denom == 0, 1.0, 2 * cov / np.where(denom == 0, 1.0, denom))


def regression_metrics(pred, target, names: Sequence[str] | None = None) -> dict[str, float]:
    """{"ccc_<name>" per target, "ccc_mean", "mse"} for pred/target (N, K); names default to "target_<k>"."""
    pred, target = _same_shape(pred, target, ("pred", "target"), allow_1d=True)
    num_targets = pred.shape[1]
    names = [f"target_{k}" for k in range(num_targets)] if names is None else list(names)
    if len(names) != num_targets:
        raise ValueError(f"got {len(names)} target names {names} for pred/target of shape {pred.shape}; "
                         f"pass one name per column ({num_targets})")
    values = ccc(pred, target)
    out = {f"ccc_{name}": float(v) for name, v in zip(names, values, strict=True)}
    out["ccc_mean"] = float(values.mean())
    out["mse"] = float(np.mean((pred - target) ** 2))
    return out


# ------------------------------------------------------------------------------------------------------ figure


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME_CHARS else name[: _MAX_NAME_CHARS - 3] + "..."


def _vertical_text(text: str, font, length: int, centre: bool = False) -> Image.Image:
    """`text` in black on white reading bottom-to-top in a strip `length` px tall, from its foot or centred."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
    strip = Image.new("RGB", (length, bottom - top + 2), "white")
    x = (length - (right - left)) // 2 if centre else 0
    ImageDraw.Draw(strip).text((x - left, 1 - top), text, fill="black", font=font)
    return strip.rotate(90, expand=True)  # counter-clockwise: the strip's left end becomes its foot


def cell_size(num_classes: int) -> int:
    """Pixel size of one confusion-matrix cell for `num_classes` classes (the grid is C * cell_size(C) square)."""
    if num_classes <= _MAX_COUNTED_CLASSES:
        return _MAX_CELL_PX
    return max(1, min(_MAX_CELL_PX // 2, _MAX_GRID_PX // num_classes))


def task_metrics(task: str, scores, targets, target_names: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics of a fine-tuning task: classification, multilabel or regression (vidjax.losses.TASKS)."""
    if task == "classification":
        return classification_metrics(scores, targets)
    if task == "multilabel":
        return multilabel_metrics(scores, targets)
    if task == "regression":
        return regression_metrics(scores, targets, target_names)
    raise ValueError(f"task must be classification, multilabel or regression, got {task!r}")


def confusion_matrix_figure(cm, class_names: Sequence[str] | None, path: str | os.PathLike, title: str = "") -> None:
    """Writes a PNG of the confusion matrix `cm` (C, C) (rows = true, cols = predicted) to `path`, atomically.

    Cell colour is the row-normalised fraction (white 0 -> dark blue 1), so each true class reads as a
    distribution over predictions; raw counts are written in the cells when C <= 30. Class names (truncated to
    16 characters; indices when `class_names` is None) label the rows and, rotated, the columns; with cells
    smaller than a text line only every n-th name is written. The grid is C * cell_size(C) pixels square.
    The PNG goes to a temporary file beside `path` and is renamed over it, so `path` is never a partial file.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"cm must be a square (C, C) matrix of counts, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError(f"cm {cm.shape} holds negative counts; pass the output of confusion_matrix")
    num_classes = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class_names for a confusion matrix of shape {cm.shape}")
    names = [_short(str(n)) for n in class_names]

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(text_size(measure, t, font)[1] for t in ("Hg", *names)) + 2 * _PAD
    name_w = max(text_size(measure, n, font)[0] for n in names) + 2 * _PAD
    cell = cell_size(num_classes)
    stride = math.ceil(line_h / cell)  # label every stride-th class so names do not overlap
    title_h = line_h if title else 0
    top = title_h + line_h + name_w  # title, "predicted", rotated column names
    left = line_h + name_w  # rotated "true", row names
    grid = num_classes * cell
    image = Image.new("RGB", (left + grid + _PAD, top + grid + _PAD), "white")

    rows = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    colours = _LOW_RGB + fraction[..., None] * (_HIGH_RGB - _LOW_RGB)
    cells = np.round(colours).astype(np.uint8).repeat(cell, 0).repeat(cell, 1)
    image.paste(Image.fromarray(cells), (left, top))

    draw = ImageDraw.Draw(image)
    if title:
        draw.text((_PAD, _PAD), title, fill="black", font=font)
    draw.text((left, title_h + _PAD), "predicted", fill="black", font=font)
    image.paste(_vertical_text("true", font, grid, centre=True), (_PAD, top))
    for i in range(0, num_classes, stride):
        text_w, text_h = text_size(draw, names[i], font)
        draw.text((left - _PAD - text_w, top + i * cell + (cell - text_h) // 2), names[i], fill="black", font=font)
        column = _vertical_text(names[i], font, name_w - _PAD)
        image.paste(column, (left + i * cell + (cell - column.width) // 2, title_h + line_h))
    if num_classes <= _MAX_COUNTED_CLASSES:
        for i in range(num_classes):
            for j in range(num_classes):
                text = str(int(cm[i, j]))
                text_w, text_h = text_size(draw, text, font)
                draw.text((left + j * cell + (cell - text_w) // 2, top + i * cell + (cell - text_h) // 2), text,
                          fill="white" if fraction[i, j] > 0.5 else "black", font=font)

    save_image(image, path, format="PNG")
