"""A task's readout: how `predict`, `extract`, `probe` and the evaluators read a model's outputs for one task.

The readout is the part of a task inference needs, apart from how the task trains (its training spec,
`vidjax.tasks.base`) and from how its results are shown (its presentation, `vidjax.tasks.presentation`): what one
model output is called (`output_kind`: "class N", "target N", a caption), the batch key of the targets its outputs
are scored against (`target_key`: what a features file carries for a probe), what the head's raw outputs mean
(`scores`: probabilities, per-class scores or values), how a video's averaged scores read as a prediction
(`describe`, `format_prediction`, and for a head `score_name`, `scores_name`, `ranked`), whether `predict` and
`probe` take the task at all (`predicts`, `probes`), whether its head can be read in another Kinetics release's
classes (`kinetics_label_spaces`), how a probe fits it (`probe_targets`, `probe_loss`, `probe_standardises_targets`),
a head's metrics (`task_metrics`) and, for a captioner, how its generated token ids read (`decode_captions`). Each task
module's READOUT is one; `vidjax.tasks.readout_of(name)` gives it, and the evaluators are handed the run's
(`vidjax.evaluators.base.EvalContext`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np


class Readout:
    """How inference reads a checkpoint of one task. The defaults refuse what a task without a head cannot do;
    subclasses set the class attributes and override what they read."""

    name: str = ""
    output_kind = "class"  # what one model output is called in predictions ("class N" / "target N" / "caption")
    target_key: str | None = None  # the batch key of the targets its outputs are scored against; None: none
    predicts = False  # `python -m vidjax.predict` reads a checkpoint of it (scores a head, or captions)
    probes = False  # `python -m vidjax.probe` fits it on extracted features
    # One class per video from the head's outputs, which can be a Kinetics label space (vidjax.data.kinetics):
    # `predict --label_space` and config.eval_label_space read a K710 head in K400 / K600 / K700's classes.
    kinetics_label_spaces = False
    probe_standardises_targets = False  # a probe fits standardised targets and maps its outputs back

    def scores(self, logits: jax.Array) -> jax.Array:
        """What the head's outputs mean: probabilities, per-class scores or values (views average these)."""
        raise NotImplementedError(f"task {self.name!r} has no head to score")

    def describe(self, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
        """A JSON-able prediction from a video's averaged `scores`."""
        raise NotImplementedError(f"task {self.name!r} makes no predictions from scores")

    def format_prediction(self, prediction: dict, indent: str = "  ") -> list[str]:
        """The text form of `describe`'s output, one line per label or value."""
        raise NotImplementedError(f"task {self.name!r} makes no predictions from scores")

    def decode_captions(self, config: ml_collections.ConfigDict, tokens: np.ndarray) -> list[str]:
        """The captions of generated token ids (N, L), each read up to its end token: what the captioning
        evaluator scores."""
        raise NotImplementedError(f"task {self.name!r} writes no captions")

    def probe_targets(self, targets: np.ndarray) -> np.ndarray:
        """Targets as a probe trains on them."""
        return np.asarray(targets, np.float32)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """A probe's training loss on its raw outputs."""
        raise NotImplementedError(f"task {self.name!r} cannot be probed")


class HeadReadout(Readout):
    """The readout of a task read from a linear head (classification, multilabel, regression): every output a label
    with a score, ranked best first."""

    predicts = True
    probes = True
    score_name = "score"  # one label's value in `describe`
    scores_name = "scores"  # the whole vector's

    def task_metrics(self, scores: np.ndarray, targets: np.ndarray, target_names: Sequence[str] | None
                     ) -> dict[str, float]:
        """The task's metrics of whole-split scores against their targets (`vidjax.metrics`): what its evaluator
        and a probe report."""
        raise NotImplementedError(f"task {self.name!r}: its readout must say its metrics (task_metrics)")

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


def aligned_lines(pairs: list[tuple[str, str]], indent: str) -> list[str]:
    """`name  value` lines with the names padded to one width."""
    width = max((len(name) for name, _ in pairs), default=0)
    return [f"{indent}{name:<{width}}  {value}" for name, value in pairs]
