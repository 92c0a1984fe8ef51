"""`benchmarks/gpu/run.sh --dry-run`: every step of the GPU check runs on the CPU with tiny shapes and
writes its file, and the files say what the GPU run will report."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = ["install", "step", "vs-trl", "head", "correctness", "profile", "quickstart"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out


def _load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


@pytest.mark.slow
def test_every_step_ran_and_wrote_its_file(dry_run):
    summary = _load(dry_run, "summary.json")
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["state"] == "ok" for s in summary["steps"]), summary["steps"]
    files = sorted(p.name for p in dry_run.iterdir())
    assert files == sorted(
        ["summary.json", "env.json", "step.json", "vs_trl.json", "head.json", "profile.json"]
        + ["quickstart.json", "run.log"]
    )  # at most 8 files come back from the GPU machine, named in letters, digits, '.', '_', '-'
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)
    for target in summary["targets"].values():
        assert target["ratio"] > 0 and target["met"] == (target["ratio"] <= float(target["target"][3:]))


@pytest.mark.slow
def test_step_and_vs_trl_reports_hold_the_four_methods_and_trl_trainers(dry_run):
    step = _load(dry_run, "step.json")
    assert list(step["methods"]) == ["grpo", "opsd", "hsd", "hsd:plain"]
    assert step["setup"]["device"] == "cpu" and step["setup"]["dtype"] == "bfloat16"
    assert all(r["median_s"]["update"] > 0 and r["peak_memory_bytes"] > 0 for r in step["methods"].values())
    assert set(step["ratios"]["update_time"]) == {"opsd_over_grpo", "hsd_over_grpo", "hsd:plain_over_grpo"}
    vs_trl = _load(dry_run, "vs_trl.json")
    assert list(vs_trl["methods"]) == ["hsd", "sdpo", "grpo"]
    assert vs_trl["ratios"]["step_time"]["hsd_over_sdpo"] > 0


@pytest.mark.slow
def test_head_variants_agree_with_the_float32_engine(dry_run):
    head = _load(dry_run, "head.json")
    assert {"hsd", "hsd_keep", "trl"} <= set(head["variants"])
    assert "liger" in head["variants"] or "liger" in head["skipped"]  # Liger's Triton kernels need CUDA
    scale = head["reference"]["grad_weight_max_abs"]
    assert scale > 0
    for name, variant in head["variants"].items():
        diff = variant["max_abs_diff_vs_float32"]
        assert diff["grad_weight"] <= 0.05 * scale, (name, diff)  # bf16 inputs, fp32 math
        assert abs(variant["loss"] - head["reference"]["loss"]) <= 0.02 * head["reference"]["loss"], name


@pytest.mark.slow
def test_correctness_profile_and_quickstart_outputs(dry_run):
    summary = _load(dry_run, "summary.json")
    assert summary["correctness"]["tests"] == 2 and summary["correctness"]["failures"] == 0
    profile = _load(dry_run, "profile.json")
    for method in ("hsd", "grpo"):
        top = profile["methods"][method]["top"]
        assert 0 < len(top) <= 15 and top[0]["self_ms"] >= top[-1]["self_ms"]
    quickstart = _load(dry_run, "quickstart.json")
    assert quickstart["final_model_written"] and quickstart["recipe"]["max_steps"] == 2
    assert any("reward" in row for row in quickstart["metrics"])
