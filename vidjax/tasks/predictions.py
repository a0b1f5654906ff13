r"""A loaded checkpoint's predictions read as its task reads them (`tasks.readout_of`, `tasks.presentation_of`): what
`python -m vidjax.predict`, `vidjax.zeroshot`, `vidjax.demo` and `vidjax.export` share above the checkpoints.

    runner = pretrained.BatchRunner(model, predictions.scores_fn(model.task), batch_size=8)
    entry = predictions.prediction_entry(model, runner, "clip.mp4", window_s=4)   # what predict --json writes
    print("\n".join(predictions.format_prediction(model.task, entry["aggregate"])))

The names of a head's outputs (`output_names`), the per-clip scores function a `BatchRunner` runs (`scores_fn`), a
prediction's JSON form and its text (`describe`, `format_prediction`), one video's entry (`prediction_entry`, over
`pretrained.windows.predict_video`), and what a reader of an exported head applies to its logits
(`score_function`). Zero-shot labels are read as a classifier's (`ZERO_SHOT_READOUT`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vidjax import pretrained, tasks
from vidjax.pretrained import windows

# Zero-shot scores are read as a classifier's: a probability per label, ranked (the classification readout).
ZERO_SHOT_READOUT = "classification"


def output_names(model: pretrained.Pretrained) -> list[str]:
    """Names of the model's outputs: the checkpoint's class or target names, else "class N" / "target N"."""
    n = int(model.config.num_classes)
    kind = tasks.readout_of(model.task).output_kind
    names = model.target_names if kind == "target" else model.class_names
    if names and len(names) == n:
        return list(names)
    return [f"{kind} {i}" for i in range(n)]


@dataclasses.dataclass(frozen=True)
class _Scores:
    task: str
    columns: tuple[int, ...] | None = None

    def __call__(self, model, video):
        logits = model(video)["logits"]
        if self.columns is not None:
            logits = logits[..., np.asarray(self.columns)]
        return tasks.readout_of(self.task).scores(logits)


def scores_fn(task: str, columns=None) -> _Scores:
    """Per-clip scores from the model (`Readout.scores`): class probabilities, per-class sigmoid scores, or the
    regressed values; with `columns`, of those logits only (in that order), e.g. `kinetics.label_map("k710",
    "k400")`. A frozen dataclass, so every runner of a task (and columns) shares one compilation."""
    return _Scores(task, None if columns is None else tuple(int(c) for c in columns))


def score_function(task: str | None) -> str:
    """What a reader of an exported head applies to its logits (`Presentation.score_function`: "softmax",
    "sigmoid" or "identity"); a checkpoint of no known task (a converted backbone) gives the logits themselves."""
    return tasks.presentation_of(task).score_function if task in tasks.available() else "identity"


def describe(task: str, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
    """A JSON-able prediction from averaged scores (C,): the full vector plus what the task reports
    (`Readout.describe`)."""
    return tasks.readout_of(task).describe(scores, names, top_k, threshold)


def format_prediction(task: str, prediction: dict, indent: str = "  ") -> list[str]:
    """The text form of `describe`'s output: one `label  value` line per label, names aligned, best first."""
    return tasks.readout_of(task).format_prediction(prediction, indent)


def prediction_entry(model: pretrained.Pretrained, runner, path: str, *,
                     names: list[str] | None = None, top_k: int = 5, threshold: float = 0.5, num_clips: int = 1,
                     num_crops: int = 1, window_s: float = 0.0, stride_s: float = 0.0,
                     sampling_rate: int | None = None, task: str | None = None) -> dict:
    """One video's predictions by a checkpoint with a head (or zero-shot labels: `runner` a
    `pretrained.zero_shot.label_scores`, `task` `ZERO_SHOT_READOUT`, `names` the labels), as predict's `--json`
    writes them: {"path", "error": None, "aggregate": `describe` of the mean scores} plus, with `window_s`, "windows":
    [{"start_s", "end_s", "prediction"}]. `names` default to `output_names(model)`, `task` to the model's. Raises
    `decode.VideoDecodeError` as `windows.predict_video` does."""
    task, names = task or model.task, names or output_names(model)
    scores, per_window = windows.predict_video(model, runner, path, num_clips=num_clips, num_crops=num_crops,
                                               window_s=window_s, stride_s=stride_s, sampling_rate=sampling_rate)
    entry = {"path": path, "error": None, "aggregate": describe(task, scores, names, top_k, threshold)}
    if window_s:
        entry["windows"] = [{"start_s": start, "end_s": end,
                             "prediction": describe(task, window_scores, names, top_k, threshold)}
                            for start, end, window_scores in per_window]
    return entry
