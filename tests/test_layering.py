"""Layers point down: no vidjax module imports one of a layer above its own (`vidjax/layering.py` places them).

Every module under vidjax/ is read with `ast`, not imported: module-level and function-level imports alike,
`import vidjax.x`, `from vidjax.x import y` and relative `from . import y`. Imports by computed name
(`importlib.import_module(f"vidjax.models.{name}")`, the model and task registries) are not seen.
"""

from __future__ import annotations

import ast
import pathlib

from vidjax import layering

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vidjax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_name(index: int | None) -> str:
    return "unplaced" if index is None else f"{index}:{layering.LAYERS[index][0]}"


def existing(name: str) -> str:
    """`name`, or the longest of its prefixes that is a module (`vidjax.models.get_model` -> `vidjax.models`)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def packages_of(module: str) -> set[str]:
    """The packages `module` sits in, which importing it ran already: vidjax.data.pipeline -> vidjax, vidjax.data."""
    return {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}


def imports(module: str, path: pathlib.Path) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, imported vidjax module, inside a function) for every vidjax module `module` imports, with the
    packages run on the way (`import vidjax.a.b` runs vidjax.a)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(n for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: package.count(".") + 2 - node.level]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names = [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        targets = set()
        for name in names:
            if name.split(".")[0] != "vidjax":
                continue
            target = existing(name)
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        for target in sorted(targets - {module}):
            found.append((node, target, node in in_function))
    return found


def test_every_module_is_placed():
    unplaced = [name for name in MODULES if layering.layer_of(name) is None]
    assert not unplaced, (f"{', '.join(unplaced)}: not in vidjax/layering.py's LAYERS; add each to the layer it "
                          f"belongs to (it may import that layer and the ones below)")


def test_layers_point_down():
    problems = []
    for module, path in MODULES.items():
        own = layering.layer_of(module)
        for node, target, _ in imports(module, path):
            if target in packages_of(module):  # ran before `module` itself: no new dependency
                continue
            theirs = layering.layer_of(target)
            if own is not None and (theirs is None or theirs > own):  # unplaced importers: the test above
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} (layer {layer_name(own)}) imports "
                                f"{target} (layer {layer_name(theirs)})")
    assert not problems, "Imports of a layer above (vidjax/layering.py):\n" + "\n".join(problems)


def says_why(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's own lines, on another import of the run of imports it sits in (blank lines
    included), or on the line just above that run."""
    if any("#" in line for line in lines[node.lineno - 1: node.end_lineno]):
        return True
    for line in reversed(lines[: node.lineno - 1]):
        text = line.strip()
        if text.startswith("#"):
            return True
        if text and not text.startswith(("import ", "from ")):
            return False
        if "#" in text:
            return True
    return False


def test_function_level_imports_say_why():
    """A vidjax import inside a function says why it is not at the top (an optional extra, start-up time), on its
    line or above it: one that dodged an import cycle belongs at the top, with the cycle broken."""
    problems = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        seen = set()
        for node, _, in_function in imports(module, path):
            if not in_function or node in seen:
                continue
            seen.add(node)
            if not says_why(lines, node):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not problems, ("Function-level vidjax imports without a comment saying why they are not at the top:\n"
                          + "\n".join(problems))


def test_layer_table_places_each_name_once():
    names = [name for _, _, names in layering.LAYERS for name in names]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """`imports` reads relative imports, aliases and function-level imports, and the packages they run."""
    source = ("from . import views\nimport vidjax.models.layers as layers\n\n\ndef f():\n"
              "    from vidjax.tasks import base\n")
    copy = tmp_path / "pipeline.py"
    copy.write_text(source)
    found = {(target, in_function) for _, target, in_function in imports("vidjax.data.pipeline", copy)}
    assert found == {("vidjax", False), ("vidjax.data", False), ("vidjax.data.views", False),
                     ("vidjax.models", False), ("vidjax.models.layers", False), ("vidjax", True),
                     ("vidjax.tasks", True), ("vidjax.tasks.base", True)}


def task_imports(module: str, path: pathlib.Path) -> list[str]:
    """"file:line: module" of every import of `vidjax.tasks` or a module under it in the module at `path`."""
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}: {target}"
            for node, target, _ in imports(module, path)
            if target == "vidjax.tasks" or target.startswith("vidjax.tasks.")]


def test_evaluators_import_no_task_module():
    """An evaluator reads the run's task only through what the run hands it (`EvalContext.spec`, `.readout`: the
    task's training spec and readout), as big_vision's evaluators are handed their predict functions: no module under
    vidjax/evaluators/ imports `vidjax.tasks` or a task module, at module level or inside a function."""
    found = [line for module, path in MODULES.items()
             if module == "vidjax.evaluators" or module.startswith("vidjax.evaluators.")
             for line in task_imports(module, path)]
    assert not found, ("Evaluators importing the tasks (take what they need from the EvalContext instead):\n"
                       + "\n".join(found))


def test_the_task_import_check_sees_every_spelling(tmp_path):
    """`from vidjax import tasks`, `import vidjax.tasks.x` and a function-level `from vidjax.tasks.x import y` are
    each found; an evaluator's import of another evaluator is not."""
    source = ("from vidjax import tasks\nimport vidjax.tasks.captioning\nfrom vidjax.evaluators import base\n\n\n"
              "def f():\n    from vidjax.tasks.pretrain import Training\n")
    copy = tmp_path / "captioning.py"
    copy.write_text(source)
    found = {(int(line.split(":")[1]), line.split(": ")[1]) for line in task_imports("vidjax.evaluators.x", copy)}
    assert found == {(1, "vidjax.tasks"), (2, "vidjax.tasks"), (2, "vidjax.tasks.captioning"), (7, "vidjax.tasks"),
                     (7, "vidjax.tasks.pretrain")}
