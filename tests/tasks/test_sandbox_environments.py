"""The code sandbox finds the interpreter's standard library, lib-dynload and site-packages in every layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hsd.tasks.code import sandbox_import_path

ROOT = Path(__file__).resolve().parents[2]
HUMANEVAL_STYLE = {
    "prompt": 'def add(a: int, b: int) -> int:\n    """The sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n",
    "entry_point": "add",
}
VERIFY = """
import json, sys
from hsd.tasks.code import _interpreter_paths, run_tests
tests = json.loads(sys.argv[1])
right = run_tests("def add(a, b):\\n    return a + b\\n", tests)
wrong = run_tests("def add(a, b):\\n    return a - b\\n", tests)
print(json.dumps({"prefix": sys.prefix, "base_prefix": sys.base_prefix, "paths": _interpreter_paths(),
                  "right": [right.reward, right.reason], "wrong": [wrong.reward, wrong.reason, wrong.feedback]}))
"""


def test_a_fresh_venv_with_system_site_packages_verifies_a_right_and_a_wrong_solution(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True, timeout=120,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", VERIFY, json.dumps(HUMANEVAL_STYLE)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert os.path.realpath(out["prefix"]) == os.path.realpath(venv)  # really ran inside the new venv
    assert out["base_prefix"] != out["prefix"]
    assert out["right"] == [1.0, "correct"]
    assert out["wrong"][:2] == [0.0, "wrong"] and "candidate(1, 2) == 3" in out["wrong"][2]
    stdlib = [p for p in out["paths"] if p.startswith(out["base_prefix"]) and "site-packages" not in p]
    assert any(p.endswith("lib-dynload") for p in stdlib), out["paths"]
    venv_site = [p for p in out["paths"] if os.path.realpath(p).startswith(os.path.realpath(venv))]
    assert venv_site and all(p.endswith("site-packages") for p in venv_site)


def test_import_path_for_each_interpreter_layout():
    # a plain venv over a pyenv build: stdlib from the base, packages from the venv
    venv = ["", "/opt/py/lib/python311.zip", "/opt/py/lib/python3.11", "/opt/py/lib/python3.11/lib-dynload",
            "/home/u/proj", "/home/u/.venv/lib/python3.11/site-packages"]  # fmt: skip
    assert sandbox_import_path(venv, ["/opt/py", "/opt/py"]) == [
        "/opt/py/lib/python311.zip", "/opt/py/lib/python3.11", "/opt/py/lib/python3.11/lib-dynload",
        "/home/u/.venv/lib/python3.11/site-packages",
    ]  # fmt: skip
    # --system-site-packages: the venv's packages first, then the base interpreter's
    system_site = [*venv, "/opt/py/lib/python3.11/site-packages"]
    assert sandbox_import_path(system_site, ["/opt/py", "/opt/py"])[-2:] == [
        "/home/u/.venv/lib/python3.11/site-packages", "/opt/py/lib/python3.11/site-packages",
    ]  # fmt: skip
    # a conda environment is its own prefix (no venv): stdlib, lib-dynload and site-packages under it
    conda = ["", "/opt/conda/envs/x/lib/python3.12", "/opt/conda/envs/x/lib/python3.12/lib-dynload",
             "/opt/conda/envs/x/lib/python3.12/site-packages"]  # fmt: skip
    assert sandbox_import_path(conda, ["/opt/conda/envs/x"] * 2) == conda[1:]
    # Debian's system interpreter: dist-packages in /usr/local and /usr
    debian = ["", "/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload",
              "/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages"]  # fmt: skip
    assert sandbox_import_path(debian, ["/usr", "/usr"]) == debian[1:]
    # a split exec prefix (platform-specific files elsewhere) contributes its lib-dynload too
    split = ["/p/lib/python3.11", "/e/lib/python3.11/lib-dynload", "/elsewhere/mod"]
    assert sandbox_import_path(split, ["/p", "/e"]) == split[:2]
