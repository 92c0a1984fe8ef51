"""The throughput benchmark runs end to end on the project's fixture problems and prints one JSON line of rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURE_DATA

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_prints_rates_and_the_verdicts_agree_with_the_data():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sizes = ["--gsm8k", "5", "--humaneval", "3", "--math500", "4", "--mbppplus", "3", "--workers", "2"]
    command = [sys.executable, "benchmarks/verifiers.py", *sizes, "--data-dir", str(FIXTURE_DATA)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["gsm8k_answers"] == 5 and result["humaneval_solutions"] == 3
    assert result["gsm8k_answers_per_s"] > 0 and result["gsm8k_mathverify_answers_per_s"] > 0
    assert result["humaneval_solutions_per_s"] > 0
    assert result["gsm8k_agree"] == 1.0 and result["gsm8k_mathverify_agree"] == 1.0
    assert result["humaneval_passed"] == 3 and result["mbppplus_passed"] == 3
    assert result["math500_self_verified"] == 4 and result["math500_answers_per_s"] > 0
