"""The task contract, and what the tasks with a head (classification, multilabel, regression) share.

A `Task` says, for one value of config.task:
  - what it needs: the model head it trains (`head`), the batch key of its targets (`target_key`), the embedded
    dataset variant that carries them (`synthetic_task`), whether the data's class count sizes its head
    (`counts_classes`), whether it takes mixup / cutmix (`mixes`), whether its eval split is padded to whole
    batches with every video scored (`pads_eval`; else trimmed, a loss estimate), the config mistakes only it
    can see (`config_problems`), what it settles from the data at start-up (`resolve`), the checkpoints a run
    starts its parts from (`init_targets`), the per-element fields it adds in the input workers
    (`element_fields`) and the files it keeps in the workdir (`write_assets`);
  - how it trains: `loss_weights` (class or positive weights from config.loss) and `loss_fn`;
  - how it evaluates: `eval_outputs` of one batch on device, `split_metrics` of a whole split on the host (given a
    `SplitContext`), and the figures a run or an evaluation leaves (`training_figures`, `evaluation_figure`);
  - what a checkpoint records for inference (`metadata`), and how `predict` and `probe` read its outputs
    (`scores`, `describe`, `format_prediction`, `probe_loss`);
  - for self-supervised tasks that train on several views against a teacher (SVT): the views training elements
    are cut into (`view_spec`) and the batch keys holding videos (`video_keys`), the momentum schedule of a
    teacher kept as the EMA of the weights (`ema_schedule`), state beside parameters and optimizer (`extra_state`),
    work on the device before the loss and after the update (`before_update`, `after_update`), parameters held
    fixed for a while (`hold`), whole-split metrics that also need the training split's outputs
    (`reference_split`), and an evaluation of the initial weights (`evaluates_init`).
The trainer, `evaluate`, `predict` and `probe` call these and never branch on the task's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidjax import metrics
from vidjax.config_lib import ConfigError

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class InitTarget:
    """A checkpoint a run starts (part of) its model from: `init_targets` lists them."""

    flag: str  # the config key that names it, e.g. "config.init_from"
    path: str  # what that key holds: anything `vidjax.pretrained.load` takes
    model_name: str  # the model the checkpoint must hold
    block: tuple[str, ...]  # where that model's config block is in config.model (() = config.model itself)
    params: tuple[str, ...]  # where its parameters are in the model's (() = all of them)
    # The block's keys the run decides rather than taking the checkpoint's (`pretrained.take_model`'s `keep`);
    # None: `pretrained.ARCHITECTURE_EXCLUDES` (the head, the clip, regularisation and how it computes).
    keep: frozenset[str] | None = None

    @property
    def config_key(self) -> str:
        """The dotted config key of the block, e.g. "model.encoder"."""
        return ".".join(("model", *self.block))


@dataclasses.dataclass
class SplitContext:
    """What whole-split metrics may read besides the outputs: the run's config, the split's source, the
    checkpoint metadata (`Task.metadata`, plus "target_names") and, for `Task.reference_split` tasks, the training
    split's outputs."""

    config: ml_collections.ConfigDict
    source: Any
    metadata: dict
    reference: dict[str, np.ndarray] | None = None  # the training split's eval outputs (`Task.reference_split`)


@dataclasses.dataclass
class TrainingEnd:
    """What a task's end-of-training figures may draw on: the run's last eval and its model."""

    config: ml_collections.ConfigDict
    setup: Any  # vidjax.train.Setup
    params: Any  # the weights evaluations use
    eval_source: Any
    mask_grid: tuple[int, int, int] | None
    summary: dict[str, float]  # the last eval's metrics ("eval_<name>")
    outputs: dict[str, np.ndarray]  # the last eval's per-example outputs (`split_outputs`)
    class_names: Sequence[str] | None
    workdir: str
    step: int


