"""Evaluators: what a run measures, beside the tasks that say how it trains (big_vision's `evaluators/`).

Each module here (but `base`, `head` and `probes`) is one evaluator type with its `Evaluator` class (`base.Evaluator`:
`Evaluator(context, **entry)`, `.run(params)` yields (metric, value)):
  classification  loss, top1, top5, macro_f1; the confusion matrix (confusion_matrix.png)
  multilabel      loss, mAP
  regression      loss, ccc_<target>, ccc_mean, mse
  captioning      loss, bleu1..4, rougeL, cider, bleu4_constant, captions_truncated; the captions (eval_captions.txt)
  knn             SVT's weighted k-NN on the backbone's features: knn_top1, knn_top5 (and of the initial weights)
  attentive       V-JEPA 2's attentive probe on any encoder's frozen tokens: attentive_top1, attentive_top5 (and of
                  the initial weights)
  linear          a linear probe on any encoder's frozen tokens, mean-pooled: linear_top1, linear_top5 (and of the
                  initial weights)
  reconstruction  pre-training's masked-reconstruction loss; the reconstruction figure (reconstruction.png)
  retrieval       video-text retrieval of a video-text model (head "clip"): recall_at_1/5/10 and median_rank of
                  captions against the split's videos, v2t_ the other way, loss, temperature

config.evals names a run's evaluations, each an entry `config.evals.NAME = dict(...)` of these keys (all optional):
  type     the evaluator; default the task's (`TrainingSpec.evaluator`)
  every    steps between its evaluations, 0: only at the end; every evaluator also runs at the last step.
           Default config.eval_every
  split    the split it scores, read as an eval split (centre views, no augmentation): "eval" (default) or "train"
  data     config.data keys that differ for it, e.g. dict(eval_csv="/data/other.csv") for a second eval set, or
           dict(test_num_clips=5, test_num_crops=3) for the multi-view test beside the single-view one
  batches  only the first this many global batches of the split, 0: all of it. Default config.eval_batches
  prefix   what its metric names start with; default "NAME_". Its rows in metrics.jsonl have split NAME
           (TensorBoard and W&B: NAME/<prefix><metric>)
  init     also score the initial weights of a fresh run, once, logged at step 0 as <prefix><metric>_init and
           repeated in its later rows; default the type's (knn, attentive, linear: True)
and the type's own options (its module says which: classification's label_space and figure, knn's k, temperature and
bank, attentive's bank and the probe's heads, depth, epochs, lr, weight_decay, batch_size and seed, linear's the
same but heads and depth, captioning's num_beams, length_penalty and samples, reconstruction's figure). Every
evaluator also reports <prefix>decode_failures, the videos of its split that did not decode.

Without config.evals a run has one evaluator, "eval", of the task's type, at config.eval_every over
config.eval_batches: metrics eval_<metric> in rows of split "eval", as before evaluators were split from the tasks.
`python -m vidjax.evaluate` runs the same evaluators on a checkpoint.

Whoever runs them hands them the run task's training spec and readout (`EvalContext.spec`, `.readout`; here, the spec
to `config_problems`): no module of this package imports a task module.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import ml_collections

from vidjax.evaluators.base import SPLITS, EvalContext, Evaluator, with_data

__all__ = ["EvalContext", "Evaluator", "Scheduled", "available", "config_problems", "entries", "from_config", "get"]

_NOT_EVALUATORS = {"base", "head", "probes"}
COMMON_KEYS = ("type", "every", "split", "data", "batches", "prefix", "init")
DEFAULT_NAME = "eval"


def available() -> list[str]:
    """The evaluator types shipped with vidjax (modules of this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_EVALUATORS)


def get(kind: str) -> type[Evaluator]:
    """The `Evaluator` class of type `kind`."""
    return importlib.import_module(f"vidjax.evaluators.{kind}").Evaluator


def entries(config: ml_collections.ConfigDict) -> dict[str, dict]:
    """name -> entry of the run's evaluations: config.evals, or the task's one default evaluator "eval"."""
    evals = config.get("evals")
    if not evals:
        return {DEFAULT_NAME: {}}
    return {name: (entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry)
            for name, entry in evals.items()}


def _settings(config: ml_collections.ConfigDict, spec: Any, name: str, entry: Mapping) -> dict:
    """The entry with its common keys' defaults filled in (the type's options left as given); the type's default is
    the evaluator of the task whose training spec is `spec`."""
    return {"type": spec.evaluator, "every": config.eval_every, "split": "eval", "data": None,
            "batches": config.eval_batches, "prefix": f"{name}_", "init": None, **entry}


