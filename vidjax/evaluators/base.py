"""The evaluator contract, and what every evaluator shares: reading its split, gathering per-example outputs.

An evaluator is built as `Evaluator(context, name=..., split=..., data=..., batches=..., **its own options)` and
`run(params)` yields its (metric name, value) pairs, big_vision's shape. vidjax's evaluators do not take a
`predict_fn`: what they compute on the device depends on the evaluation (class scores over views, generated captions,
CLS features), so each says it in `batch_outputs(model, batch)` and the run's `EvalContext.step` compiles that for
the run's mesh and parameter shardings (`vidjax.train.make_eval_step`: normalised videos in, outputs gathered to
every process out). The host then computes whole-split metrics from the outputs (`metrics`), never per-batch means.

What an evaluator knows of the run's task is what the run hands it in its `EvalContext`: the task's training spec
(`spec`: its batches and masks, and what its evaluator computes with it, such as `reconstruct` or `caption_losses`)
and its readout (`readout`: what the outputs mean, a head's metrics, `decode_captions`), which
`vidjax.train.eval_context` looks up for the trainer and `python -m vidjax.evaluate`. No module here imports
`vidjax.tasks` (`tests/test_layering.py` holds them to it), so an evaluator measures any task that has what it
`requires`, by what it is.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from vidjax import sharding
from vidjax.config_lib import ConfigError, raise_problems
from vidjax.data import pipeline

SPLITS = ("eval", "train")  # the splits an evaluator reads, each as an eval split (centre views, no augmentation)
# (model, normalised batch) -> per-example outputs, with the batch's "valid" and "decode_failures" rows passed on.
OutputsFn = Callable[[Any, dict], dict[str, jax.Array]]


def with_data(config: ml_collections.ConfigDict, data: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
    """`config` with config.data keys replaced by `data` (an evaluator's own eval set); `config` itself without."""
    if not data:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in data.items():
            if key not in config.data:
                raise ConfigError(f"config.data has no key {key!r}")
            config.data[key] = value
    return config


@dataclasses.dataclass
class EvalContext:
    """What evaluators read of a run (the trainer's) or of an evaluated checkpoint (`python -m vidjax.evaluate`)."""

    config: ml_collections.ConfigDict  # the run's, resolved
    # The run task's training spec (`vidjax.tasks.base.TrainingSpec`) and readout (`vidjax.tasks.readout.Readout`):
    # all an evaluator reads of the task.
    spec: Any
    readout: Any
    setup: Any = None  # vidjax.train.Setup: mesh, graphdef, parameter shardings, abstract model
    # (config, setup, outputs_fn) -> jitted (params, batch) -> outputs: `vidjax.train.make_eval_step`
    make_step: Callable | None = None
    # checkpoint metadata (`TrainingSpec.metadata`), target names
    metadata: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)  # split -> source of config.data (others made on use)
    class_names: Sequence[str] | None = None  # the class order the splits' sources follow (folder sources)
    workdir: str | None = None  # where end-of-training figures go

    def source(self, split: str, data: Mapping[str, Any] | None = None):
        """The source of `split` of config.data with `data`'s keys replaced, made once."""
        key = split if not data else (split, repr(sorted(data.items())))
        if key not in self.sources:
            block = with_data(self.config, data).data
            self.sources[key] = pipeline.make_source(block, split, class_names=self.class_names)
        return self.sources[key]

    def step(self, config: ml_collections.ConfigDict, outputs_fn: OutputsFn):
        """`outputs_fn` jitted over the run's mesh: (params, batch) -> outputs replicated on every process."""
        return self.make_step(config, self.setup, outputs_fn)


