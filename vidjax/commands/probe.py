r"""Linear, MLP, SVM or attentive probes on extracted features: how much of a task the embeddings already carry.

  python -m vidjax.probe --features=train.npz
  python -m vidjax.probe --features=train.npz --eval_features=val.npz --task=regression --probe=mlp

--features is a `python -m vidjax.extract` output with (N, D) features (--pool=mean or cls) and the targets of the
task: `label` (classification), `labels` (multilabel, multi-hot) or `targets` (regression); --task says which,
and without it the probe fits the one kind the file holds. The probe is trained
on standardised features (mean and std of the training rows; regression targets are standardised the same way and
mapped back) with AdamW in jax/optax, minibatches drawn by --seed: a linear layer, or one hidden layer of --hidden
ReLU units (--probe=mlp). It is scored on --eval_features, or else on a held-out fraction (--holdout) of the rows,
drawn by --seed (stratified by class for classification, as scikit-learn's StratifiedShuffleSplit draws it), with
the metrics of `vidjax.metrics`: classification top1 / top5 / macro_f1, multilabel mAP, regression ccc_<target> /
ccc_mean / mse. Small sets: top5 is reported only with more than 5 classes, and macro_f1 averages the classes
present in the scored rows; `notes` in --out (and `note:` lines) say what was left out, and when the split could
not be stratified. The metrics are printed and written to --out (JSON, default FEATURES.probe.json). Exit status
0, 2 for bad arguments or features that do not fit the task.

--probe=attentive takes the (N, tokens, D) features of `extract --pool=tokens` instead (and only those): V-JEPA 2's
attentive probe (`vidjax.evaluators.probes`, which lists its published settings), a learned query token that
cross-attends with --heads heads to each clip's LayerNorm'ed tokens, a residual MLP, then a linear layer;
--depth counts the pooler's blocks as V-JEPA 2's `num_probe_blocks` does, the cross-attention block and the
self-attention blocks over the tokens before it (its evals use 4). Pooler and layer train together with the loss
and scoring of the linear probe, the learning rate cosine-decayed to 0 over the run as V-JEPA 2 trains it, with
defaults for small sets (--epochs 30, --lr 1e-2, --weight_decay 1e-2, --batch_size 16). Features are standardised
per dimension over all training tokens. --grid picks its learning rate; --pca does not apply to it. The `attentive`
evaluator (`config.evals`, vidjax/evaluators/attentive.py) trains the same probe on a training run's own tokens.

--probe=svm fits scikit-learn's SVC (classification; its one-vs-rest decision values are the scores) or one SVR
per target (regression) on the standardised features, with --svm_kernel (linear or rbf) and --svm_c; multilabel
is not supported by svm. --pca=K projects the features on K principal components fitted on the training rows
only (after the held-out split), for every probe. --grid picks the learning rate (and --hidden for mlp), or C
(and gamma for rbf), on a validation split of the training rows (the last 20% of an order drawn by --seed),
prints the choice and retrains on all training rows with it. Classification also reports per-class precision,
recall and F1 (a table, and `per_class` in --out). --probe=svm and --pca need scikit-learn
(`pip install 'vidjax[probe]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from typing import NoReturn

import numpy as np

from vidjax import cli, fileio, metrics, tasks
from vidjax.evaluators.probes import DEFAULTS, ProbeError, attentive_heads, moments, train_probe, training_settings

TASKS = tuple(name for name in tasks.available() if tasks.readout_of(name).probes)  # the tasks a probe fits
TARGET_KEY = {name: tasks.readout_of(name).target_key for name in TASKS}
PROBES = ("linear", "mlp", "svm", "attentive")  # svm: scikit-learn's; the others `vidjax.evaluators.probes`'s
SVM_KERNELS = ("linear", "rbf")
# --grid: the values tried. gamma is a multiple of 1 / (feature dim), the `scale` gamma of standardised features.
GRID_LR = (1e-3, 1e-2, 1e-1)
GRID_HIDDEN = (64, 256)
GRID_C = (0.1, 1.0, 10.0, 100.0)
GRID_GAMMA = (0.1, 1.0, 10.0)
GRID_VALIDATION = 0.2  # fraction of the training rows --grid scores its candidates on


def _open_features(path: str) -> np.lib.npyio.NpzFile:
    """The open .npz archive at `path`; a ProbeError saying what it is instead (missing, cut short, not an .npz)."""
    not_features = f"{path}: not an .npz of features; give the output of `python -m vidjax.extract`."
    try:
        data = np.load(os.path.expanduser(path))  # `~/feats.npz` as typed
    except FileNotFoundError as e:
        raise ProbeError(f"{path}: no such file; give the output of `python -m vidjax.extract`.") from e
    except zipfile.BadZipFile as e:  # cut short by a copy: the zip's directory, at its end, is gone
        raise ProbeError(f"{path}: a damaged .npz (not a whole zip file); copy it again, or extract again.") from e
    except (OSError, ValueError, EOFError) as e:  # text (numpy's pickle refusal), a truncated or foreign file
        raise ProbeError(not_features) from e
    if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ProbeError(not_features)
    return data


def load_split(path: str, task: str, *, tokens: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (N, D) float32, or (N, tokens, D) with `tokens` (--probe=attentive), targets, names
    {"class_names", "target_names"}) of an extract output."""
    key = TARGET_KEY[task]
    with _open_features(path) as data:
        if "features" not in data:
            raise ProbeError(f"{path} has no `features` array; write it with `python -m vidjax.extract`.")
        features = np.asarray(data["features"], np.float32)
        if tokens and features.ndim != 3:
            raise ProbeError(f"{path}: features are shaped {features.shape}; --probe=attentive pools each video's "
                             f"tokens itself and takes (N, tokens, D) features: extract with --pool=tokens.")
        if not tokens and features.ndim == 3:
            raise ProbeError(f"{path}: features are shaped {features.shape}, every token of each video "
                             f"(extract --pool=tokens); the probe takes one vector per video (N, D): use "
                             f"--probe=attentive, which pools the tokens itself, or extract with --pool=mean or "
                             f"--pool=cls.")
        if not tokens and features.ndim != 2:
            raise ProbeError(f"{path}: features are shaped {features.shape}; the probe takes one vector per video "
                             f"(N, D): extract with --pool=mean or --pool=cls.")
        if key not in data:
            have = [k for k in TARGET_KEY.values() if k in data]
            raise ProbeError(f"{path} has no `{key}` array for --task={task} (it has {have or 'no targets'}); "
                             f"choose the --task its list describes.")
        targets = np.asarray(data[key])
        names = {k: [str(x) for x in data[k]] for k in ("class_names", "target_names") if k in data}
    return features, targets, names


