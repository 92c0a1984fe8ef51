"""benchmarks/credit_tables.py renders docs/results.md's credit tables from credit.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = ("2", "4", "8", "16", "32")


def credit(at_tau, share_2, tau_zero):
    return {
        "contexts": ["opsd", "hsd"],
        "mass_within": {
            "opsd": dict.fromkeys(WIDTHS, 0.5),
            "hsd": {**dict.fromkeys(WIDTHS, 0.9), "2": share_2},
        },
        "mass_within_random": {"opsd": dict.fromkeys(WIDTHS, 0.1), "hsd": dict.fromkeys(WIDTHS, 0.125)},
        "mass_within_tau_pos": {"opsd": {}, "hsd": None},
        "mass_within_random_tau_pos": {"opsd": {}, "hsd": None},
        "abs_credit_at_tau": {"opsd": None, "hsd": at_tau},
        "abs_credit_elsewhere": {"opsd": 0.2, "hsd": 0.5},
        "counts": {"successes": 3, "rollouts": 12, "analysed": 7},
        "tau_zero_share": tau_zero,
        "median_tau": None,
        "error_position": {"tau_equals_error_share": 0.75},
        "wall_s": 12.4,
    }


def test_tables_show_each_share_beside_its_control_and_the_credit_ratio(tmp_path):
    for name, values in {"a": credit(2.0, 0.61, 0.25), "b": credit(None, 0.3, 1.0)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "credit.json").write_text(json.dumps(values))
    command = [
        sys.executable,
        "benchmarks/credit_tables.py",
        f"run a={tmp_path / 'a'}",
        f"run b={tmp_path / 'b'}",
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "| run a | hsd | 61% (12%) | 90% (12%) |" in out
    assert "| run b | hsd | 30% (12%) |" in out
    assert "| run a | 0.250 | 7 | 25% | - | 75% | opsd | - | 0.200 | - | 12 s |" in out
    assert "| | | | | | | hsd | 2.000 | 0.500 | 4.0x |  |" in out
    assert "| run b | 0.250 | 7 | 100% |" in out


def test_a_missing_label_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/credit_tables.py", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "LABEL=DIR" in result.stderr
