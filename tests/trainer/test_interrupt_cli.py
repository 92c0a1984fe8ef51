"""`hsd train` stopped by SIGTERM saves the step it was on, exits 75 with one line, and a rerun resumes: the
metrics file then holds each step once and the losses equal an uninterrupted run's (EMA teacher, uniform peers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsd.trainer.checkpoints import MARKER
from hsd.trainer.interrupt import EXIT_INTERRUPTED

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS = 6


def command(model_dir, out):
    overrides = dict(
        model=model_dir,
        max_steps=STEPS,
        output_dir=out,
        per_device_train_batch_size=8,
        max_completion_length=12,
        save_steps=100,
        report_to="[]",
        reward_workers=1,
        teacher_weights="ema",
        peer_rule="uniform",
    )
    args = [x for key, value in overrides.items() for x in (f"--{key}", str(value))]
    return [sys.executable, "-m", "hsd", "train", "--config", str(CONFIGS / "quickstart.yaml"), *args]


def loss_rows(out) -> list[dict]:
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written while we read
            continue
    return [row for row in rows if "loss" in row]


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_the_rerun_reproduces_the_uninterrupted_losses(tiny_model_dir, tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run(command(tiny_model_dir, whole), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "split"
    proc = subprocess.Popen(command(tiny_model_dir, out), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and any(r["step"] >= 2 for r in loss_rows(out))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-2000:]
    saved = [p for p in out.glob("checkpoint-*") if (p / MARKER).is_file()]
    assert len(saved) == 1
    step = int(saved[0].name.split("-")[1])
    assert 2 <= step < STEPS
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"hsd train: interrupted by SIGTERM after step {step}, saved {saved[0]}; resumable: run the same "
        f"command again to continue from it (exit status {EXIT_INTERRUPTED})"
    )
    assert "Traceback" not in stderr

    rerun = subprocess.run(command(tiny_model_dir, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    steps = [row["step"] for row in loss_rows(out)]
    assert steps == list(range(1, STEPS + 1))  # each step once, though steps 1..step ran before the signal
    assert [row["loss"] for row in loss_rows(out)] == [row["loss"] for row in loss_rows(whole)]
    assert os.path.isdir(out / "final")


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_a_checkpoint_and_the_rerun_starts_clean(
    tiny_model_dir, tmp_path
):
    out = tmp_path / "run"
    proc = subprocess.Popen(command(tiny_model_dir, out), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and any(r["step"] >= 2 for r in loss_rows(out))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    # two different signals back to back: both are pending when Python next runs its handlers
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode in (-signal.SIGINT, -signal.SIGTERM), (proc.returncode, stderr[-2000:])
    assert (
        "received: finishing this step" in stderr
        and "again: stopping at once, without a checkpoint" in stderr
    )
    assert not list(out.glob("checkpoint-*")) and not (out / "final").exists()

    rerun = subprocess.run(command(tiny_model_dir, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "stale" in rerun.stderr  # the killed run's lock is taken over, with a warning
    assert [row["step"] for row in loss_rows(out)] == list(range(1, STEPS + 1))  # no step of the killed run
