"""No command imports another (`vidjax/commands/__init__.py`): what two commands share is library code in a lower
layer (`vidjax.tasks.predictions`, `vidjax.pretrained.windows`, `vidjax.cli.start`, ...), so each command module
can change without reaching into the others. Every module under vidjax/commands/ is read with `ast`, not imported;
imports at module level and inside functions alike."""

from __future__ import annotations

import ast
import pathlib

COMMANDS = pathlib.Path(__file__).resolve().parent.parent / "vidjax" / "commands"


def command_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a `vidjax.commands` module in the file at `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = ["vidjax", "commands"][: 3 - node.level] if node.level else []  # a relative import's package
            base = ".".join(package + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if base in ("vidjax", "vidjax.commands") else base
                     for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("vidjax.commands.")]
    return found


def test_no_command_imports_another():
    found = [f"vidjax/commands/{path.name}:{line} imports {name}"
             for path in sorted(COMMANDS.glob("*.py")) for line, name in command_imports(path)]
    assert not found, ("; ".join(found) + ": move what the commands share into a lower layer (a module placed in "
                       "vidjax/layering.py) and import it from there")


def test_the_check_sees_each_spelling(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("\n".join([
        "import vidjax.commands.predict", "from vidjax.commands import extract", "from . import demo",
        "from vidjax.commands.export import write", "from vidjax import cli", "from .. import predictions", "", "",
        "def f():", "    from vidjax.commands import probe", ""]))
    assert sorted(command_imports(module)) == [
        (1, "vidjax.commands.predict"), (2, "vidjax.commands.extract"), (3, "vidjax.commands.demo"),
        (4, "vidjax.commands.export"), (10, "vidjax.commands.probe")]
