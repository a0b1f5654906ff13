"""A task's presentation: how its results are shown and shared, read by the demo (`vidjax.demo`), export
(`vidjax.export`), push (`vidjax.push`) and the commands' messages.

The presentation is the part of a task that neither trains it (its training spec, `vidjax.tasks.base`) nor reads
its outputs (its readout, `vidjax.tasks.readout`): what the demo's page leads with and needs, how it shows one
prediction of the readout's (`shown_scores`, a timeline's `timeline_columns` and `timeline_cells`), how messages
name a checkpoint without a head, what a model card says (`purpose`, `hub_pipeline_tag`) and what an export declares
(`score_function`, `hf_problem_type`). Each task module's PRESENTATION is one (a frozen dataclass: its fields are
the contract); `vidjax.tasks.presentation_of(name)` gives it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Presentation:
    """How the results of one task are shown and shared; the defaults are those of a task without a head."""

    name: str
    # What the demo's page leads with for a checkpoint of it: "scores" (its head's, as the readout's `describe` reads
    # them), "reconstruction" (a masked reconstruction of the middle clip) or "caption"; None: nothing (the demo
    # refuses it).
    demo_output: str | None = None
    # The config.model.head a checkpoint needs for `demo_output` (a pre-training's decoder); None: any.
    demo_head: str | None = None
    # What the demo's page says it shows for a video, with {top_k} for the number of labels it ranks.
    description: str = ""
    # The embedded dataset's variant the demo's example clips come from (`vidjax.data.synthetic.VARIANTS`), carrying
    # the targets its predictions read as; None: the class-labelled clips.
    examples: str | None = None
    ranks_labels: bool = True  # the demo charts a result as labels ranked by score; False: a table of each value
    checkpoint_kind: str = ""  # how messages name a checkpoint of it that has no head to predict with
    purpose: str = ""  # what a model trained for it does, as a model card says ("video classification")
    hub_pipeline_tag: str | None = None  # the Hugging Face Hub `pipeline_tag` of a pushed checkpoint of it
    hf_problem_type: str | None = None  # transformers' config.json `problem_type` of its head (`export --to_hf`)
    # What the readout's `scores` applies to the logits, named for servers: "softmax", "sigmoid" or "identity".
    score_function: str = "identity"

    def demo_description(self, top_k: int) -> str:
        """What the demo's page says it shows for a video, e.g. "the top 5 classes and their probabilities"."""
        return self.description.format(top_k=top_k)

    def shown_scores(self, prediction: dict) -> dict[str, float]:
        """label -> value that the demo shows of one prediction (the readout's `describe`), best first; {} for a
        task without a head."""
        return {}

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        """The demo timeline's columns for one window's prediction, after its start and end (`names`: the outputs';
        `threshold`: the multi-label presence score)."""
        return []

    def timeline_cells(self, prediction: dict) -> list:
        """One window's cells under `timeline_columns`, from its prediction."""
        return []


@dataclasses.dataclass(frozen=True)
class HeadPresentation(Presentation):
    """The presentation of a task read from a linear head: the top label and its score; subclasses say more."""

    demo_output: str | None = "scores"
    demo_head: str | None = "classification"
    score_name: str = "score"  # one label's value in a prediction (the readout's `HeadReadout.score_name`)

    def shown_scores(self, prediction: dict) -> dict[str, float]:
        return {row["label"]: row[self.score_name] for row in prediction["top_k"]}

    def timeline_columns(self, names: list[str], threshold: float) -> list[str]:
        return ["top label", "score"]

    def timeline_cells(self, prediction: dict) -> list:
        best, score = next(iter(self.shown_scores(prediction).items()))
        return [best, round(score, 4)]
