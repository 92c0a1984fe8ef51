"""Trainer callbacks: every logged step as one JSON line, so runs can be compared without TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

SUMMARY_FILE = "summary.json"  # beside metrics.jsonl: transformers' end-of-run row (train_runtime, ...)


def is_summary(row: dict) -> bool:
    """Whether a logged row is transformers' end-of-run summary rather than a training step's metrics."""
    return "train_runtime" in row


def keep_rows_up_to(path: Path, step: int) -> int:
    """Drop the rows of a metrics file logged after `step` (a resumed run logs those steps again) and any
    summary row (files from before summaries went to SUMMARY_FILE); returns how many rows were dropped. The
    file is replaced atomically."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a hard kill
        if row.get("step", 0) <= step and not is_summary(row):
            kept.append(line)
    if len(kept) != len(lines):
        staged = path.with_name(path.name + ".tmp")
        staged.write_text("".join(line + "\n" for line in kept))
        os.replace(staged, path)
    return len(lines) - len(kept)


class MetricsJsonlCallback(TrainerCallback):
    """One JSON row per logged training step in a JSONL file, on the main process only.

    Several `log` calls at one step (a callback that logs held-out accuracy before the step's own row) make
    one row: the step's last row is rewritten with the new keys added. transformers' end-of-run summary goes
    to SUMMARY_FILE beside it, not into the rows. At the start of a (resumed) run, rows past its starting step
    are dropped, so no step appears twice, and an earlier run's summary is removed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.summary_path = self.path.with_name(SUMMARY_FILE)
        self._last: tuple[int, dict, int] | None = None  # (step, row, byte offset) of the row written last

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            keep_rows_up_to(self.path, state.global_step)
            self.summary_path.unlink(missing_ok=True)
            self._last = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "step": state.global_step,
            **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))},
        }
        if is_summary(record):
            staged = self.summary_path.with_name(SUMMARY_FILE + ".tmp")
            staged.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(staged, self.summary_path)
            return
        with self.path.open("ab") as f:
            if self._last is not None and self._last[0] == state.global_step:
                _, earlier, offset = self._last
                record = {**earlier, **record}
                f.truncate(offset)  # the step's row so far, replaced by the merged row below
            else:
                offset = f.tell()
            f.write((json.dumps(record) + "\n").encode())
        self._last = (state.global_step, record, offset)


class OnEvent(TrainerCallback):
    """Calls `action()` at one trainer event (`"on_train_begin"`, `"on_step_end"`, ...)."""

    def __init__(self, event: str, action):
        setattr(self, event, lambda *args, **kwargs: action())
