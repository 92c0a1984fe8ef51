"""`hsd.core` stands alone: torch and the standard library, never TRL or transformers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import hsd.core

CORE_DIR = Path(hsd.core.__file__).parent


def test_importing_the_core_loads_no_trl_or_transformers():
    code = (
        "import hsd.core.losses, hsd.core.peers, hsd.core.tau, hsd.core.contexts, hsd.core.plan, "
        "sys, json; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'transformers'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_core_modules_import_only_torch_the_standard_library_and_the_core():
    modules = sorted(CORE_DIR.glob("*.py"))
    assert {m.stem for m in modules} >= {"peers", "contexts", "tau", "losses"}
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                allowed = name != "argparse" and (  # a command (argparse) lives outside the core
                    name.split(".")[0] in sys.stdlib_module_names
                    or name.split(".")[0] == "torch"
                    or name.startswith("hsd.core.")
                )
                assert allowed, f"{module.name} imports {name}"
