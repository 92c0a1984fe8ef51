"""A run killed with SIGKILL after a checkpoint resumes from it and ends at the configured step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("resume_run.py")
ENV = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tiny_model_dir), str(out), "4", "0.5"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(
        int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()
    )
    assert 2 <= killed_at < 4
    first_run_steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_model_dir), str(out), "4"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "final step 4" in resumed.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    resumed_steps = [s for s in steps[len(first_run_steps) :] if s]
    assert resumed_steps[0] == killed_at + 1  # continued from the checkpoint, not from scratch
    assert max(steps) == 4
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
