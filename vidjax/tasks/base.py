"""The task contract, and what the tasks with a head (classification, multilabel, regression) share.

A `Task` says, for one value of config.task:
  - what it needs: the model head it trains (`head`), the batch key of its targets (`target_key`), the embedded
    dataset variant that carries them, named as those targets (`synthetic_task`), whether the data's class count
    sizes its head (`counts_classes`), whether it takes mixup / cutmix (`mixes`), whether its eval split is padded
    to whole batches with every video scored (`pads_eval`; else trimmed, a loss estimate), the config mistakes only
    it can see (`config_problems`), what it settles from the data at start-up (`resolve`), the checkpoints a run
    starts its parts from (`init_targets`), the per-element fields it adds in the input workers
    (`element_fields`), all of which the input path receives as one `input_spec`, and the files it keeps in the
    workdir (`write_assets`);
  - how it trains: `loss_weights` (class or positive weights from config.loss) and `loss_fn`;
  - which evaluator measures it when config.evals names none (`evaluator`: a `vidjax.evaluators` type, whose
    module computes the eval outputs, the whole-split metrics and the figures a run or an evaluation leaves);
  - what a checkpoint records for inference (`metadata`), and how `predict` and `probe` read its outputs: its
    readout (`vidjax.tasks.readout.Readout`: `scores`, `describe`, `format_prediction`, `probe_loss`, ...);
  - how its results are shown and shared: the demo's page (`demo_output`, `demo_description`, `shown_scores`,
    `timeline_columns` and `timeline_cells`), the commands' messages (`checkpoint_kind`), a pushed model card
    (`purpose`, `hub_pipeline_tag`) and an export (`score_function`, `hf_problem_type`);
  - for self-supervised tasks that train on several views against a teacher (SVT): the views training elements
    are cut into (`view_spec`) and the batch keys holding videos (`video_keys`), the momentum schedule of a
    teacher kept as the EMA of the weights (`ema_schedule`), state beside parameters and optimizer (`extra_state`),
    work on the device before the loss and after the update (`before_update`, `after_update`), parameters held
    fixed for a while (`hold`).
The trainer and the commands (`evaluate`, `predict`, `probe`, the demo, `export`, `push`) call these and never
branch on the task's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from vidjax.config_lib import ConfigError
from vidjax.data import pipeline, views

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


class Task:
    """One value of config.task. Subclasses set the class attributes and override what differs."""

    name: str = ""
    head: str | None = "classification"  # the config.model.head it trains; None: a model without one
    # The config.model_name it trains, with its recipe, when only one model fits the task; None: any video model.
    model_name: str | None = None
    recipe: str = ""
    target_key: str | None = None  # the batch key of its targets; None: it has none
    # The embedded dataset's variant that carries those targets (`vidjax.data.synthetic.VARIANTS`: label | labels |
    # targets | captions), which config.data.synthetic_task must name on synthetic data.
    synthetic_task: str | None = None
    counts_classes = False  # config.data.num_classes counts the head's outputs, and can be taken from the data
    names_classes = False  # class names index its targets (a folder's subfolders): evaluation keeps the run's order
    # One class per video from the head's outputs, which can be a Kinetics label space (vidjax.data.kinetics):
    # `predict --label_space` and config.eval_label_space read a K710 head in K400 / K600 / K700's classes.
    kinetics_label_spaces = False
    mixes = False  # mixup / cutmix (config.loss) apply
    pads_eval = True  # eval padded to whole batches, every video scored once; False: trimmed to whole batches
    output_kind = "class"  # what one model output is called in predictions ("class N" / "target N")
    # The `vidjax.evaluators` type of a run's evaluation when config.evals names none (one evaluator, "eval").
    evaluator = ""

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

    def input_spec(self, config: ml_collections.ConfigDict) -> pipeline.InputSpec:
        """What the input path gives this task (`pipeline.make_dataset` takes it; `batch_size_problems` its
        `pads_eval`): the fields of `element_fields`, the views of `view_spec` and whether the eval split is padded
        (`pads_eval`)."""
        return pipeline.InputSpec(train_fields=self.element_fields(config, True),
                                  eval_fields=self.element_fields(config, False), views=self.view_spec(config),
                                  pads_eval=self.pads_eval)

    def video_keys(self, config: ml_collections.ConfigDict, train: bool) -> tuple[str, ...]:
        """The batch keys holding uint8 videos, normalised on the device before the loss or the eval outputs."""
        spec = self.view_spec(config) if train else None
        if spec is None:
            return ("video",)
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

    # ---- how its results are shown and shared (the demo, the commands' messages, export, push; issue 41) ----
    # Outside vidjax/tasks/ nothing compares a task's name (tests/test_task_names.py): these say what differs.
    # What the demo's page leads with for a checkpoint of it: "scores" (its head's, as `describe` reads them),
    # "reconstruction" (a masked reconstruction of the middle clip) or "caption"; None: nothing (the demo refuses it).
    demo_output: str | None = None
    ranks_labels = True  # the demo charts a result as labels ranked by score; False: a table of each output's value
    checkpoint_kind = ""  # how messages name a checkpoint of it that has no head to predict with ("a pre-training")
    purpose = ""  # what a model trained for it does, as a model card says ("video classification"); "": embeddings
    hub_pipeline_tag: str | None = None  # the Hugging Face Hub `pipeline_tag` of a pushed checkpoint of it
    hf_problem_type: str | None = None  # transformers' config.json `problem_type` of its head (`export --to_hf`)
    score_function = "identity"  # what `scores` applies to the head's logits, named for servers (export's "scores")

    def demo_description(self, top_k: int) -> str:
        """What the demo's page says it shows for a video, e.g. "the caption of the middle window's clip"."""
        return ""

    def shown_scores(self, prediction: dict) -> dict[str, float]:
        """label -> value that the demo shows of one `describe` output, best first; {} for a task without a head."""
        return {}

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        """The demo timeline's columns for one window's prediction, after its start and end (`names`: the outputs';
        `threshold`: the multi-label presence score)."""
        return []

    def timeline_cells(self, prediction: dict) -> list:
        """One window's cells under `timeline_columns`, from its `describe` output."""
        return []


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

    def task_metrics(self, scores: np.ndarray, targets: np.ndarray, target_names: Sequence[str] | None
                     ) -> dict[str, float]:
        """The task's metrics from whole-split scores and targets (`vidjax.metrics`): what its evaluator and a probe
        report."""
        raise NotImplementedError

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

    # ---- how its results are shown (the demo): the top label and its score; subclasses say more ----
    demo_output = "scores"

    def shown_scores(self, prediction: dict) -> dict[str, float]:
        return {row["label"]: row[self.score_name] for row in prediction["top_k"]}

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        return ["top label", "score"]

    def timeline_cells(self, prediction: dict) -> list:
        best, score = next(iter(self.shown_scores(prediction).items()))
        return [best, round(score, 4)]


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