def _sklearn(what: str):
    """The sklearn package, or a ProbeError naming the extra that installs it."""
    try:
        import sklearn.decomposition
        import sklearn.svm
    except ImportError as e:
        raise ProbeError(f"{what} needs scikit-learn, which is not installed ({e}); "
                         f"install it with `pip install 'vidjax[probe]'`.") from e
    return sklearn


def train_svm(task: str, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, *, num_outputs: int,
              kernel: str = "linear", c: float = 1.0, gamma: float | str = "scale") -> np.ndarray:
    """scikit-learn SVC (classification) or one SVR per target (regression) on standardised features; scores on
    x_eval shaped as `train_probe`'s: (N, num_outputs) class scores (one-vs-rest decision values; classes absent
    from the training rows score below every other) or values in the targets' units."""
    sklearn = _sklearn("--probe=svm")
    mean, std = moments(x_train)
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    contract = tasks.readout_of(task)
    if contract.probe_standardises_targets:  # regression
        y = np.asarray(y_train, np.float64).reshape(len(y_train), -1)
        y_mean, y_std = moments(y)
        y = (y - y_mean) / y_std
        pred = np.stack([sklearn.svm.SVR(kernel=kernel, C=c, gamma=gamma).fit(x_train, y[:, k]).predict(x_eval)
                         for k in range(y.shape[1])], axis=1)
        pred = pred * y_std + y_mean
        return pred.reshape((len(x_eval), *np.shape(y_train)[1:])).astype(np.float32)
    if np.ndim(y_train) != 1:
        raise ProbeError(f"--probe=svm supports classification and regression only, not --task={task}; "
                         f"use --probe=linear or --probe=mlp.")
    labels = contract.probe_targets(y_train)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ProbeError(f"--probe=svm needs at least two classes among the training rows; they all have "
                         f"class {classes.tolist()}.")
    model = sklearn.svm.SVC(kernel=kernel, C=c, gamma=gamma, decision_function_shape="ovr").fit(x_train, labels)
    decision = np.asarray(model.decision_function(x_eval), np.float64)
    if decision.ndim == 1:  # two classes: positive means model.classes_[1]
        decision = np.stack([-decision, decision], axis=1)
    scores = np.full((len(x_eval), num_outputs), decision.min() - 1.0 if decision.size else -1.0)
    scores[:, model.classes_] = decision
    return scores