class Task:
    """One value of config.task. Subclasses set the class attributes and override what differs."""

    name: str = ""
    head: str | None = "classification"  # the config.model.head it trains; None: a model without one
    # The config.model_name it trains, with its recipe, when only one model fits the task; None: any video model.
    model_name: str | None = None
    recipe: str = ""
    target_key: str | None = None  # the batch key of its targets; None: it has none
    synthetic_task: str | None = None  # the embedded dataset's variant that carries those targets
    counts_classes = False  # config.data.num_classes counts the head's outputs, and can be taken from the data
    names_classes = False  # class names index its targets (a folder's subfolders): evaluation keeps the run's order
    # One class per video from the head's outputs, which can be a Kinetics label space (vidjax.data.kinetics):
    # `predict --label_space` and config.eval_label_space read a K710 head in K400 / K600 / K700's classes.
    kinetics_label_spaces = False
    mixes = False  # mixup / cutmix (config.loss) apply
    pads_eval = True  # eval padded to whole batches, every video scored once; False: trimmed to whole batches
    output_kind = "class"  # what one model output is called in predictions ("class N" / "target N")
    # `split_metrics` also gets the training split's eval outputs (SplitContext.reference; e.g. a k-NN's bank).
    reference_split = False
    evaluates_init = False  # a fresh run evaluates its initial weights once, logged as eval_<name>_init at step 0

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        """Mistakes in `config` that only this task can see, each naming the flag that fixes it."""
        return []

    def mask_grid(self, model) -> tuple[int, int, int] | None:
        """The token grid the data pipeline draws masks over (masked pre-training); None: no masks."""
        return None

    def init_targets(self, config: ml_collections.ConfigDict) -> list[InitTarget]:
        """The checkpoints the run starts from: config.init_from, the whole model's, when set."""
        if not config.init_from:
            return []
        return [InitTarget("config.init_from", config.init_from, config.model_name, (), ())]

    def resolve(self, config: ml_collections.ConfigDict, train_source, explicit_keys) -> list[str]:
        """Settles, in `config` (unlocked values only), what this task takes from its training data at start-up;
        returns the problems found, each naming the flag that fixes it. `explicit_keys` as `train.prepare`."""
        return []

    def element_fields(self, config: ml_collections.ConfigDict, train: bool):
        """A picklable `(element, rng) -> dict` run in the input workers on every element, whose fields join the
        batch (rng is None for evaluation); None: nothing to add."""
        return None

    def write_assets(self, config: ml_collections.ConfigDict, train_source, workdir: str) -> None:
        """Writes into `workdir` (process 0) what inference needs besides the checkpoint, pointing `config` at it."""

    def view_spec(self, config: ml_collections.ConfigDict):
        """The `vidjax.data.views.ViewSpec` training elements are cut into (their batch keys: `view_groups`), or
        None: one clip a training element, under "video"."""
        return None

    def video_keys(self, config: ml_collections.ConfigDict, train: bool) -> tuple[str, ...]:
        """The batch keys holding uint8 videos, normalised on the device before the loss or the eval outputs."""
        spec = self.view_spec(config) if train else None
        if spec is None:
            return ("video",)
        from vidjax.data import views

        return tuple(group.key for group in views.view_groups(spec))

    # ---- training ----
    def ema_schedule(self, config: ml_collections.ConfigDict, total_steps: int):
        """step -> the momentum of state["ema_params"], an exponential moving average of the weights that evaluation
        and checkpoints' users read (a self-distillation teacher); None: config.optimizer.ema_decay (0 = none)."""
        return None

    def extra_state(self, config: ml_collections.ConfigDict) -> dict:
        """State the task keeps beside the parameters and the optimizer's (traced inside the jitted init; each value
        replicated over the mesh), e.g. a running centre. Resuming restores it with the rest."""
        return {}

    def before_update(self, config: ml_collections.ConfigDict, setup, state: dict, batch: dict
                      ) -> tuple[dict, dict]:
        """On the device, before the loss: (fields added to the batch the loss sees, a carry for `after_update`).
        `batch` holds the normalised videos; the fields must have the batch's leading axis (micro-batches split
        them)."""
        return {}, {}

    def after_update(self, config: ml_collections.ConfigDict, setup, state: dict, carry: dict) -> tuple[dict, dict]:
        """On the device, after the update: (new values of `extra_state`'s entries, scalar metrics to log)."""
        return {}, {}

    def hold(self, config: ml_collections.ConfigDict, setup, tree, step: jax.Array):
        """The gradients (and then the updates) of a step, with those of parameters held fixed at `step` zeroed."""
        return tree

    def loss_weights(self, config: ml_collections.ConfigDict, source) -> tuple[np.ndarray | None,
                                                                               np.ndarray | None]:
        """(class_weights, pos_weight) from config.loss; tasks that take neither refuse them."""
        if config.loss.class_weights:
            raise ConfigError(f"config.loss.class_weights applies to task='classification', not {self.name!r}.")
        if config.loss.pos_weight:
            raise ConfigError(f"config.loss.pos_weight applies to task='multilabel', not {self.name!r}.")
        return None, None

    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> LossFn:
        """(model, device batch, rng) -> (scalar loss, dict of scalar metrics)."""
        raise NotImplementedError

    # ---- evaluation ----
    def eval_outputs(self, config: ml_collections.ConfigDict, model, batch: dict) -> dict[str, jax.Array]:
        """Per-example outputs of one normalised batch, with its "valid" and "decode_failures" rows passed on."""
        raise NotImplementedError

    def split_metrics(self, outputs: dict[str, np.ndarray], context: SplitContext) -> dict[str, float]:
        """Whole-split metrics (names without the "eval_" prefix, "loss" first) from `eval_outputs` gathered over
        the split, padding rows removed."""
        raise NotImplementedError

    def training_figures(self, end: TrainingEnd) -> list[str]:
        """Figures written at the end of training into end.workdir (called on every process; what runs on the
        devices runs on all of them, process 0 writes); returns the paths written."""
        return []

    def evaluation_figure(self, outputs: dict[str, np.ndarray], summary: dict[str, float],
                          class_names: Sequence[str] | None, path: str, title: str) -> bool:
        """The figure of an evaluation (`python -m vidjax.evaluate --out`) at `path`; False: this task has none."""
        return False

    # ---- what a checkpoint records ----
    def metadata(self, config: ml_collections.ConfigDict, train_source) -> dict:
        """The task's part of a checkpoint's metadata: its class and target names."""
        return {"class_names": None, "target_names": None}

    # ---- predict and probe ----
    def scores(self, logits: jax.Array) -> jax.Array:
        """What the head's outputs mean: probabilities, per-class scores or values (views average these)."""
        raise NotImplementedError(f"task {self.name!r} has no head to score")

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        """A JSON-able prediction from a video's averaged `scores`."""
        raise NotImplementedError(f"task {self.name!r} makes no predictions")

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        """The text form of `describe`'s output, one line per label or value."""
        raise NotImplementedError(f"task {self.name!r} makes no predictions")

    def mix_label_smoothing(self, config: ml_collections.ConfigDict) -> float:
        """The label smoothing mixup / cutmix apply to the targets they mix (`mixes` tasks)."""
        return 0.0

    predicts = False  # `python -m vidjax.predict` reads a checkpoint of it (scores a head, or captions)
    probes = False  # `python -m vidjax.probe` fits it on extracted features
    probe_standardises_targets = False  # a probe fits standardised targets and maps its outputs back

    def probe_targets(self, targets: np.ndarray) -> np.ndarray:
        """Targets as a probe trains on them."""
        return np.asarray(targets, np.float32)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """A probe's training loss on its raw outputs."""
        raise NotImplementedError(f"task {self.name!r} cannot be probed")


