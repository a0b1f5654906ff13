"""Tasks, looked up by name like models: what a run trains the model *for* (masked reconstruction, classes, multi-hot
labels, regressed values, captions, self-distillation against a teacher).

A task is three small contracts, each read only by its own readers, so that none of them sees (or can lean on)
what the others need:
  - its training spec (`training_of(name)`, a `vidjax.tasks.base.TrainingSpec`): the trainer, the evaluators and
    the input path's callers (the loss, the input spec with its masks, the default evaluator, checkpoint metadata,
    an optional EMA-teacher part);
  - its readout (`readout_of(name)`, a `vidjax.tasks.readout.Readout`): predict, extract, probe and the evaluators
    (what the outputs mean and how a prediction reads);
  - its presentation (`presentation_of(name)`, a `vidjax.tasks.presentation.Presentation`): the demo, export, push
    and the commands' messages (what is shown and shared).
Each task module defines the three as TRAINING, READOUT and PRESENTATION; nothing hands out all three at once. How
a run is measured (per-batch eval outputs, whole-split metrics, figures) is in `vidjax.evaluators`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from vidjax.config_lib import ConfigError
from vidjax.tasks.base import TrainingSpec
from vidjax.tasks.presentation import Presentation
from vidjax.tasks.readout import Readout

_NOT_TASKS = {"base", "readout", "presentation", "predictions"}
# Listed in this order, then the others.
_FIRST = ("pretrain", "classification", "multilabel", "regression", "captioning", "svt", "vjepa2", "contrastive")


def available() -> list[str]:
    """Names of the task modules found in this package (`__path__`)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_TASKS)
    return sorted(names, key=lambda name: (_FIRST.index(name) if name in _FIRST else len(_FIRST), name))


def _module(name: str) -> ModuleType:
    """The module of the task `name` (config.task), with an error listing the known ones for a typo."""
    if name not in available():
        raise ConfigError(f"config.task must be one of {', '.join(available())}; got {name!r}.")
    return importlib.import_module(f"vidjax.tasks.{name}")


def training_of(name: str) -> TrainingSpec:
    """How the task `name` trains: what the trainer, the evaluators and the input path's callers read."""
    return _module(name).TRAINING


def readout_of(name: str) -> Readout:
    """How `predict`, `extract`, `probe` and the evaluators read a model's outputs for the task `name`."""
    return _module(name).READOUT


def presentation_of(name: str) -> Presentation:
    """How the demo, export, push and the commands' messages show results of the task `name`."""
    return _module(name).PRESENTATION


def checkpoint_kind(name: str | None) -> str:
    """How messages name a checkpoint of the task `name` that has no head to predict with (`Presentation
    .checkpoint_kind`, e.g. "a pre-training"); one of no task (a converted backbone), or whose task says nothing, is a
    backbone's."""
    kind = presentation_of(name).checkpoint_kind if name in available() else ""
    return kind or "a backbone (head 'none')"


def target_keys() -> dict[str, str]:
    """Task name -> the batch key of its targets (`Readout.target_key`), for the tasks that have targets."""
    return {name: readout_of(name).target_key for name in available() if readout_of(name).target_key}


def upgrade_stored_config(config):
    """A training config as a checkpoint of an earlier vidjax stored it, in today's terms, changed in place and
    returned: its config.data.synthetic_task held a task's name before the embedded dataset's variants were named by
    the batch key their clips carry; that name becomes the variant the task trains on (`TrainingSpec.synthetic_task`;
    a task without one, e.g. pre-training, took the classification clips: "label")."""
    data = config.get("data")
    stored = data.get("synthetic_task") if data is not None else None
    if stored in available():
        data.synthetic_task = training_of(stored).synthetic_task or "label"
    return config
