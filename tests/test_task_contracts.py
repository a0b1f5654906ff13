"""A task is three contracts, each read only by its own readers (issue 46; `vidjax.tasks`): the training spec (the
trainer, the evaluators, the input path's callers), the readout (predict, extract, probe, the evaluators) and the
presentation (the demo, export, push).

The readers' sources are read with `ast` (not imported): the demo, export and push never look up a training spec,
the trainer never a presentation (it looks up the run's training spec and readout, and hands both to the evaluators,
which look up none), predict / extract / probe only readouts; no module outside vidjax/tasks/ reaches
for a task module's TRAINING, READOUT or PRESENTATION past the lookups. At run time every task's three objects are of
the three types and carry only their own members; the masks of pre-training follow one line from the config to the
pipeline and the model. And the add-a-task recipe of docs/architecture.md works as written: its example module,
put among the tasks, trains through the trainer.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import sys

import jax
import numpy as np
import pytest
from helpers import abstract_model, tiny_family_config, train_losses

import vidjax.tasks
from vidjax import tasks, train
from vidjax.config_lib import ConfigError
from vidjax.patches import MaskSpec
from vidjax.tasks import base, presentation, readout

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vidjax"
LOOKUPS = {"training_of", "readout_of", "presentation_of"}
CONTRACT_MODULES = {"training_of": "vidjax.tasks.base", "readout_of": "vidjax.tasks.readout",
                    "presentation_of": "vidjax.tasks.presentation"}
# reader -> the lookups it may make (the others are another reader's).
READERS = {
    "vidjax/train/__init__.py": {"training_of", "readout_of"},  # readout_of: the evaluators' (`eval_context`)
    "vidjax/train/aot.py": {"training_of"},  # the trainer's own step, compiled for a TPU slice
    "vidjax/commands/evaluate.py": {"training_of"},  # its checkpoint's data, as the trainer settles it
    "vidjax/commands/data_bench.py": {"training_of"},
    # A loaded checkpoint's outputs read by its task (`predict`, `zeroshot`, the demo, export share it).
    "vidjax/tasks/predictions.py": {"readout_of", "presentation_of"},
    "vidjax/commands/predict.py": {"readout_of"},
    "vidjax/commands/extract.py": {"readout_of"},
    "vidjax/commands/probe.py": {"readout_of"},
    "vidjax/commands/demo.py": {"readout_of", "presentation_of"},
    "vidjax/commands/export.py": {"readout_of", "presentation_of"},
    "vidjax/commands/push.py": {"readout_of", "presentation_of"},
    # The evaluators look up nothing: the run hands them its task's training spec and readout (`EvalContext`).
    **{str(path.relative_to(ROOT)): set() for path in (PACKAGE / "evaluators").glob("*.py")},
}


def lookups_and_imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    """(the names of `LOOKUPS` the module at `path` uses, the vidjax.tasks modules it imports)."""
    tree = ast.parse(path.read_text(), str(path))
    used, imported = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in LOOKUPS:
            used.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in LOOKUPS:
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vidjax.tasks"):
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            used.update(alias.name for alias in node.names if alias.name in LOOKUPS)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("vidjax.tasks"))
    return used, imported


@pytest.mark.parametrize("reader", sorted(READERS))
def test_each_reader_looks_up_only_its_contracts(reader):
    used, imported = lookups_and_imports(ROOT / reader)
    allowed = READERS[reader]
    assert (ROOT / reader).exists(), f"{reader} is gone: name where its code moved"
    assert used <= allowed, f"{reader} looks up {sorted(used - allowed)}; its contracts are {sorted(allowed)}"
    others = {CONTRACT_MODULES[name] for name in LOOKUPS - allowed}
    reached = {module for module in imported if any(module.startswith(other) for other in others)}
    assert not reached, f"{reader} imports {sorted(reached)}, another reader's contract"


def test_every_module_that_looks_up_a_contract_is_a_listed_reader():
    """The table above is the whole list (docs/architecture.md's contract table says the same): a new module that
    looks up a contract is named there, with the contracts it reads."""
    defining = {PACKAGE / "tasks" / name for name in ("__init__.py", "base.py", "readout.py", "presentation.py")}
    unlisted = sorted(str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
                      if path not in defining and str(path.relative_to(ROOT)) not in READERS
                      and lookups_and_imports(path)[0])
    assert not unlisted, f"{unlisted} look up task contracts; list each in READERS with the contracts it reads"


def test_the_demo_export_and_push_never_see_a_training_spec_nor_train_a_presentation():
    """The brief's own pairs, spelled out: the rule above with nothing else in the way."""
    for reader in ("vidjax/commands/demo.py", "vidjax/commands/export.py", "vidjax/commands/push.py"):
        used, imported = lookups_and_imports(ROOT / reader)
        assert "training_of" not in used and not any(m.startswith("vidjax.tasks.base") for m in imported), reader
    used, imported = lookups_and_imports(ROOT / "vidjax/train/__init__.py")
    assert "presentation_of" not in used and "vidjax.tasks.presentation" not in imported


def test_no_module_outside_tasks_takes_a_task_modules_objects_directly():
    """A reader asks `vidjax.tasks` for one contract by name; nothing reaches past it for TRAINING, READOUT or
    PRESENTATION (one would see all three)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if PACKAGE / "tasks" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("TRAINING", "READOUT", "PRESENTATION"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, found


# Members one contract's readers read, which the other two must not carry.
TRAINING_MEMBERS = {"loss_fn", "loss_weights", "input_spec", "masks", "element_fields", "view_spec", "teacher",
                    "config_problems", "resolve", "init_targets", "metadata", "evaluator", "mixes", "pads_eval",
                    "synthetic_task", "write_assets", "mix_label_smoothing", "ema_schedule", "hold", "reconstruct",
                    "caption_losses", "batch_coupled", "accumulation_problem"}
READOUT_MEMBERS = {"scores", "describe", "format_prediction", "probe_targets", "probe_loss", "predicts", "probes",
                   "output_kind", "kinetics_label_spaces", "probe_standardises_targets", "task_metrics", "ranked",
                   "decode_captions"}
PRESENTATION_MEMBERS = {"demo_output", "demo_description", "shown_scores", "timeline_columns", "timeline_cells",
                        "ranks_labels", "checkpoint_kind", "purpose", "hub_pipeline_tag", "hf_problem_type",
                        "score_function", "examples"}


@pytest.mark.parametrize("name", tasks.available())
def test_every_task_is_three_objects_of_the_three_types_with_their_own_members(name):
    spec, reads, shown = tasks.training_of(name), tasks.readout_of(name), tasks.presentation_of(name)
    assert isinstance(spec, base.TrainingSpec) and not isinstance(spec, (readout.Readout, presentation.Presentation))
    assert isinstance(reads, readout.Readout) and not isinstance(reads, base.TrainingSpec)
    assert isinstance(shown, presentation.Presentation) and dataclasses.is_dataclass(shown)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shown.purpose = "changed"  # type: ignore[misc]
    assert spec.name == reads.name == shown.name == name
    for obj, others in ((spec, READOUT_MEMBERS | PRESENTATION_MEMBERS),
                        (reads, TRAINING_MEMBERS | PRESENTATION_MEMBERS),
                        (shown, TRAINING_MEMBERS | READOUT_MEMBERS)):
        assert not {member for member in others if hasattr(obj, member)}, (name, type(obj).__name__)
    assert spec.teacher is None or isinstance(spec.teacher, base.Teacher)
    if reads.target_key is not None:  # the readout scores against the targets the task trains on
        assert reads.target_key == spec.target_key
    if isinstance(reads, readout.HeadReadout):
        assert isinstance(shown, presentation.HeadPresentation) and shown.score_name == reads.score_name
        assert isinstance(spec, base.HeadTraining)


def test_the_lookups_are_one_contract_each():
    teachers = ("svt", "vjepa2")  # the EMA-teacher tasks: self-distillation and latent prediction
    assert all(tasks.training_of(name).teacher is not None for name in teachers)
    assert all(tasks.training_of(name).teacher is None for name in tasks.available() if name not in teachers)
    assert not {"get_task", "find_task"} & set(dir(tasks))
    with pytest.raises(ConfigError, match="config.task must be one of"):
        tasks.readout_of("nope")


@pytest.mark.parametrize("decoder", ["none", "run_cell"])
def test_the_masks_run_from_the_config_through_the_input_spec_to_the_pipeline_and_the_model(decoder):
    config = tiny_family_config("videomae", decoder_mask_type=decoder, mask_ratio=0.75)
    model = abstract_model(config)
    masks = tasks.training_of(config.task).input_spec(config, model).masks
    assert masks == MaskSpec(grid=model.encoder.grid, ratio=0.75, decoder_kind=decoder)
    assert (masks.num_masked, masks.num_decoded) == (model.num_masked, model.num_decoded)
    assert masks.num_masked == int(0.75 * 16) * 2 and masks.num_decoded == (None if decoder == "none" else 16)
    assert tasks.training_of("classification").input_spec(config, model).masks is None


def documented_task_module() -> tuple[str, str]:
    """(task name, source) of the example module in docs/architecture.md's "### A task" recipe."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    recipe = doc[doc.index("### A task"):]
    recipe = recipe[:recipe.index("\n### ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", recipe, re.DOTALL)
    assert len(blocks) == 1, "the task recipe holds one ```python block: the new task's module"
    name = re.search(r'^\s+name = "(\w+)"', blocks[0], re.MULTILINE).group(1)
    return name, blocks[0]


def test_the_documented_task_trains_as_written(tmp_path, monkeypatch):
    """The module docs/architecture.md shows, saved as vidjax/tasks/NAME.py would be, is found by the registry and
    trains through the one trainer on the embedded dataset: finite losses, and its evaluator's metric."""
    name, source = documented_task_module()
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    monkeypatch.setattr(vidjax.tasks, "__path__", [*vidjax.tasks.__path__, str(folder)])
    try:
        assert name in tasks.available()
        spec = tasks.training_of(name)
        config = tiny_family_config("videomae", head="classification")
        config.task = name
        config.data.synthetic_task = spec.synthetic_task
        config.model.num_classes = config.data.num_classes
        config.update(total_steps=4, log_every=1, checkpoint_every=4, figure=False)
        workdir = tmp_path / "run"
        result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
        losses = train_losses(workdir)
        assert sorted(losses) == [1, 2, 3, 4] and np.isfinite(list(losses.values())).all()
        assert 0.0 <= result["eval_mAP"] <= 1.0 and np.isfinite(result["eval_loss"])
        assert tasks.presentation_of(name).score_function == "sigmoid"  # read as multi-label tagging
    finally:
        sys.modules.pop(f"vidjax.tasks.{name}", None)