def aligned_lines(pairs: list[tuple[str, str]], indent: str) -> list[str]:
    """`name  value` lines with the names padded to one width."""
    width = max((len(name) for name, _ in pairs), default=0)
    return [f"{indent}{name:<{width}}  {value}" for name, value in pairs]


class HeadTask(Task):
    """A task read from a linear head's outputs (config.model.num_classes of them), over one or several views."""

    predicts = True
    probes = True

    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = []
        # config.data.num_classes 0 is resolved from the data at start-up (`train.prepare`), and the head follows.
        if self.counts_classes and config.data.num_classes and config.data.num_classes != config.model.num_classes:
            problems.append(f"config.data.num_classes={config.data.num_classes} but config.model.num_classes="
                            f"{config.model.num_classes}; the head must have one output per class in the data (leave "
                            f"config.data.num_classes at 0 to take the count from the data, and the head follows "
                            f"it).")
        return problems

    def per_example_loss(self, scores: jax.Array, target: jax.Array) -> jax.Array:
        """The loss of each example from its view-averaged scores (B, C) and its targets."""
        raise NotImplementedError

    def eval_columns(self, config: ml_collections.ConfigDict) -> np.ndarray | None:
        """The head outputs evaluation scores, in the eval split's class order; None = all of them as they are."""
        return None

    def eval_outputs(self, config: ml_collections.ConfigDict, model, batch: dict) -> dict[str, jax.Array]:
        """{"scores": (B, C or K), "loss": (B,)}, the batch's targets under their key, and its "valid" and
        "decode_failures" rows when it has them, from one view (B, T, H, W, 3) or several (B, V, ...). Over several
        views the scores (`scores`) are averaged, as the published multi-view test protocols do (VideoMAE: 5 clips
        x 3 crops); the loss is then computed from the averaged scores."""
        video = batch["video"]
        passed = {k: batch[k] for k in ("valid", "decode_failures") if k in batch}
        views = video.shape[1] if video.ndim == 6 else 1
        b = video.shape[0]
        logits = model(video.reshape(b * views, *video.shape[-4:]))["logits"].astype(jnp.float32)
        columns = self.eval_columns(config)
        if columns is not None:
            logits = jnp.take(logits, jnp.asarray(columns), axis=-1)
        scores = self.scores(logits.reshape(b, views, -1)).mean(1)
        target = batch[self.target_key]
        return {"scores": scores, "loss": self.per_example_loss(scores, target), self.target_key: target, **passed}

    def task_metrics(self, scores: np.ndarray, targets: np.ndarray, target_names: Sequence[str] | None
                     ) -> dict[str, float]:
        """The task's metrics from whole-split scores and targets (`vidjax.metrics`)."""
        raise NotImplementedError

    def split_metrics(self, outputs: dict[str, np.ndarray], context: SplitContext) -> dict[str, float]:
        result = self.task_metrics(outputs["scores"], outputs[self.target_key], context.metadata.get("target_names"))
        return {"loss": float(outputs["loss"].mean()), **{k: float(v) for k, v in result.items()}}

    score_name = "score"  # one label's value in `describe`
    scores_name = "scores"  # the whole vector's

    def ranked(self, scores: np.ndarray, names: list[str]) -> list[dict]:
        """Every label with its score, best first (ties in label order)."""
        scores = np.asarray(scores, np.float64)
        order = np.argsort(-scores, kind="stable")
        return [{"label": names[i], "index": int(i), self.score_name: float(scores[i])} for i in order]

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        return {self.scores_name: np.asarray(scores, np.float64).tolist(),
                "top_k": self.ranked(scores, names)[:top_k]}

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        return aligned_lines([(r["label"], f"{r[self.score_name]:.3f}") for r in prediction["top_k"]], indent)


