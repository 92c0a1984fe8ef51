"""One run per output directory: a second `hsd train` on a busy directory fails at once naming the first; a
lock left by a killed run is taken over with a warning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsd.errors import UserError
from hsd.trainer.runlock import LOCK_NAME, RunLock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait_for_owner(lock: Path, pid: int, process: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            owner = json.loads(lock.read_text())
            if owner["pid"] == pid:
                return owner
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{lock} never named pid {pid}")


def _holder(directory: Path) -> subprocess.Popen:
    """Another process that holds the directory's lock until it is killed."""
    code = (
        "import time; from hsd.trainer.runlock import RunLock; "
        f"lock = RunLock({str(directory)!r}); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_second_hsd_train_on_a_busy_output_dir_fails_at_once_and_a_killed_runs_lock_is_taken_over(
    tiny_model_dir, tmp_path
):
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(8))
    )
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {tiny_model_dir}\ndataset: {data}\noutput_dir: {out}\nmax_steps: 10000\n"
        "per_device_train_batch_size: 4\nnum_generations: 4\nmax_completion_length: 8\nuse_cpu: true\n"
        "report_to: []\nsave_steps: 100000\n"
    )
    command = [sys.executable, "-m", "hsd", "train", "--config", str(recipe)]
    first = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        owner = _wait_for_owner(out / LOCK_NAME, first.pid, first)
        assert owner["host"] == socket.gethostname()
        second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # refused while the first run trains: it did not wait for it
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert (
            f"output_dir {out} is in use by another run (pid {first.pid} on host {owner['host']}"
            in second.stderr
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # killed: the lock file stays behind
    third = subprocess.run(
        [*command, "--max_steps", "1"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr
    assert f"taking over the stale run lock {out / LOCK_NAME} of pid {first.pid}" in third.stderr
    assert not (out / LOCK_NAME).exists()  # released when the run ended


def test_a_held_lock_refuses_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"is in use by another run \(pid {holder.pid} on host "):
            RunLock(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        holder.wait()
    lock = RunLock(tmp_path)
    assert (
        f"taking over the stale run lock {tmp_path / LOCK_NAME} of pid {holder.pid} on host"
        in capsys.readouterr().err
    )
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    again = RunLock(tmp_path)  # the same process building again on the directory replaces its own lock
    assert "stale" not in capsys.readouterr().err
    lock.release()  # a replaced lock's release leaves the new one alone
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    again.release()
    assert not (tmp_path / LOCK_NAME).exists()