class Evaluator(abc.ABC):
    """One evaluation of a run: a split (or another data set) read as an eval split, per-example outputs computed on
    the devices, whole-split metrics on the host. Subclasses set the class attributes and the two methods."""

    # What it needs of the run's task (attributes of its training spec, `vidjax.tasks.base.TrainingSpec`, and their
    # values), e.g. {"target_key": "labels"}: it measures every task that has them, so a new task takes an existing
    # evaluator by what it is.
    requires: Mapping[str, Any] = {}
    options: Mapping[str, Any] = {}  # its own config.evals keys and their defaults (None: taken from the config)
    evaluates_init = False  # the default of the entry's `init`: also score the initial weights of a fresh run

    @classmethod
    def lacks(cls, spec: Any) -> dict[str, tuple[Any, Any]]:
        """{attribute: (what it needs, what the training spec `spec` has)} of the requirements `spec` does not meet;
        {} if it fits."""
        return {key: (value, getattr(spec, key, None)) for key, value in cls.requires.items()
                if getattr(spec, key, None) != value}

    def __init__(self, context: EvalContext, *, name: str = "eval", split: str = "eval",
                 data: Mapping[str, Any] | None = None, batches: int = 0, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            raise ConfigError(f"config.evals.{name}: unknown keys {sorted(unknown)} for this evaluator.")
        self.context, self.name, self.split, self.batches = context, name, split, int(batches)
        self.data = dict(data or {})
        self.config = with_data(context.config, self.data)  # the run's, or with this evaluator's data
        self.spec = context.spec  # what the task trains on: its batches, its masks
        self.readout = context.readout  # how its outputs read
        self.settings = {**self.options, **options}
        self.outputs: dict[str, np.ndarray] = {}  # the last run's per-example outputs (padded evals only)
        self.result: dict[str, float] = {}  # the last run's metrics, unprefixed
        self._step = None

    @classmethod
    def problems(cls, config: ml_collections.ConfigDict, options: Mapping[str, Any], where: str) -> list[str]:
        """Mistakes in this evaluator's options (`where` names its entry, e.g. "config.evals.top1")."""
        return []

    def setting(self, key: str, default: Any) -> Any:
        """The option `key`, or `default` (from the run's config) where the entry leaves it unset."""
        value = self.settings.get(key)
        return default if value is None else value

    @property
    def source(self):
        """The split it scores."""
        return self.context.source(self.split, self.data)

    def check(self) -> None:
        """Makes the sources it reads and checks the batch against them (start-up: fails before compiling)."""
        mesh = self.context.setup.mesh
        raise_problems(pipeline.batch_size_problems(self.config, jax.process_count(), mesh.size,
                                                    {"eval": len(self.source)}, pads_eval=self.spec.pads_eval))

    # ---- what subclasses say ----
    @abc.abstractmethod
    def batch_outputs(self, model, batch: dict) -> dict[str, jax.Array]:
        """Per-example outputs of one normalised batch (on the devices), its "valid" and "decode_failures" rows
        passed on."""

    @abc.abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Whole-split metrics ("loss" first, names without a prefix) from the gathered outputs, padding removed."""

    def figures(self, params, step: int) -> list[str]:
        """Files written at the end of training into the workdir from the last run (called on every process: what
        runs on the devices runs on all of them, process 0 writes); returns the paths written."""
        return []

    def figure(self, path: str, title: str) -> bool:
        """The figure of an evaluation (`python -m vidjax.evaluate --out`) at `path`; False: this one has none."""
        return False

    # ---- what they share ----
    def file_name(self, stem: str, ext: str) -> str:
        """A file of this evaluator in the workdir: `stem.ext` for the default one ("eval"), else `stem_NAME.ext`."""
        return f"{stem}.{ext}" if self.name == "eval" else f"{stem}_{self.name}.{ext}"

    @property
    def step(self):
        """`batch_outputs`, compiled once for the run's mesh."""
        if self._step is None:
            self._step = self.context.step(self.config, self.batch_outputs)
        return self._step

    def gather(self, params, source, max_batches: int) -> dict[str, np.ndarray]:
        """The outputs over `source` read as an eval split (the first `max_batches` batches; 0: all), concatenated,
        with the padding rows that fill the last global batch removed."""
        ds = pipeline.make_dataset(self.config, "eval", source,
                                   self.spec.input_spec(self.config, self.context.setup.abstract_model),
                                   process_index=jax.process_index(), process_count=jax.process_count())
        batch_sh = sharding.batch_sharding(self.context.setup.mesh)
        gathered: dict[str, list] = {}
        count = 0
        for i, local in enumerate(ds):
            if max_batches and i >= max_batches:
                break
            out = jax.device_get(self.step(params, sharding.global_batch(local, batch_sh)))
            for key, value in out.items():
                gathered.setdefault(key, []).append(np.asarray(value))
            count += 1
        if count == 0:
            raise ConfigError(f"The eval split has fewer examples than one batch of {self.config.batch_size}; "
                              f"lower config.batch_size or enlarge the eval split.")
        arrays = {key: np.concatenate([np.atleast_1d(v) for v in values]) for key, values in gathered.items()}
        if "valid" in arrays:  # the padding that fills the last global batch
            valid = arrays.pop("valid").astype(bool)
            arrays = {key: value[valid] for key, value in arrays.items()}
        return arrays

    def run(self, params) -> Iterator[tuple[str, float]]:
        """(name, value) of each metric over the split (or its first `batches` batches), then always
        decode_failures: videos that did not decode and were replaced by others (their scores stand in the metrics,
        so a count above 0 says the split was not scored exactly as listed)."""
        arrays = self.gather(params, self.source, self.batches)
        failures = int(arrays["decode_failures"].sum()) if "decode_failures" in arrays else 0
        self.result = {key: float(value) for key, value in self.metrics(arrays).items()}
        # Per-example outputs, for figures (a trimmed eval's losses are per batch).
        self.outputs = arrays if self.spec.pads_eval else {}
        yield from self.result.items()
        yield "decode_failures", failures


class BankEvaluator(Evaluator):
    """An evaluator that classifies the scored split's clips against the outputs of a bank split, gathered whole
    before each run (`bank`): a k-NN's neighbours, a probe's training clips. Subclasses keep "bank" among their
    options (default "train") and read `self.bank`."""

    bank_role = "the bank"  # what the bank is to it, for its messages ("the neighbours", "the probe's training clips")

    @classmethod
    def problems(cls, config: ml_collections.ConfigDict, options: Mapping[str, Any], where: str) -> list[str]:
        if options.get("bank", "train") not in SPLITS:
            return [f"{where}.bank={options['bank']!r}: {cls.bank_role} come from one of {', '.join(SPLITS)}."]
        return []

    def check(self) -> None:
        super().check()
        self.context.source(self.settings["bank"], self.data)

    def run(self, params) -> Iterator[tuple[str, float]]:
        """As `Evaluator.run`, the bank's outputs gathered first (all of its split) into `self.bank`."""
        self.bank = self.gather(params, self.context.source(self.settings["bank"], self.data), 0)
        yield from super().run(params)

    def num_classes(self, outputs: dict[str, np.ndarray], what: str) -> int:
        """The classes of the scored and bank splits' labels (at least config.data.num_classes); a ValueError naming
        `what` (the evaluation) where either split has no `label` column."""
        if "label" not in outputs or "label" not in self.bank:
            raise ValueError(f"{what} is a classifier: it needs labelled {self.split!r} and "
                             f"{self.settings['bank']!r} splits (their `label` column), {self.bank_role} from the "
                             f"{self.settings['bank']!r} split.")
        return int(max(self.config.data.num_classes, self.bank["label"].max() + 1, outputs["label"].max() + 1))