def fit_pca(x_train: np.ndarray, x_eval: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, object]:
    """(x_train, x_eval) projected on the first k principal components of x_train alone, and the fitted PCA."""
    sklearn = _sklearn("--pca")
    if k > min(x_train.shape):
        raise ProbeError(f"--pca={k} exceeds the {len(x_train)} training rows or the feature dimension "
                         f"{x_train.shape[1]}; choose at most {min(x_train.shape)}.")
    pca = sklearn.decomposition.PCA(n_components=k, svd_solver="full").fit(x_train)
    return pca.transform(x_train).astype(np.float32), pca.transform(x_eval).astype(np.float32), pca


def per_class(scores: np.ndarray, labels: np.ndarray, class_names: list[str] | None) -> list[dict]:
    """Precision, recall, F1 and support of each class present in the labels or the argmax predictions (from
    `metrics.confusion_matrix`); a class never predicted has precision 0, one never present recall 0."""
    cm = metrics.confusion_matrix(scores, labels)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    rows = []
    for c in np.flatnonzero((predicted + support) > 0):
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        rows.append({"class": name, "precision": float(tp[c] / predicted[c]) if predicted[c] else 0.0,
                     "recall": float(tp[c] / support[c]) if support[c] else 0.0,
                     "f1": float(2 * tp[c] / (predicted[c] + support[c])), "support": int(support[c])})
    return rows


def per_class_table(rows: list[dict]) -> list[str]:
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    lines += [f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}"
              for r in rows]
    return lines


def score(task: str, scores: np.ndarray, targets: np.ndarray, target_names: list[str] | None) -> dict[str, float]:
    """The task's metrics (`HeadReadout.task_metrics`, from `vidjax.metrics`); class indices are scored as the small set
    they often are here (`metrics.classification_metrics(small_set=True)`: top5 only with more than 5 classes,
    macro_f1 over the classes present in `targets`)."""
    if np.ndim(targets) == 1:  # class indices
        return metrics.classification_metrics(scores, targets, small_set=True)
    return tasks.readout_of(task).task_metrics(scores, targets, target_names)


