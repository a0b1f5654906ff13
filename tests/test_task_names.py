"""No module outside vidjax/tasks/ branches or looks up on a task's name: the task modules' contracts carry what
differs between tasks (issue 41; each task's training spec, readout and presentation: `vidjax.tasks`), so a new task
is one module in vidjax/tasks/ plus its config and tests; and what each task declares there is something its readers
handle.

Every .py file under vidjax/ outside vidjax/tasks/ is read with `ast` (not imported), and every string literal
equal to the name of a registered task (`vidjax.tasks.available()`) fails, naming file:line, where code decides by
it:
  - an operand of a comparison (==, !=, in, not in, is), directly or inside a tuple, list or set operand;
  - a `case` value of a `match`;
  - the key looked up by a subscript (`x["regression"]`) or by `.get(...)`'s first argument;
  - a key of a dict literal holding two or more task names (a table keyed by task), or an element of a tuple, list
    or set literal holding two or more (a list of tasks).
The rule is strict, with one exception, for vocabularies that share spellings with task names: "pretrain" and
"classification" are also model heads (config.model.head), "svt" a model and a converter's kind, "pretrain" a
benchmark mode. A comparison (or `match`) whose other side is about one of those (it names `head`, `head_kind`,
`model_name`, `mode`, `modes`, `kind` or `format`: `cfg.head == "pretrain"`, `model.model_name == "svt"`,
`mode == "pretrain"`) passes, and a literal table or list with a single task name among its others (the converters
`{"hf": ..., "svt": ...}`, the benchmark modes `m in ("pretrain", "finetune", "infer")`) is about that other
vocabulary, unless it is compared with something about a task (`config.task in ("pretrain", "other")` fails); so is
a table or list bound to a name of those vocabularies or of the converters' (`kinds`, `sources`, `families`:
`KINDS = ("hf", "svt", "vjepa2")`, "svt" and "vjepa2" being checkpoint kinds there).
Everything else passes: docstrings, messages, comments (not literals at all), and naming a task as a value
(`config.task = "classification"` in a benchmark's config, `task="pretrain"` as the trainer's default), which
chooses a task as a config file does rather than branching on one.
"""

from __future__ import annotations

import ast
import pathlib

from vidjax import tasks
from vidjax.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vidjax"
TASKS_DIR = PACKAGE / "tasks"
# Words naming the vocabularies that share spellings with task names (the module docstring).
OTHER_VOCABULARIES = {"head", "head_kind", "model_name", "mode", "modes", "kind", "format",
                      "kinds", "sources", "families"}  # the converters' tables of checkpoint kinds


def task_names() -> set[str]:
    """Every registered task's name, as the registry and each task module spell it."""
    return {spelling for name in tasks.available()
            for spelling in (name, tasks.training_of(name).name, tasks.readout_of(name).name,
                             tasks.presentation_of(name).name)}


def words(node: ast.AST) -> set[str]:
    """The names, attributes and string constants in `node`, lower case without leading underscores."""
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
        elif isinstance(child, ast.Constant) and isinstance(child.value, str):
            found.add(child.value)
    return {word.lower().lstrip("_") for word in found}


def is_other_vocabulary(nodes: list[ast.AST]) -> bool:
    return any(words(node) & OTHER_VOCABULARIES for node in nodes)


