"""Whole-split evaluation metrics for video classification, multi-label, regression and captioning (numpy, host side).

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
- Retrieval (MSR-VTT protocol): recall@k and the median rank of each query's item among the gallery; see
  `retrieval_metrics`.
- Captioning (MSR-VTT / COCO protocol): BLEU-1..4, ROUGE-L and CIDEr-D exactly as pycocoevalcap computes them on
  tokenised lower-case text; see `caption_scores`.
- Weighted k-NN classification of frozen features (DINO / SVT protocol, DINO's eval_knn.py `knn_classifier`):
  features L2-normalised, each test example's k most cosine-similar training examples vote for their class with
  weight exp(similarity / T); the class scores are those summed votes. See `knn_classify`.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
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
    return float(np.mean(_ranks(scores, labels) < k))


def _ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 0-based rank of each row's true column among its scores, ties broken towards the lower index."""
    true = scores[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return ((scores > true) | ((scores == true) & lower_index)).sum(axis=1)


def retrieval_metrics(similarity, targets=None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and the median rank of queries against a gallery (text-to-video retrieval: captions against
    videos): `similarity` (queries, items), `targets` (queries,) the index of each query's item (None: query i's is
    item i, the paired-set protocol of MSR-VTT). Recall@k is the fraction of queries whose item is among their k
    most similar (ties towards the lower index, as `top_k_accuracy`: a constant similarity finds nothing above
    chance); median_rank is 1-based. k larger than the gallery counts every query."""
    similarity = _array(similarity, "similarity", 2, np.float64)
    targets = np.arange(len(similarity)) if targets is None else _array(targets, "targets", 1, np.int64)
    if len(targets) != len(similarity) or len(targets) == 0:
        raise ValueError(f"similarity {similarity.shape} needs one target item per query row, got {len(targets)}")
    if targets.min() < 0 or targets.max() >= similarity.shape[1]:
        raise ValueError(f"targets must index the {similarity.shape[1]} items of similarity {similarity.shape}")
    ranks = _ranks(similarity, targets)
    return {**{f"recall_at_{k}": float(np.mean(ranks < k)) for k in ks}, "median_rank": float(np.median(ranks) + 1)}


def confusion_matrix(scores, labels) -> np.ndarray:
    """int64 (C, C) counts: entry [i, j] = examples of true class i whose argmax prediction is j."""
    scores, labels = _scores_labels(scores, labels)
    num_classes = scores.shape[1]
    flat = labels * num_classes + scores.argmax(axis=1)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def macro_f1(scores, labels, *, labelled_only: bool = False) -> float:
    """Mean per-class F1 of the argmax predictions over classes present in the labels or the predictions, or, with
    `labelled_only`, in the labels alone (a class with no example scores F1 0 whenever it is predicted, which says
    nothing about it; its false positives still lower the recall of the true classes)."""
    cm = confusion_matrix(scores, labels)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    seen = (tp + fn) > 0 if labelled_only else (tp + fp + fn) > 0
    return float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])))


def classification_metrics(scores, labels, *, small_set: bool = False) -> dict[str, float]:
    """{"top1", "top5", "macro_f1"}; "top5" uses k = min(5, C), so it is 1.0 when there are 5 classes or fewer.

    `small_set` (a few held-out rows, as `vidjax.probe` scores): "top5" only when there are more than 5 classes,
    and "macro_f1" over the classes present in the labels (`macro_f1(labelled_only=True)`).
    """
    scores, labels = _scores_labels(scores, labels)
    num_classes = scores.shape[1]
    result = {"top1": top_k_accuracy(scores, labels, 1)}
    if not small_set or num_classes > 5:
        result["top5"] = top_k_accuracy(scores, labels, min(5, num_classes))
    result["macro_f1"] = macro_f1(scores, labels, labelled_only=small_set)
    return result


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


# ------------------------------------------------------------------------------------------- k-NN on features


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows at unit L2 norm, as `F.normalize(x, dim=1, p=2)` (the norm clamped to at least 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_classify(train_features, train_labels, test_features, num_classes: int, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 1024) -> np.ndarray:
    """float64 (N_test, C) class scores of DINO's weighted k-NN classifier (eval_knn.py `knn_classifier`).

    Features (N, D) are L2-normalised (DINO normalises them before calling its classifier); a test example's
    scores are, for each class, the sum of exp(cos_sim / temperature) over those of its `k` nearest training
    examples (highest cosine similarity) that carry that class. k=20 and temperature 0.07 are DINO's reported
    setting (its --nb_knn default is 10, 20, 100, 200; --temperature 0.07, as in SVT's eval_knn.py). Test examples
    are taken `chunk_size` at a time, so memory stays at chunk_size x N_train similarities.
    """
    train = _l2_normalize(_array(train_features, "train_features (N, D)", 2, np.float32))
    test = _l2_normalize(_array(test_features, "test_features (N, D)", 2, np.float32))
    labels = _array(train_labels, "train_labels (N,)", 1)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_features {train.shape} and test_features {test.shape} must have the same width")
    if labels.shape[0] != train.shape[0]:
        raise ValueError(f"train_labels {labels.shape} and train_features {train.shape} must have the same number "
                         f"of examples")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"train_labels must be integer classes in [0, {num_classes}); got dtype {labels.dtype}, "
                         f"range [{labels.min()}, {labels.max()}]")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k={k} neighbours need 1 <= k <= the {train.shape[0]} training examples")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"knn_classify needs temperature > 0 and chunk_size >= 1; got {temperature}, {chunk_size}")
    scores = np.zeros((test.shape[0], num_classes), np.float64)
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T
        # The k largest per row, in no particular order: the votes are summed, so their order does not matter.
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sim, nearest, axis=1).astype(np.float64) / temperature)
        rows = np.broadcast_to(np.arange(nearest.shape[0])[:, None], nearest.shape)
        np.add.at(scores[start:start + chunk_size], (rows, labels[nearest]), weights)
    return scores


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 20,
             temperature: float = 0.07) -> float:
    """Top-1 accuracy (a fraction, where DINO prints a percentage) of `knn_classify`'s scores; ties go to the lower
    class index, as in `top_k_accuracy`."""
    scores = knn_classify(train_features, train_labels, test_features, num_classes, k, temperature)
    return top_k_accuracy(scores, test_labels, 1)


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


# ------------------------------------------------------------------------------------------------- captioning

_CAPTION_MAX_N = 4  # BLEU-1..4, and CIDEr-D averages its 1- to 4-gram similarities
_ROUGE_BETA = 1.2  # coco-caption's ROUGE-L weighs recall 1.2 times precision
_CIDER_SIGMA = 6.0  # width of CIDEr-D's Gaussian penalty on the length difference, in words
# coco-caption's BLEU adds these to each n-gram precision (numerator, denominator) and to the length ratio, so an
# order with no match gives a tiny score instead of log(0). They are kept so the values agree with it: with no
# 4-gram match BLEU-4 is still about (1e-15)^(1/4) = 6e-4 times the lower orders, not 0.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
# Stanford's PTBTokenizer (which COCO runs before scoring) makes tokens of these wherever they stand and COCO then
# drops them (PUNCTUATIONS: -LRB- -RRB- -LCB- -RCB- are the brackets, `` and '' the double quotes, ... and -- runs
# of dots and dashes); a comma stays only inside a number such as 1,000.
_SPLIT_PUNCTUATION = re.compile(r"""[(){}"?!;]|\.\.+|--+|,(?!\d)|(?<!\d),""")
# Dropped at the ends of a word, kept inside one, as PTB keeps "t-shirt", "3.5", "10:30" and "o'clock" whole.
_EDGE_PUNCTUATION = "'`.,:-"
# PTB makes a token of these endings ("it's" -> "it 's", "can't" -> "ca n't") and COCO keeps them.
_CLITICS = frozenset({"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"})
_CLITIC_WORD = re.compile(r"(.*\w)(n't|'s|'re|'ve|'ll|'d|'m)")
_UNICODE_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def normalize_caption(text: str) -> str:
    """`text` lower-cased and tokenised as COCO's PTBTokenizer + PUNCTUATIONS filter would leave it, space-joined.

    A light approximation of that tokeniser (which needs Java): quotes, brackets and . ? ! , : ; - ' ` are removed
    where PTB makes tokens of them (around words, runs such as "..." and "--"), kept inside a word ("t-shirt",
    "3.5"); clitics become tokens as PTB makes them ("man's" -> "man 's", "don't" -> "do n't"); whitespace is
    collapsed. Other characters are kept. Idempotent, so normalised text passes through unchanged.
    """
    tokens = []
    for word in _SPLIT_PUNCTUATION.sub(" ", text.lower().translate(_UNICODE_QUOTES)).split():
        word = word.rstrip(_EDGE_PUNCTUATION)
        if word not in _CLITICS:  # a clitic already split off keeps its leading apostrophe
            word = word.lstrip(_EDGE_PUNCTUATION)
        clitic = _CLITIC_WORD.fullmatch(word)
        if clitic:
            tokens.extend(clitic.groups())
        elif word:
            tokens.append(word)
    return " ".join(tokens)


def _caption_words(predictions, references, normalize: bool) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Checked inputs as word lists: (N,) predictions and (N,) lists of >= 1 non-empty references."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists with one entry per item, got a single string; "
                         "pass predictions=[caption, ...] and references=[[reference, ...], ...]")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists; pass one list "
                         "of reference captions per prediction, in the same order")
    if not predictions:
        raise ValueError("no items to score: predictions and references are empty; caption metrics need at least one")
    split = (lambda caption: normalize_caption(caption).split()) if normalize else str.split
    hyps, refs = [], []
    for i, (prediction, item_refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] must be a string, got {type(prediction).__name__} {prediction!r}")
        if isinstance(item_refs, str):
            raise ValueError(f"references[{i}] is the string {item_refs!r}, not a list of reference captions; "
                             "wrap it: references=[[caption], ...] for one reference per item")
        item_refs = list(item_refs)
        if not item_refs:
            raise ValueError(f"references[{i}] is an empty list; every item needs at least one reference caption "
                             "(leave items without references out of the evaluation)")
        words = []
        for j, ref in enumerate(item_refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] must be a string, got {type(ref).__name__} {ref!r}")
            words.append(split(ref))
            if not words[-1]:
                raise ValueError(f"references[{i}][{j}] = {ref!r} has no words"
                                 f"{' after normalize_caption' if normalize else ''}; remove empty references")
        hyps.append(split(prediction))
        refs.append(words)
    return hyps, refs