def class_notes(num_classes: int, labels: np.ndarray) -> list[str]:
    """What the classification metrics of these scored labels leave out, and why."""
    notes = []
    if num_classes <= 5:
        notes.append(f"top5 is not reported: with {num_classes} classes every row would count as correct.")
    absent = num_classes - len(np.unique(labels))
    if absent:
        notes.append(f"macro_f1 averages the {num_classes - absent} classes present in the {len(labels)} scored "
                     f"rows; {absent} of the {num_classes} classes have no scored row and are left out.")
    return notes


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.probe", __doc__)
    parser.add_argument("--features", required=True, metavar="FILE.npz", help="features from python -m vidjax.extract")
    parser.add_argument("--task", default="", choices=("", *TASKS),
                        help="which targets to fit (default: the one kind of targets --features holds)")
    parser.add_argument("--eval_features", default="", metavar="FILE2.npz",
                        help="score on these features instead of a held-out part of --features")
    parser.add_argument("--probe", default="linear", choices=PROBES,
                        help="linear layer, 1-hidden-layer MLP, SVM, or attentive (V-JEPA 2's cross-attention "
                             "pooler + linear layer, on --pool=tokens features)")
    parser.add_argument("--hidden", type=int, default=256, help="--probe=mlp: hidden units (default 256)")
    parser.add_argument("--heads", type=int, default=0,
                        help="--probe=attentive: attention heads, dividing the feature dimension (default 0: 16, or "
                             "the largest divisor of the dimension below 16)")
    parser.add_argument("--depth", type=int, default=1,
                        help="--probe=attentive: the pooler's blocks, self-attention ones then the cross-attention "
                             "one (default 1; V-JEPA 2's evals: 4)")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of rows held out (default 0.2)")
    linear, attentive = (DEFAULTS[kind] for kind in ("linear", "attentive"))
    for flag, kind, what in (("epochs", int, "passes over the training rows"), ("lr", float, "AdamW learning rate"),
                             ("weight_decay", float, "AdamW weight decay"), ("batch_size", int, "rows per step")):
        parser.add_argument(f"--{flag}", type=kind, default=None,
                            help=f"{what} (default {linear[flag]:g}; --probe=attentive {attentive[flag]:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split, init and batches")
    parser.add_argument("--out", default="", metavar="FILE.json", help="metrics JSON (default FEATURES.probe.json)")
    parser.add_argument("--svm_kernel", default="linear", choices=SVM_KERNELS, help="--probe=svm: kernel (linear)")
    parser.add_argument("--svm_c", type=float, default=1.0, help="--probe=svm: regularisation C (default 1.0)")
    parser.add_argument("--pca", type=int, default=0, metavar="K",
                        help="project on K principal components of the training rows first (default 0: off)")
    parser.add_argument("--grid", action="store_true",
                        help="choose lr (and --hidden), or C (and gamma), on a validation part of the training rows")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, or None; fills the training flags left out with the probe's defaults."""
    vars(args).update(training_settings(args.probe, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                                        batch_size=args.batch_size))
    for flag in ("hidden", "epochs", "batch_size", "depth"):
        if getattr(args, flag) < 1:
            return f"--{flag}={getattr(args, flag)} must be at least 1."
    if args.heads < 0:
        return f"--heads={args.heads} must be 0 (the default) or a number of heads."
    if not args.eval_features and not 0.0 < args.holdout < 1.0:
        return f"--holdout={args.holdout} must be between 0 and 1 (or give --eval_features)."
    if args.lr <= 0 or args.weight_decay < 0:
        return "--lr must be positive and --weight_decay not negative."
    if args.svm_c <= 0:
        return f"--svm_c={args.svm_c} must be positive."
    if args.pca < 0:
        return f"--pca={args.pca} must be 0 (off) or a number of components."
    if args.pca and args.probe == "attentive":
        return (f"--pca={args.pca} does not apply to --probe=attentive, which reads every token of the "
                f"--pool=tokens features; leave --pca out (or use it with --probe=linear, mlp or svm).")
    return None


def _split(args, features, targets) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """((x_train, y_train, x_eval, y_eval), notes): --holdout of the rows drawn by --seed, stratified by class for
    class indices (scikit-learn's StratifiedShuffleSplit: each class keeps its share on both sides); a random
    split, with a note saying why, where stratifying cannot be done."""
    n_eval = int(round(args.holdout * len(features)))
    if n_eval < 1 or n_eval >= len(features):
        raise ProbeError(f"--holdout={args.holdout} of {len(features)} rows leaves {n_eval} to score and "
                         f"{len(features) - n_eval} to train; both need at least one (or give --eval_features).")
    notes = []
    if np.ndim(targets) == 1:  # class indices
        problem = _unstratifiable(targets, n_eval)
        if problem is None:
            import sklearn.model_selection
            splitter = sklearn.model_selection.StratifiedShuffleSplit(1, test_size=n_eval, random_state=args.seed)
            kept, held = next(splitter.split(np.zeros(len(targets)), targets))
            return (features[kept], targets[kept], features[held], targets[held]), notes
        notes.append(f"the held-out rows are drawn at random, not stratified by class: {problem}")
    order = np.random.default_rng(args.seed).permutation(len(features))
    held, kept = order[:n_eval], order[n_eval:]
    return (features[kept], targets[kept], features[held], targets[held]), notes