def config_problems(config: ml_collections.ConfigDict, spec: Any) -> list[str]:
    """Mistakes in config.evals (or in the settings of the task's default evaluator) of a run whose task's training
    spec is `spec`, each naming its key."""
    evals = config.get("evals")
    if evals is not None and not isinstance(evals, Mapping | ml_collections.ConfigDict):
        return [f"config.evals must be a dict of name -> evaluator entry, not {type(evals).__name__}."]
    problems, prefixes = [], {}
    for name, entry in entries(config).items():
        where = f"config.evals.{name}"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a dict (type, every, split, data, batches, prefix, init and the "
                            f"type's options), not {entry!r}.")
            continue
        s = _settings(config, spec, name, entry)
        if name == "train":
            problems.append(f"{where}: 'train' names the training rows of metrics.jsonl; name the evaluation "
                            f"otherwise.")
        if not isinstance(s["prefix"], str) or s["prefix"] in prefixes:
            problems.append(f"{where}.prefix={s['prefix']!r} must be a string no other evaluation uses"
                            + (f" (config.evals.{prefixes[s['prefix']]} has it)." if s["prefix"] in prefixes
                               else "."))
        else:
            prefixes[s["prefix"]] = name
        if s["type"] not in available():
            problems.append(f"{where}.type={s['type']!r}; choose one of {', '.join(available())}.")
            continue
        cls = get(s["type"])
        lacks = cls.lacks(spec)
        if lacks:
            fits = [kind for kind in available() if not get(kind).lacks(spec)]
            needs = " and ".join(f"{key}={need!r} (config.task={config.task!r} has {has!r})"
                                 for key, (need, has) in lacks.items())
            problems.append(f"{where}.type={s['type']!r} measures a task whose {needs}; its evaluators are "
                            f"{', '.join(fits)}.")
            continue
        unknown = sorted(set(entry) - set(COMMON_KEYS) - set(cls.options))
        if unknown:
            problems.append(f"{where} has unknown keys {unknown}; an entry takes {', '.join(COMMON_KEYS)}"
                            + (f" and {s['type']}'s {', '.join(cls.options)}" if cls.options else "") + ".")
        for key in ("every", "batches"):
            if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 0:
                problems.append(f"{where}.{key}={s[key]!r} must be a whole number >= 0"
                                + (" (0: only at the end)." if key == "every" else " (0: the whole split)."))
        if s["split"] not in SPLITS:
            problems.append(f"{where}.split={s['split']!r}; choose one of {', '.join(SPLITS)}.")
        if s["data"] is not None:
            try:
                with_data(config, dict(s["data"]))
            except (ValueError, TypeError, AttributeError, KeyError) as err:
                problems.append(f"{where}.data: {err} (give config.data keys and values of their types).")
        options = {key: entry[key] for key in cls.options if key in entry}
        problems += cls.problems(config, options, where)
    return problems


@dataclasses.dataclass
class Scheduled:
    """One evaluation of a run: its evaluator, when it runs and how its metrics are named."""

    name: str  # its entry's name, the `split` of its rows in metrics.jsonl
    evaluator: Evaluator
    every: int  # steps between runs (0: only at the end); it always runs at the last step
    prefix: str
    init: bool  # also scores the initial weights of a fresh run
    init_result: dict = dataclasses.field(default_factory=dict)  # "<prefix><metric>_init" of the initial weights
    last: dict = dataclasses.field(default_factory=dict)  # its last run's metrics, as written

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.every and step % self.every == 0) or step == total_steps

    def run(self, params) -> dict[str, float]:
        """The evaluator's metrics, prefixed, then those of the initial weights (`init`)."""
        self.last = {self.prefix + key: value for key, value in self.evaluator.run(params)}
        self.last.update(self.init_result)
        return self.last

    def run_init(self, params) -> dict[str, float]:
        """The metrics of the initial weights, "<prefix><metric>_init" (decode failures left out)."""
        failures = self.prefix + "decode_failures"
        self.init_result = {f"{key}_init": value for key, value in self.run(params).items() if key != failures}
        return self.init_result


def from_config(context: EvalContext) -> list[Scheduled]:
    """The evaluations context.config asks for (`entries`), built, their sources made and checked."""
    scheduled = []
    for name, entry in entries(context.config).items():
        s = _settings(context.config, context.spec, name, entry)
        cls = get(s["type"])
        options = {key: s[key] for key in cls.options if key in s}
        evaluator = cls(context, name=name, split=s["split"], data=s["data"], batches=s["batches"], **options)
        evaluator.check()
        scheduled.append(Scheduled(name, evaluator, int(s["every"]), s["prefix"],
                                   cls.evaluates_init if s["init"] is None else bool(s["init"])))
    return scheduled
