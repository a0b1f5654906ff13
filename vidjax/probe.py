r"""Linear or MLP probes on extracted features: how much of a task the embeddings already carry.

  python -m vidjax.probe --features=train.npz --task=classification
  python -m vidjax.probe --features=train.npz --eval_features=val.npz --task=regression --probe=mlp

--features is a `python -m vidjax.extract` output with (N, D) features (--pool=mean or cls) and the targets of the
task: `label` (classification), `labels` (multilabel, multi-hot) or `targets` (regression). The probe is trained
on standardised features (mean and std of the training rows; regression targets are standardised the same way and
mapped back) with AdamW in jax/optax, minibatches drawn by --seed: a linear layer, or one hidden layer of --hidden
ReLU units (--probe=mlp). It is scored on --eval_features, or else on a held-out fraction (--holdout) of the rows,
drawn by --seed, with the metrics of `vidjax.metrics`: classification top1 / top5 / macro_f1, multilabel mAP,
regression ccc_<target> / ccc_mean / mse. The metrics are printed and written to --out (JSON, default
FEATURES.probe.json). Exit status 0, 2 for bad arguments or features that do not fit the task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vidjax import cli, fileio, tasks

TASKS = tuple(name for name in tasks.available() if tasks.get_task(name).probes)  # the tasks a probe fits
TARGET_KEY = {name: tasks.get_task(name).target_key for name in TASKS}
PROBES = ("linear", "mlp")


class ProbeError(ValueError):
    """Features or targets that cannot train the requested probe; the message says which flag or file."""


def load_split(path: str, task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (N, D) float32, targets, names {"class_names", "target_names"}) of an extract output."""
    key = TARGET_KEY[task]
    try:
        data = np.load(os.path.expanduser(path))  # `~/feats.npz` as typed
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: not a features file written by `python -m vidjax.extract` ({e}).") from e
    with data:
        if "features" not in data:
            raise ProbeError(f"{path} has no `features` array; write it with `python -m vidjax.extract`.")
        features = np.asarray(data["features"], np.float32)
        if features.ndim != 2:
            raise ProbeError(f"{path}: features are shaped {features.shape}; the probe takes one vector per video "
                             f"(N, D): extract with --pool=mean or --pool=cls.")
        if key not in data:
            have = [k for k in TARGET_KEY.values() if k in data]
            raise ProbeError(f"{path} has no `{key}` array for --task={task} (it has {have or 'no targets'}); "
                             f"choose the --task its list describes.")
        targets = np.asarray(data[key])
        names = {k: [str(x) for x in data[k]] for k in ("class_names", "target_names") if k in data}
    return features, targets, names