def _unstratifiable(labels: np.ndarray, n_eval: int) -> str | None:
    """Why these class labels cannot be split with n_eval held out and every class on both sides, or None."""
    try:
        import sklearn.model_selection  # noqa: F401
    except ImportError:
        return "stratifying needs scikit-learn (`pip install 'vidjax[probe]'`)."
    classes, counts = np.unique(labels, return_counts=True)
    single = classes[counts < 2].tolist()
    if single:
        return (f"class{'es' if len(single) > 1 else ''} {single} ha{'ve' if len(single) > 1 else 's'} a single "
                f"row. Give more rows per class, or --eval_features.")
    if min(n_eval, len(labels) - n_eval) < len(classes):
        return (f"{n_eval} held-out and {len(labels) - n_eval} training rows cannot each hold all "
                f"{len(classes)} classes. Give more rows, another --holdout, or --eval_features.")
    return None


def task_of(path: str) -> str:
    """The task whose targets the extract output `path` holds (`label`, `labels` or `targets`), for a --task left
    out; a ProbeError when it holds none or several, or is no .npz of features."""
    with _open_features(path) as data:
        keys = set(data.files)
    held = [task for task in TASKS if TARGET_KEY[task] in keys]
    if len(held) == 1:
        return held[0]
    arrays = " / ".join(f"`{TARGET_KEY[task]}` ({task})" for task in TASKS)
    if not held:
        raise ProbeError(f"{path} holds no targets ({arrays}): extract from a CSV list or a class-folder tree, "
                         f"whose labels it keeps.")
    raise ProbeError(f"{path} holds the targets of {len(held)} tasks ({', '.join(held)}): choose one with --task.")


