"""Trainer callbacks: every logged step as one JSON line, so runs can be compared without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


class MetricsJsonlCallback(TrainerCallback):
    """Appends each `log` call (step, metrics) to a JSONL file, on the main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

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