def _ngram_counts(words: list[str]) -> Counter:
    """Counts of the 1- to 4-grams of `words`, each a tuple of words."""
    return Counter(tuple(words[i:i + n]) for n in range(1, _CAPTION_MAX_N + 1) for i in range(len(words) - n + 1))


def _bleu(hyps: list[list[str]], hyp_counts: list[Counter], refs: list[list[list[str]]],
          ref_counts: list[list[Counter]]) -> list[float]:
    """Corpus BLEU-1..4: clipped n-gram matches and the closest reference lengths summed over all items first."""
    matches, guesses = [0] * _CAPTION_MAX_N, [0] * _CAPTION_MAX_N
    hyp_length = ref_length = 0
    for hyp, counts, item_refs, item_ref_counts in zip(hyps, hyp_counts, refs, ref_counts, strict=True):
        max_ref_counts = Counter()
        for ref in item_ref_counts:
            max_ref_counts |= ref  # `|` keeps the larger count: an n-gram is credited as often as one reference has it
        for ngram, count in counts.items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(_CAPTION_MAX_N):
            guesses[n] += max(0, len(hyp) - n)
        hyp_length += len(hyp)
        # The reference length closest to the prediction's, the shorter one on a tie.
        ref_length += min((abs(len(ref) - len(hyp)), len(ref)) for ref in item_refs)[1]
    ratio = (hyp_length + _BLEU_TINY) / (ref_length + _BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for n in range(_CAPTION_MAX_N):
        product *= (matches[n] + _BLEU_TINY) / (guesses[n] + _BLEU_SMALL)
        scores.append(product ** (1 / (n + 1)) * brevity_penalty)
    return scores


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists (one DP row)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = left = 0  # row[j - 1] before and after this pass
        for j, y in enumerate(b, start=1):
            above = row[j]
            left = row[j] = diagonal + 1 if x == y else (above if above > left else left)
            diagonal = above
    return row[-1]


def _rouge_l(hyp: list[str], refs: list[list[str]]) -> float:
    """ROUGE-L F of one prediction: the best precision and the best recall over its references (not one pair)."""
    if not hyp:
        return 0.0
    lcs = [_lcs_length(ref, hyp) for ref in refs]
    precision = max(length / len(hyp) for length in lcs)
    recall = max(length / len(ref) for length, ref in zip(lcs, refs, strict=True))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + _ROUGE_BETA**2) * precision * recall / (recall + _ROUGE_BETA**2 * precision)