def run(args: argparse.Namespace) -> dict:
    """Loads, splits, trains and scores; returns the report written to --out."""
    if not args.task:
        args.task = task_of(args.features)
    tokens = args.probe == "attentive"
    features, targets, names = load_split(args.features, args.task, tokens=tokens)
    heads = attentive_heads(features.shape[-1], args.heads) if tokens else None  # refused before any training
    if args.eval_features:
        x_eval, y_eval, _ = load_split(args.eval_features, args.task, tokens=tokens)
        if x_eval.shape[-1] != features.shape[-1] or y_eval.shape[1:] != targets.shape[1:]:
            raise ProbeError(f"--eval_features={args.eval_features} has features {x_eval.shape} and targets "
                             f"{y_eval.shape}, which do not match --features ({features.shape}, {targets.shape}).")
        x_train, y_train, notes = features, targets, []
    else:
        (x_train, y_train, x_eval, y_eval), notes = _split(args, features, targets)
    if targets.ndim == 1:  # class indices
        num_outputs = max(len(names.get("class_names", [])), int(max(y_train.max(), y_eval.max())) + 1)
    else:
        num_outputs = targets.shape[1]
    if args.pca:
        x_train, x_eval, _ = fit_pca(x_train, x_eval, args.pca)
    grid = _grid_search(args, x_train, y_train, num_outputs, names) if args.grid else None
    setting = grid["chosen"] if grid else _default_setting(args)
    scores = _fit(args, setting, x_train, y_train, x_eval, num_outputs)
    try:
        result = score(args.task, scores, y_eval, names.get("target_names"))
    except ValueError as e:
        raise ProbeError(f"cannot score the {len(y_eval)} evaluation rows: {e}") from e
    report = {"task": args.task, "probe": args.probe, "features": args.features,
              "eval_features": args.eval_features or None, "holdout": None if args.eval_features else args.holdout,
              "num_train": len(x_train), "num_eval": len(x_eval), "feature_dim": int(features.shape[-1]),
              "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "metrics": result}
    if args.probe == "svm":
        report.update(svm_kernel=args.svm_kernel, svm_c=args.svm_c)
    if tokens:
        report.update(num_tokens=int(features.shape[1]), heads=heads, depth=args.depth)
    if args.pca:
        report["pca"] = args.pca
    if grid:
        report["grid"] = grid
    if np.ndim(y_eval) == 1:  # class indices
        report["per_class"] = per_class(scores, y_eval, names.get("class_names"))
        notes += class_notes(num_outputs, y_eval)
    if notes:
        report["notes"] = notes
    return report


def _default_setting(args) -> dict:
    if args.probe == "svm":
        return {"C": args.svm_c} if args.svm_kernel == "linear" else {"C": args.svm_c, "gamma": "scale"}
    return {"lr": args.lr, "hidden": args.hidden} if args.probe == "mlp" else {"lr": args.lr}


def _fit(args, setting: dict, x_train, y_train, x_eval, num_outputs: int) -> np.ndarray:
    """The probe's scores on x_eval, trained on (x_train, y_train) with the flags and `setting` over them."""
    if args.probe == "svm":
        return train_svm(args.task, x_train, y_train, x_eval, num_outputs=num_outputs, kernel=args.svm_kernel,
                         c=setting["C"], gamma=setting.get("gamma", "scale"))
    return train_probe(tasks.readout_of(args.task), x_train, y_train, x_eval, num_outputs=num_outputs, probe=args.probe,
                       hidden=setting.get("hidden", args.hidden), heads=args.heads, depth=args.depth,
                       epochs=args.epochs, lr=setting["lr"], weight_decay=args.weight_decay,
                       batch_size=args.batch_size, seed=args.seed)


def _candidates(args, dim: int) -> list[dict]:
    if args.probe == "svm":
        if args.svm_kernel == "linear":
            return [{"C": c} for c in GRID_C]
        return [{"C": c, "gamma": g / dim} for c in GRID_C for g in GRID_GAMMA]
    if args.probe == "mlp":
        return [{"lr": lr, "hidden": h} for lr in GRID_LR for h in GRID_HIDDEN]
    return [{"lr": lr} for lr in GRID_LR]


def _grid_search(args, x_train, y_train, num_outputs: int, names: dict) -> dict:
    """The candidate with the best validation metric (top1, mAP or ccc_mean; the first of equals), trained on the
    first 80% and scored on the last 20% of the training rows in an order drawn by --seed (never the eval rows)."""
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    n_val = int(round(GRID_VALIDATION * len(x_train)))
    if n_val < 1 or n_val >= len(x_train):
        raise ProbeError(f"--grid needs a validation part of the {len(x_train)} training rows: "
                         f"{GRID_VALIDATION:.0%} of them leaves {n_val}; give more rows.")
    fit_rows, val_rows = order[:-n_val], order[-n_val:]
    tried, best = [], None
    for setting in _candidates(args, x_train.shape[1]):
        scores = _fit(args, setting, x_train[fit_rows], y_train[fit_rows], x_train[val_rows], num_outputs)
        try:
            result = score(args.task, scores, y_train[val_rows], names.get("target_names"))
        except ValueError as e:
            raise ProbeError(f"--grid cannot score its {n_val} validation rows: {e}") from e
        metric = next(k for k in ("top1", "mAP", "ccc_mean") if k in result)
        value = float("-inf") if np.isnan(result[metric]) else float(result[metric])
        tried.append({**setting, metric: value})
        if best is None or value > best[0]:
            best = (value, setting, metric)
    value, chosen, metric = best
    return {"chosen": chosen, "metric": metric, "value": value, "num_validation": n_val, "tried": tried}


def _setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def main(argv: list[str] | None = None) -> int:
    started = cli.start(_parser(), argv, _check_args)
    if started is None:
        return 2
    args, _ = started
    try:
        report = run(args)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = args.features[: -len(".npz")] if args.features.endswith(".npz") else args.features
    out = args.out or f"{stem}.probe.json"
    with fileio.atomic_output(out) as f:
        json.dump(report, f, indent=1)
    if "grid" in report:
        grid = report["grid"]
        print(f"grid: chose {_setting_text(grid['chosen'])} (validation {grid['metric']} {grid['value']:.4f} on "
              f"{grid['num_validation']} of the training rows)")
    scored = "--eval_features" if args.eval_features else f"{report['num_eval']} held-out rows"
    print(f"{args.probe} probe, {args.task}, {report['num_train']} training rows, scored on {scored}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items()) + f"; written to {out}")
    if report.get("per_class"):
        print("\n".join(per_class_table(report["per_class"])))
    for note in report.get("notes", []):
        print(f"note: {note}")
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.probe`: what its entry module calls."""
    cli.guard(main)
