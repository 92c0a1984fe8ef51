"""The throughput benchmark runs end to end on a small batch and prints one JSON line of rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_prints_rates_and_the_verdicts_agree_with_the_data():
    env = dict(os.environ, HSD_DATA_DIR=str(ROOT / ".." / "shared" / "data"), PYTHONPATH=str(ROOT))
    sizes = ["--gsm8k", "40", "--humaneval", "6", "--math500", "10", "--mbppplus", "2", "--workers", "2"]
    command = [sys.executable, "benchmarks/verifiers.py", *sizes]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["gsm8k_answers"] == 40 and result["humaneval_solutions"] == 6
    assert result["gsm8k_answers_per_s"] > 0 and result["gsm8k_mathverify_answers_per_s"] > 0
    assert result["humaneval_solutions_per_s"] > 0
    assert result["gsm8k_agree"] == 1.0 and result["gsm8k_mathverify_agree"] == 1.0
    assert result["humaneval_passed"] == 6 and result["mbppplus_passed"] == 2
    assert result["math500_self_verified"] == 10 and result["math500_answers_per_s"] > 0