def uses(tree: ast.AST, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, how) of every task-name literal in `tree` in a position the module docstring forbids."""
    def named(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and node.value in names else None

    def members(node: ast.AST) -> list[ast.Constant]:
        """The task-name literals `node` is or directly holds (a tuple, list or set of them)."""
        if named(node):
            return [node]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [elt for elt in node.elts if named(elt)]
        return []

    found: dict[int, tuple[int, str, str]] = {}  # by the literal's id, so each is reported once
    exempt: set[int] = set()

    def report(node: ast.Constant, how: str) -> None:
        if id(node) not in exempt:
            found.setdefault(id(node), (node.lineno, node.value, how))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, operand in enumerate(operands):
                literals = members(operand)
                if not literals:
                    continue
                others = operands[:i] + operands[i + 1:]
                # One task name among other values (`m not in ("pretrain", "finetune", "infer")`) is another
                # vocabulary's, unless the other side is about a task.
                lone = (isinstance(operand, (ast.Tuple, ast.List, ast.Set)) and len(literals) == 1
                        and len(operand.elts) > 1 and not any("task" in word for other in others
                                                              for word in words(other)))
                if lone or is_other_vocabulary(others):
                    exempt.update(id(literal) for literal in literals)
                else:
                    for literal in literals:
                        report(literal, "compared")
        elif isinstance(node, ast.Match):
            for case in node.cases:
                for pattern in ast.walk(case.pattern):
                    if isinstance(pattern, ast.MatchValue) and named(pattern.value):
                        if is_other_vocabulary([node.subject]):
                            exempt.add(id(pattern.value))
                        else:
                            report(pattern.value, "matched in a case")
        elif isinstance(node, ast.Subscript) and named(node.slice):
            report(node.slice, "looked up")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and named(node.args[0])):
            report(node.args[0], "looked up with .get")
    for node in ast.walk(tree):  # a table or list bound to another vocabulary's name (KINDS = (...)) is its
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if is_other_vocabulary(targets):
                exempt.update(id(literal) for child in ast.walk(node.value) for literal in members(child))
                exempt.update(id(key) for child in ast.walk(node.value) if isinstance(child, ast.Dict)
                              for key in child.keys if key is not None and named(key))
    for node in ast.walk(tree):  # tables and lists of tasks, unless a comparison above already placed them
        if isinstance(node, ast.Dict):
            keys = [key for key in node.keys if key is not None and named(key)]
            if len(keys) >= 2:
                for key in keys:
                    report(key, "a key of a table of tasks")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elements = members(node)
            if len(elements) >= 2:
                for element in elements:
                    report(element, "in a list of tasks")
    return sorted(found.values())


def test_the_registry_names_the_tasks():
    assert {"pretrain", "classification", "multilabel", "regression", "captioning", "svt"} <= task_names()


def test_each_task_declares_what_the_commands_read_in_terms_they_know():
    """The contract the demo, export and the embedded dataset read instead of the name: values they handle."""
    for name in tasks.available():
        spec, shown = tasks.training_of(name), tasks.presentation_of(name)
        assert shown.demo_output in (None, "scores", "reconstruction", "caption"), name
        assert bool(shown.demo_description(5)) == (shown.demo_output is not None), name
        assert shown.score_function in ("softmax", "sigmoid", "identity"), name
        if spec.synthetic_task:  # the embedded dataset's variant that carries the task's targets
            clips = synthetic.SyntheticVideoSource(1, num_frames=2, height=16, width=16, variant=spec.synthetic_task)
            assert spec.target_key in clips[0], name


def test_no_module_outside_tasks_branches_on_a_task_name():
    names = task_names()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TASKS_DIR in path.parents:
            continue
        for line, name, how in uses(ast.parse(path.read_text(), str(path)), names):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {name!r} {how}")
    assert not problems, ("Task names outside vidjax/tasks/ (give the task module's contracts, its TRAINING, READOUT "
                          "and PRESENTATION, what differs instead):\n" + "\n".join(problems))


def test_the_checker_sees_each_kind_of_use():
    """What the rule flags and what it lets pass, on a made-up module."""
    source = '''
"""A docstring naming classification and regression."""
if config.task == "regression": pass
if task in ("classification", "multilabel"): pass
SCORES = {"classification": "softmax", "multilabel": "sigmoid"}
TASKS = ["captioning", "svt"]
what = WHAT["pretrain"]
tag = TAGS.get("captioning", "")
match task:
    case "svt": pass
if cfg.head == "pretrain" or model.model_name == "svt" or _MODE.value != "pretrain": pass
if config.get("head") in ("pretrain", "classification", "none"): pass
KINDS = ("hf", "svt", "videomae")
if m not in ("pretrain", "finetune") or config.task in ("svt", "other"): pass
SOURCES = {"hf": 1, "svt": 2}
config.task = "classification"
print(f"{name} is not a classification checkpoint", "regression")
FAMILIES = {"svt": 1, "vjepa2": 2}
sources = {"svt": from_svt, "vjepa2": from_vjepa2}
'''
    found = [(line, name, how.split()[0]) for line, name, how in uses(ast.parse(source), task_names())]
    assert found == [(3, "regression", "compared"), (4, "classification", "compared"), (4, "multilabel", "compared"),
                     (5, "classification", "a"), (5, "multilabel", "a"), (6, "captioning", "in"), (6, "svt", "in"),
                     (7, "pretrain", "looked"), (8, "captioning", "looked"), (10, "svt", "matched"),
                     (14, "svt", "compared")]