def _init(rng: np.random.Generator, probe: str, dim: int, hidden: int, out: int) -> dict:
    if probe == "linear":
        return {"w": np.zeros((dim, out), np.float32), "b": np.zeros(out, np.float32)}
    return {"w1": (rng.standard_normal((dim, hidden)) * np.sqrt(2.0 / dim)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": (rng.standard_normal((hidden, out)) * np.sqrt(1.0 / hidden)).astype(np.float32),
            "b2": np.zeros(out, np.float32)}


def _apply(params: dict, x: jax.Array) -> jax.Array:
    if "w" in params:
        return x @ params["w"] + params["b"]
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def train_probe(task: str, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, *, num_outputs: int,
                probe: str = "linear", hidden: int = 256, epochs: int = 100, lr: float = 1e-3,
                weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Trains the probe on (x_train, y_train) and returns its scores on x_eval.

    Scores are class probabilities (classification), per-class sigmoid scores (multilabel) or values in the
    targets' units (regression). Features (and regression targets) are standardised with training statistics.
    """
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    contract = tasks.get_task(task)
    y = contract.probe_targets(y_train)
    if contract.probe_standardises_targets:
        y_mean, y_std = y.mean(axis=0), y.std(axis=0)
        y_std = np.where(y_std > 1e-6, y_std, 1.0)
        y = (y - y_mean) / y_std
    rng = np.random.default_rng(seed)
    params = jax.tree.map(jnp.asarray, _init(rng, probe, x_train.shape[1], hidden, num_outputs))
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(lambda p: contract.probe_loss(_apply(p, xb), yb))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n = len(x_train)
    batch = min(batch_size, n)
    for _ in range(epochs):
        order = rng.permutation(n)
        # Whole batches only (one compiled shape); the permutation changes which rows sit out each epoch.
        for start in range(0, n - batch + 1, batch):
            rows = order[start:start + batch]
            params, opt_state, _ = step(params, opt_state, x_train[rows], y[rows])
    scores = np.asarray(contract.scores(_apply(params, jnp.asarray(x_eval))))
    return scores * y_std + y_mean if contract.probe_standardises_targets else scores


def score(task: str, scores: np.ndarray, targets: np.ndarray, target_names: list[str] | None) -> dict[str, float]:
    """The task's metrics (`Task.task_metrics`, from `vidjax.metrics`)."""
    return tasks.get_task(task).task_metrics(scores, targets, target_names)


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.probe", __doc__)
    parser.add_argument("--features", required=True, metavar="FILE.npz", help="features from python -m vidjax.extract")
    parser.add_argument("--task", required=True, choices=TASKS, help="which targets to fit")
    parser.add_argument("--eval_features", default="", metavar="FILE2.npz",
                        help="score on these features instead of a held-out part of --features")
    parser.add_argument("--probe", default="linear", choices=PROBES, help="linear layer or 1-hidden-layer MLP")
    parser.add_argument("--hidden", type=int, default=256, help="--probe=mlp: hidden units (default 256)")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of rows held out (default 0.2)")
    parser.add_argument("--epochs", type=int, default=100, help="passes over the training rows (default 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--batch_size", type=int, default=256, help="rows per step (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split, init and batches")
    parser.add_argument("--out", default="", metavar="FILE.json", help="metrics JSON (default FEATURES.probe.json)")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    for flag in ("hidden", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            return f"--{flag}={getattr(args, flag)} must be at least 1."
    if not args.eval_features and not 0.0 < args.holdout < 1.0:
        return f"--holdout={args.holdout} must be between 0 and 1 (or give --eval_features)."
    if args.lr <= 0 or args.weight_decay < 0:
        return "--lr must be positive and --weight_decay not negative."
    return None


def _split(args, features, targets) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(features))
    n_eval = int(round(args.holdout * len(features)))
    if n_eval < 1 or n_eval >= len(features):
        raise ProbeError(f"--holdout={args.holdout} of {len(features)} rows leaves {n_eval} to score and "
                         f"{len(features) - n_eval} to train; both need at least one (or give --eval_features).")
    held, kept = order[:n_eval], order[n_eval:]
    return features[kept], targets[kept], features[held], targets[held]


def run(args: argparse.Namespace) -> dict:
    """Loads, splits, trains and scores; returns the report written to --out."""
    features, targets, names = load_split(args.features, args.task)
    if args.eval_features:
        x_eval, y_eval, _ = load_split(args.eval_features, args.task)
        if x_eval.shape[1] != features.shape[1] or y_eval.shape[1:] != targets.shape[1:]:
            raise ProbeError(f"--eval_features={args.eval_features} has features {x_eval.shape} and targets "
                             f"{y_eval.shape}, which do not match --features ({features.shape}, {targets.shape}).")
        x_train, y_train = features, targets
    else:
        x_train, y_train, x_eval, y_eval = _split(args, features, targets)
    if targets.ndim == 1:  # class indices
        num_outputs = max(len(names.get("class_names", [])), int(max(y_train.max(), y_eval.max())) + 1)
    else:
        num_outputs = targets.shape[1]
    scores = train_probe(args.task, x_train, y_train, x_eval, num_outputs=num_outputs, probe=args.probe,
                         hidden=args.hidden, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                         batch_size=args.batch_size, seed=args.seed)
    try:
        result = score(args.task, scores, y_eval, names.get("target_names"))
    except ValueError as e:
        raise ProbeError(f"cannot score the {len(y_eval)} evaluation rows: {e}") from e
    return {"task": args.task, "probe": args.probe, "features": args.features,
            "eval_features": args.eval_features or None, "holdout": None if args.eval_features else args.holdout,
            "num_train": len(x_train), "num_eval": len(x_eval), "feature_dim": int(features.shape[1]),
            "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "metrics": result}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = args.features[: -len(".npz")] if args.features.endswith(".npz") else args.features
    out = args.out or f"{stem}.probe.json"
    with fileio.atomic_output(out) as f:
        json.dump(report, f, indent=1)
    scored = "--eval_features" if args.eval_features else f"{report['num_eval']} held-out rows"
    print(f"{args.probe} probe, {args.task}, {report['num_train']} training rows, scored on {scored}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items()) + f"; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
