"""What `predict`, `probe` and the demo read from a checkpoint of a task: its readout.

The readout is the part of the task contract inference needs, apart from how the task trains (`Task`'s loss,
batch fields and device hooks) and from how a run measures it (`vidjax.evaluators`): what one model output is called
(`output_kind`: "class N", "target N", a caption), what the head's raw outputs mean (`scores`: probabilities,
per-class scores or values), how a video's averaged scores read as a prediction (`describe`, `format_prediction`,
`score_name`), whether `predict` and `probe` take the task at all (`predicts`, `probes`), whether its head can be
read in another Kinetics release's classes (`kinetics_label_spaces`), and how a probe fits it (`probe_targets`,
`probe_loss`, `probe_standardises_targets`) and scores it (`task_metrics`, head tasks).

Every `vidjax.tasks.base.Task` implements it (its defaults refuse what a task without a head cannot do);
`vidjax.tasks.readout_of(name)` gives the readout of a task name, typed as this protocol so that a reader of
`predict` or `probe` sees the few members they may use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class Readout(Protocol):
    """How inference reads a checkpoint of one task (members of `vidjax.tasks.base.Task`)."""

    name: str
    output_kind: str  # what one model output is called in predictions ("class N" / "target N" / a caption)
    predicts: bool  # `python -m vidjax.predict` reads a checkpoint of it (scores a head, or captions)
    probes: bool  # `python -m vidjax.probe` fits it on extracted features
    kinetics_label_spaces: bool  # its head can be read in K400 / K600 / K700's classes (`predict --label_space`)
    probe_standardises_targets: bool  # a probe fits standardised targets and maps its outputs back

    def scores(self, logits: jax.Array) -> jax.Array:
        """What the head's outputs mean: probabilities, per-class scores or values (views average these)."""
        ...

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        """A JSON-able prediction from a video's averaged `scores`."""
        ...

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        """The text form of `describe`'s output, one line per label or value."""
        ...

    def probe_targets(self, targets: np.ndarray) -> np.ndarray:
        """Targets as a probe trains on them."""
        ...

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """A probe's training loss on its raw outputs."""
        ...


@runtime_checkable
class HeadReadout(Readout, Protocol):
    """The readout of a task read from a linear head (classification, multilabel, regression)."""

    score_name: str  # one label's value in `describe`

    def task_metrics(self, scores: np.ndarray, targets: np.ndarray, target_names: Sequence[str] | None
                     ) -> dict[str, float]:
        """The task's metrics of whole-split scores against their targets (`vidjax.metrics`): what its evaluator
        and a probe report."""
        ...