def _cider_d(hyps: list[list[str]], hyp_counts: list[Counter], refs: list[list[list[str]]],
             ref_counts: list[list[Counter]]) -> list[float]:
    """CIDEr-D of each item, IDF taken over the items' references."""
    document_frequency = Counter(ngram for item in ref_counts for ngram in set().union(*item))
    log_items = math.log(len(hyps))
    idf = {ngram: log_items - math.log(df) for ngram, df in document_frequency.items()}

    def tf_idf(counts: Counter) -> tuple[list[dict], list[float]]:
        vectors, sq_norms = [{} for _ in range(_CAPTION_MAX_N)], [0.0] * _CAPTION_MAX_N
        for ngram, count in counts.items():
            weight = count * idf.get(ngram, log_items)  # an n-gram no reference has counts as if one item had it
            vectors[len(ngram) - 1][ngram] = weight
            sq_norms[len(ngram) - 1] += weight * weight
        return vectors, [math.sqrt(x) for x in sq_norms]

    scores = []
    for hyp, counts, item_refs, item_ref_counts in zip(hyps, hyp_counts, refs, ref_counts, strict=True):
        hyp_vectors, hyp_norms = tf_idf(counts)
        similarity = [0.0] * _CAPTION_MAX_N
        for ref, ref_ngrams in zip(item_refs, item_ref_counts, strict=True):
            ref_vectors, ref_norms = tf_idf(ref_ngrams)
            # coco-caption measures length in bigrams; the difference is the same in words because references are
            # never empty and an empty prediction has no n-grams (its similarity is 0 whatever the penalty).
            penalty = math.exp(-((len(hyp) - len(ref)) ** 2) / (2 * _CIDER_SIGMA**2))
            for n in range(_CAPTION_MAX_N):
                ref_vector = ref_vectors[n]
                # Clipping (the "D"): a prediction gains nothing by weighting an n-gram above the reference.
                dot = sum(min(weight, ref_vector.get(g, 0.0)) * ref_vector.get(g, 0.0)
                          for g, weight in hyp_vectors[n].items())
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    dot /= hyp_norms[n] * ref_norms[n]
                similarity[n] += dot * penalty
        scores.append(10.0 * (sum(similarity) / _CAPTION_MAX_N) / len(item_refs))
    return scores


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   normalize: bool = True) -> dict[str, float]:
    """{"bleu1".."bleu4", "rougeL", "cider"} of N predicted captions against N lists of reference captions.

    The values are those of the COCO caption evaluation (pycocoevalcap's Bleu(4), Rouge() and Cider() scorers) on
    the same tokenised lower-case text, computed over the whole split:
    - BLEU-n (0-1), corpus level: clipped n-gram matches (a prediction n-gram counts at most as often as it occurs
      in one reference) and n-gram counts are summed over all items, BLEU-n = (prod_{k<=n} p_k)^(1/n) times the
      brevity penalty exp(1 - r/c) when c < r, with c the total prediction length and r the sum over items of the
      reference length closest to the prediction's (the shorter on a tie: bleu_scorer's "closest"). Like
      pycocoevalcap it adds 1e-15 to each match count and 1e-9 to each n-gram count, so an order with no match
      makes the score small but not 0.
    - ROUGE-L (0-1): per item F_beta (beta 1.2) of the best LCS precision and the best LCS recall over its
      references, averaged over the items.
    - CIDEr-D (0-10): per item the mean over n = 1..4 of the cosine similarities of TF-IDF n-gram vectors between
      the prediction and each reference, the prediction's weights clipped at the reference's, times the Gaussian
      length penalty exp(-(len_p - len_r)^2 / 72), averaged over its references, times 10; averaged over items.
      IDF = log(N) - log(df), df = the number of items whose references hold the n-gram (at least 1). It needs
      several items: with N = 1 every IDF is 0 and so is CIDEr-D.

    Captions are split on whitespace; with `normalize` (the default) `normalize_caption` is applied first, so raw
    captions can be passed and already-normalised ones are unchanged. Pass normalize=False to score text exactly
    as given (e.g. the output of COCO's own PTBTokenizer). An empty prediction scores 0; every item needs at least
    one reference and every reference at least one word (ValueError otherwise).
    """
    hyps, refs = _caption_words(predictions, references, normalize)
    hyp_counts = [_ngram_counts(hyp) for hyp in hyps]
    ref_counts = [[_ngram_counts(ref) for ref in item_refs] for item_refs in refs]
    bleu = _bleu(hyps, hyp_counts, refs, ref_counts)
    out = {f"bleu{n + 1}": float(score) for n, score in enumerate(bleu)}
    out["rougeL"] = float(np.mean([_rouge_l(hyp, item_refs) for hyp, item_refs in zip(hyps, refs, strict=True)]))
    out["cider"] = float(np.mean(_cider_d(hyps, hyp_counts, refs, ref_counts)))
    return out


def constant_caption(captions: Sequence[str], normalize: bool = True) -> str:
    """The most frequent of `captions` (e.g. the training captions), the alphabetically first on a tie.

    The baseline prediction for `eval_bleu4_constant`: the BLEU-4 of answering it for every item. Captions are
    compared after `normalize_caption` (so "A dog runs." and "a dog runs" are one caption, returned normalised),
    or with normalize=False as given up to runs of whitespace; captions without words are not counted.
    """
    if isinstance(captions, str):
        raise ValueError(f"captions must be a list of captions, got the single string {captions!r}")
    captions = list(captions)
    counts = Counter(normalize_caption(c) if normalize else " ".join(c.split()) for c in captions)
    counts.pop("", None)
    if not counts:
        raise ValueError(f"no caption with words among the {len(captions)} captions given; pass the training "
                         "captions")
    return min(counts, key=lambda caption: (-counts[caption], caption))
