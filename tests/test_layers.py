"""Every import inside hsd, at module level or inside a function, points down the layers that
docs/architecture.md lists; no two modules import each other, directly or through others; every command is
the `cli.py` of its package or a module of `hsd/` of its own; and no module imports another module's
private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hsd"


def layers() -> dict[str, tuple[list[str], set[str]]]:
    """layer -> (its module prefixes, the layers it may import), read from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```layers\n", 1)[1].split("```", 1)[0]
    table = {}
    for line in block.splitlines():
        if not line.strip():
            continue
        name, modules, imports = (cell.strip() for cell in line.split("|"))
        table[name] = (
            [m.strip() for m in modules.split(",")],
            {i.strip() for i in imports.split(",") if i.strip()},
        )
    return table


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, table) -> str:
    """The layer whose longest module prefix matches `module`."""
    matches = [
        (len(prefix), name)
        for name, (prefixes, _) in table.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} belongs to no layer of docs/architecture.md")
    return max(matches)[1]


def hsd_imports(path: Path, package: str | None = None):
    """(imported module, imported names) for each import of an hsd module in the file, wherever it stands
    (`ast.walk` visits the imports inside functions and classes too; relative imports resolved from
    `package`, by default the file's own)."""
    if package is None:
        package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hsd":
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] == "hsd":
                yield base, [alias.name for alias in node.names]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_covers_every_module_and_names_known_layers():
    table = layers()
    assert {"core", "tasks", "teacher", "testbed", "model", "trainer", "analysis", "commands"} <= set(table)
    for name, (_, imports) in table.items():
        assert imports <= set(table) | {"*"}, name
    for path in SOURCES:
        layer_of(module_name(path), table)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    table = layers()
    layer = layer_of(module_name(path), table)
    allowed = table[layer][1]
    for target, _ in hsd_imports(path):
        if target == "hsd":
            target_layer = "commands"
        else:
            target_layer = layer_of(target, table)
        assert target_layer == layer or "*" in allowed or target_layer in allowed, (
            f"{module_name(path)} ({layer}) imports {target} ({target_layer}); {layer} may import {sorted(allowed)}"
        )


def import_graph() -> dict[str, set[str]]:
    """module -> the hsd modules it imports (`from package import module` counts as the module)."""
    modules = {module_name(path): path for path in SOURCES}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target, names in hsd_imports(path):
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            targets |= submodules or ({target} & set(modules))
        graph[name] = targets - {name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state, path = dict.fromkeys(graph, 0), []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if state.get(target) == 0 and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if state[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = import_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_command_is_the_cli_of_its_package_or_a_module_of_its_own():
    from hsd.cli import COMMANDS

    table = layers()
    for command, (module, _) in COMMANDS.items():
        parts = module.split(".")
        assert layer_of(module, table) == "commands", f"hsd {command}: {module} is not in the commands layer"
        own_package = len(parts) == 3 and parts[2] == "cli" and (PACKAGE / parts[1]).is_dir()
        own_module = len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").is_file()
        assert own_package or own_module, (
            f"hsd {command}: {module} is neither hsd/<package>/cli.py nor hsd/<name>.py"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_private_name_of_another(path):
    for target, names in hsd_imports(path):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private or target == module_name(path), (
            f"{module_name(path)} imports {private} from {target}"
        )
        assert not any(part.startswith("_") and not part.startswith("__") for part in target.split(".")), (
            f"{module_name(path)} imports the private module {target}"
        )


def test_the_checks_catch_a_layer_violation_and_a_private_import(tmp_path):
    table = layers()
    assert layer_of("hsd.core.peers", table) == "core"
    assert "trainer" not in table["core"][1] and "trainer" not in table["analysis"][1]
    bad = tmp_path / "bad.py"
    bad.write_text("from hsd.trainer.cli import _parse\nimport hsd.core\nfrom .forward import x\n")
    found = list(hsd_imports(bad, package="hsd.trainer"))
    assert ("hsd.trainer.cli", ["_parse"]) in found and ("hsd.core", []) in found
    assert ("hsd.trainer.forward", ["x"]) in found
    inside = tmp_path / "inside.py"
    inside.write_text("def load():\n    from hsd.models import load_model\n    import hsd.trainer.cli\n")
    found = list(hsd_imports(inside, package="hsd.testbed"))
    assert ("hsd.models", ["load_model"]) in found and ("hsd.trainer.cli", []) in found
    assert layer_of("hsd.models", table) not in table["testbed"][1]  # the testbed may not load models
    graph = {"hsd.a": {"hsd.b"}, "hsd.b": {"hsd.c"}, "hsd.c": {"hsd.a"}, "hsd.d": {"hsd.a"}}
    assert import_cycle(graph) == ["hsd.a", "hsd.b", "hsd.c", "hsd.a"]
    assert import_cycle({**graph, "hsd.c": set()}) is None
