"""Trainer callbacks: every logged step as one JSON line, so runs can be compared without TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback


def keep_rows_up_to(path: Path, step: int) -> int:
    """Drop the rows of a metrics file logged after `step` and the summary rows of earlier runs (a resumed run
    logs those steps again); returns how many rows were dropped. The file is replaced atomically."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a hard kill
        if row.get("step", 0) <= step and "train_runtime" not in row:
            kept.append(line)
    if len(kept) != len(lines):
        staged = path.with_name(path.name + ".tmp")
        staged.write_text("".join(line + "\n" for line in kept))
        os.replace(staged, path)
    return len(lines) - len(kept)


class MetricsJsonlCallback(TrainerCallback):
    """Appends each `log` call (step, metrics) to a JSONL file, on the main process only; at the start of a
    (resumed) run, rows past its starting step are dropped, so no step appears twice."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            keep_rows_up_to(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "step": state.global_step,
            **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
