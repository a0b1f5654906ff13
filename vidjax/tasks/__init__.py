"""Tasks, looked up by name like models: `get_task("classification")` is `vidjax.tasks.classification.TASK`.

A task is what a run trains the model *for*: masked reconstruction, classes, multi-hot labels, regressed values,
captions.
Each module defines one `vidjax.tasks.base.Task` subclass and its instance `TASK`; the trainer, `evaluate`,
`predict` and `probe` call that contract (what a batch must carry, the loss, checkpoint metadata, the evaluator that
measures it by default, and how predictions read: `readout_of`) instead of branching on `config.task`. How a run
is measured (per-batch eval outputs, whole-split metrics, figures) is in `vidjax.evaluators`.
"""

from __future__ import annotations

import importlib
import pkgutil

from vidjax.config_lib import ConfigError
from vidjax.tasks.base import Task
from vidjax.tasks.readout import Readout

_NOT_TASKS = {"base", "readout"}
# Listed in this order, then the others.
_FIRST = ("pretrain", "classification", "multilabel", "regression", "captioning", "svt")


def available() -> list[str]:
    """Names of the task modules shipped with vidjax."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_TASKS)
    return sorted(names, key=lambda name: (_FIRST.index(name) if name in _FIRST else len(_FIRST), name))


def get_task(name: str) -> Task:
    """The task called `name` (config.task), with an error listing the known ones for a typo."""
    if name not in available():
        raise ConfigError(f"config.task must be one of {', '.join(available())}; got {name!r}.")
    return importlib.import_module(f"vidjax.tasks.{name}").TASK


def find_task(name: str) -> Task | None:
    """The task called `name`, or None when there is none (config problems report the unknown name)."""
    return get_task(name) if name in available() else None


def checkpoint_kind(name: str | None) -> str:
    """How messages name a checkpoint of the task `name` that has no head to predict with (`Task.checkpoint_kind`,
    e.g. "a pre-training"); one of no task (a converted backbone), or whose task says nothing, is a backbone's."""
    task = find_task(name or "")
    return (task.checkpoint_kind if task is not None else "") or "a backbone (head 'none')"


def readout_of(name: str) -> Readout:
    """How `predict`, `probe` and the demo read a checkpoint of the task `name` (`vidjax.tasks.readout`)."""
    return get_task(name)


def target_keys() -> dict[str, str]:
    """Task name -> the batch key of its targets, for the tasks that have targets."""
    return {name: get_task(name).target_key for name in available() if get_task(name).target_key}


def upgrade_stored_config(config):
    """A training config as a checkpoint of an earlier vidjax stored it, in today's terms, changed in place and
    returned: its config.data.synthetic_task held a task's name before the embedded dataset's variants were named by
    the batch key their clips carry; that name becomes the variant the task trains on (`Task.synthetic_task`; a task
    without one, e.g. pre-training, took the classification clips: "label")."""
    data = config.get("data")
    task = find_task(data.get("synthetic_task") or "") if data is not None else None
    if task is not None:
        data.synthetic_task = task.synthetic_task or "label"
    return config