def confusion_figure(outputs: dict[str, np.ndarray], class_names: Sequence[str] | None, path: str,
                     title: str) -> None:
    """The confusion matrix of whole-split classification outputs, as a PNG at `path`."""
    metrics.confusion_matrix_figure(metrics.confusion_matrix(outputs["scores"], outputs["label"]), class_names, path,
                                    title=title)


def label_matrix(source, key: str, num_classes: int) -> np.ndarray:
    """(N, C) float64 one-hot (key "label") or multi-hot ("labels") targets of every element of `source` (file lists
    and folders decode no video; packs and the embedded dataset read or render every element)."""
    rows = [source[i][key] for i in range(len(source))]
    if key == "label":
        return np.eye(num_classes, dtype=np.float64)[np.asarray(rows)]
    return np.asarray(rows, np.float64)


def weights_from_config(spec: str, key: str, size: int, balanced: Callable[[], np.ndarray]) -> np.ndarray | None:
    """config.loss.<key>: "" (none), "balanced" (`balanced()`, from the training labels) or `size` numbers."""
    if not spec:
        return None
    if spec == "balanced":
        return balanced()
    try:
        values = np.array([float(v) for v in spec.split(",")], np.float32)
    except ValueError:
        raise ConfigError(f"config.loss.{key}={spec!r}: give 'balanced' or {size} comma-separated numbers.") from None
    if values.shape != (size,) or (values < 0).any():
        raise ConfigError(f"config.loss.{key} has {values.size} values; give {size} non-negative numbers, one a "
                          f"class, or 'balanced'.")
    return values
