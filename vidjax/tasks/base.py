"""A task's training spec: what the trainer, the evaluators and the input path's callers read of one value of
config.task (`TrainingSpec`, with its optional EMA-teacher part, `Teacher`), and what the tasks with a head share
(`HeadTraining`).

A task is three contracts, each read only by its own readers (`vidjax.tasks`): this training spec, its readout
(`vidjax.tasks.readout`: predict, extract, probe, the evaluators) and its presentation
(`vidjax.tasks.presentation`: the demo, export, push, the commands' messages). A `TrainingSpec` says:
  - what it needs: the model head it trains (`head`) or the one model it fits (`model_name`, with its `recipe`), the
    batch key of its targets (`target_key`), the embedded dataset variant that carries them, named as those targets
    (`synthetic_task`), whether the data's class count sizes its head (`counts_classes`) and class names index its
    targets (`names_classes`), whether it takes mixup / cutmix (`mixes`), whether its eval split is padded to whole
    batches with every video scored (`pads_eval`; else trimmed, a loss estimate), the config mistakes only it can
    see (`config_problems`), what it settles from the data at start-up (`resolve`), the checkpoints a run starts its
    parts from (`init_targets`), and the files it keeps in the workdir (`write_assets`);
  - what the input path gives it, as one `input_spec`: the per-element fields it adds in the input workers
    (`element_fields`), the views training elements are cut into (`view_spec`), the masks drawn for every clip
    (`masks`: a `vidjax.patches.MaskSpec` over the model's token grid, which the model then reads too), and the
    batch keys holding videos (`video_keys`);
  - how it trains: `loss_weights` (class or positive weights from config.loss), `loss_fn`, `mix_label_smoothing`;
  - which evaluator measures it when config.evals names none (`evaluator`: a `vidjax.evaluators` type, whose
    module computes the eval outputs, the whole-split metrics and the figures a run or an evaluation leaves);
  - what its evaluator computes with it, on the device, for a task that has it (`reconstruct`: a masked batch's
    reconstruction with the spec's mask counts; `caption_losses`: each caption's teacher-forced loss); the
    evaluators are handed the spec (`vidjax.evaluators.base.EvalContext`) and never import a task module;
  - what a checkpoint records for inference (`metadata`);
  - for self-supervised tasks that learn against a teacher kept as the EMA of the weights (SVT; latent prediction
    such as V-JEPA): its `teacher` (a `Teacher`: the momentum schedule, state beside the parameters, work on the
    device before the loss and after the update, parameters held fixed for a while); None for every other task.
The trainer calls these and never branches on the task's name.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from vidjax.config_lib import ConfigError
from vidjax.data import pipeline, views
from vidjax.patches import MaskSpec

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


class Teacher(abc.ABC):
    """The EMA-teacher part of a training spec (`TrainingSpec.teacher`): a teacher kept as an exponential moving
    average of the weights (state["ema_params"], which evaluation and checkpoints' users read), and the work around
    each update that learning against it takes. The defaults do nothing; a teacher overrides what it needs."""

    @abc.abstractmethod
    def ema_schedule(self, config: ml_collections.ConfigDict, total_steps: int) -> Callable[[jax.Array], jax.Array]:
        """step -> the momentum of state["ema_params"] (replaces config.optimizer.ema_decay, which must be 0)."""

    def extra_state(self, config: ml_collections.ConfigDict) -> dict:
        """State kept beside the parameters and the optimizer's (traced inside the jitted init; each value replicated
        over the mesh), e.g. a running centre. Resuming restores it with the rest."""
        return {}

    def before_update(self, config: ml_collections.ConfigDict, setup, state: dict, batch: dict
                      ) -> tuple[dict, dict]:
        """On the device, before the loss: (fields added to the batch the loss sees, a carry for `after_update`).
        Called once a micro-batch, inside the train step's accumulation loop (config.grad_accum_steps), with that
        micro-batch (its normalised videos): the fields have its leading axis, and `after_update` gets the carry's
        values averaged over the micro-batches (the whole batch's where they are means over its examples)."""
        return {}, {}

    def after_update(self, config: ml_collections.ConfigDict, setup, state: dict, carry: dict) -> tuple[dict, dict]:
        """On the device, after the update: (new values of `extra_state`'s entries, scalar metrics to log)."""
        return {}, {}

    def hold(self, config: ml_collections.ConfigDict, setup, tree, step: jax.Array):
        """The gradients (and then the updates) of a step, with those of parameters held fixed at `step` zeroed."""
        return tree


class TrainingSpec:
    """How one value of config.task trains. Subclasses set the class attributes and override what differs."""

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
    mixes = False  # mixup / cutmix (config.loss) apply
    pads_eval = True  # eval padded to whole batches, every video scored once; False: trimmed to whole batches
    # The `vidjax.evaluators` type of a run's evaluation when config.evals names none (one evaluator, "eval").
    evaluator = ""
    teacher: Teacher | None = None  # the EMA teacher it learns against; None: none
    # Why micro-batches would change its loss, for a loss that couples a batch's examples (a contrastive one contrasts
    # each with all the others); "": gradient accumulation (config.grad_accum_steps) gives the whole batch's gradients.
    batch_coupled = ""

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        """Mistakes in `config` that only this task can see, each naming the flag that fixes it."""
        return []

    def accumulation_problem(self, config: ml_collections.ConfigDict) -> str | None:
        """Why config.grad_accum_steps cannot be used (`batch_coupled`), or None. The trainer and `vidjax.aot` both
        refuse such a config: a compiled step the trainer would not run is no answer."""
        if not self.batch_coupled or config.grad_accum_steps == 1:
            return None
        return (f"config.grad_accum_steps={config.grad_accum_steps}: config.task={self.name!r} does not accumulate "
                f"({self.batch_coupled}); set it to 1 (a smaller config.batch_size, or more devices, for memory).")

    def init_targets(self, config: ml_collections.ConfigDict) -> list[InitTarget]:
        """The checkpoints the run starts from: config.init_from, the whole model's, when set."""
        if not config.init_from:
            return []
        return [InitTarget("config.init_from", config.init_from, config.model_name, (), ())]

    def resolve(self, config: ml_collections.ConfigDict, train_source, explicit_keys) -> list[str]:
        """Settles, in `config` (unlocked values only), what this task takes from its training data at start-up;
        returns the problems found, each naming the flag that fixes it. `explicit_keys` as `train.prepare`."""
        return []

    def write_assets(self, config: ml_collections.ConfigDict, train_source, workdir: str) -> None:
        """Writes into `workdir` (process 0) what inference needs besides the checkpoint, pointing `config` at it."""

    # ---- what the input path gives it ----
    def element_fields(self, config: ml_collections.ConfigDict, train: bool) -> pipeline.ElementFields | None:
        """A picklable `(element, rng) -> dict` run in the input workers on every element, whose fields join the
        batch (rng is None for evaluation); None: nothing to add."""
        return None

    def view_spec(self, config: ml_collections.ConfigDict) -> views.ViewSpec | None:
        """The `vidjax.data.views.ViewSpec` training elements are cut into (their batch keys: `view_groups`), or
        None: one clip a training element, under "video"."""
        return None

    def masks(self, config: ml_collections.ConfigDict, model) -> MaskSpec | None:
        """The masks the input path draws for every clip over `model`'s token grid (masked prediction), which the
        loss then hands the model; None: no masks."""
        return None

    def input_spec(self, config: ml_collections.ConfigDict, model=None) -> pipeline.InputSpec:
        """What the input path gives this task (`pipeline.make_dataset` takes it; `batch_size_problems` its
        `pads_eval`): the fields of `element_fields`, the views of `view_spec`, the masks of `masks` and whether the
        eval split is padded (`pads_eval`). `model`: the model the batches feed (an abstract one will do), which a
        task with masks needs for its token grid."""
        return pipeline.InputSpec(train_fields=self.element_fields(config, True),
                                  eval_fields=self.element_fields(config, False), views=self.view_spec(config),
                                  pads_eval=self.pads_eval, masks=self.masks(config, model))

    def video_keys(self, config: ml_collections.ConfigDict, train: bool) -> tuple[str, ...]:
        """The batch keys holding uint8 videos, normalised on the device before the loss or the eval outputs."""
        spec = self.view_spec(config) if train else None
        if spec is None:
            return ("video",)
        return tuple(group.key for group in views.view_groups(spec))

    # ---- training ----
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
        raise NotImplementedError(f"task {self.name!r} defines no loss: its training spec must override loss_fn")

    def mix_label_smoothing(self, config: ml_collections.ConfigDict) -> float:
        """The label smoothing mixup / cutmix apply to the targets they mix (`mixes` tasks)."""
        return 0.0

    # ---- what its evaluator computes with it ----
    def reconstruct(self, config: ml_collections.ConfigDict, model, batch: dict, rng: jax.Array | None = None
                    ) -> dict[str, jax.Array]:
        """The model's reconstruction of a batch masked as the input path masks it (batch["mask"], and
        batch["decoder_mask"] for dual masking), handed the counts of masked and decoded tokens of `masks`: what a
        masked-prediction task's loss and the reconstruction evaluator read."""
        raise NotImplementedError(f"task {self.name!r} reconstructs no masked input: the reconstruction evaluator "
                                  f"reads its training spec's reconstruct")

    def caption_losses(self, model, batch: dict) -> jax.Array:
        """(B,): each caption's teacher-forced loss per token (its real tokens, padding excluded), what the
        captioning evaluator reports as its loss."""
        raise NotImplementedError(f"task {self.name!r} writes no captions: the captioning evaluator reads its "
                                  f"training spec's caption_losses")

    # ---- what a checkpoint records ----
    def metadata(self, config: ml_collections.ConfigDict, train_source) -> dict:
        """The task's part of a checkpoint's metadata: its class and target names."""
        return {"class_names": None, "target_names": None}


class HeadTraining(TrainingSpec):
    """The training spec of a task read from a linear head's outputs (config.model.num_classes of them)."""

    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = []
        # config.data.num_classes 0 is resolved from the data at start-up (`train.prepare`), and the head follows.
        if self.counts_classes and config.data.num_classes and config.data.num_classes != config.model.num_classes:
            problems.append(f"config.data.num_classes={config.data.num_classes} but config.model.num_classes="
                            f"{config.model.num_classes}; the head must have one output per class in the data (leave "
                            f"config.data.num_classes at 0 to take the count from the data, and the head follows "
                            f"it).")
        return problems

    def metadata(self, config: ml_collections.ConfigDict, train_source) -> dict:
        """The training data's class names (a folder's subfolders, a names file, the embedded dataset's)."""
        names = getattr(train_source, "class_names", None)
        return {"class_names": list(names) if names else None, "target_names": None}


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
