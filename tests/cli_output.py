"""What the terminal output of an `hsd` command must not show: the notices of its libraries that the
command line hides (weight-file progress bars, DeepSpeed's CPU fallback) and warnings raised from hsd's code."""

from __future__ import annotations

import re

HIDDEN_NOTICES = ("Loading weights", "Writing model shards", "Setting accelerator")
# a warning as Python prints it, `path/hsd/module.py:LINE: SomeWarning: ...`, raised from hsd's own code
OWN_WARNING = re.compile(r"(^|/)hsd/[\w/]+\.py:\d+: \w*Warning")
# show DeprecationWarnings too (Python hides them outside __main__)
WARNINGS_ENV = {"PYTHONWARNINGS": "default::DeprecationWarning"}


def noise(output: str) -> list[str]:
    """The lines of `output` that show a hidden notice or a warning from hsd's code."""
    return [
        line
        for line in output.splitlines()
        if any(notice in line for notice in HIDDEN_NOTICES) or OWN_WARNING.search(line)
    ]
