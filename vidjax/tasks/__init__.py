"""Tasks, looked up by name like models: `get_task("classification")` is `vidjax.tasks.classification.TASK`.

A task is what a run trains the model *for*: masked reconstruction, classes, multi-hot labels, regressed values,
captions.
Each module defines one `vidjax.tasks.base.Task` subclass and its instance `TASK`; the trainer, `evaluate`,
`predict` and `probe` call that contract (what a batch must carry, the loss, per-batch eval outputs, whole-split
metrics, checkpoint metadata, figures and how predictions read) instead of branching on `config.task`.
"""

from __future__ import annotations

import importlib
import pkgutil

from vidjax.config_lib import ConfigError
from vidjax.tasks.base import Task

_NOT_TASKS = {"base"}
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


def target_keys() -> dict[str, str]:
    """Task name -> the batch key of its targets, for the tasks that have targets."""
    return {name: get_task(name).target_key for name in available() if get_task(name).target_key}
