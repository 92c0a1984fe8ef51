"""metrics.jsonl: one row per logged training step (several log calls at a step make one row), the end-of-run
summary in summary.json, and a resumed run that rewrites neither twice."""

from __future__ import annotations

import json

from scripted import scripted_trainer
from transformers import TrainerCallback

from hsd.trainer.callbacks import SUMMARY_FILE, MetricsJsonlCallback


class LogsAtStepEnd(TrainerCallback):
    """Logs one more value at the end of each step, before the step's own row, as `hsd compare`'s held-out
    accuracy does (keeping the step's own row, which a log call would cancel)."""

    trainer = None

    def on_step_end(self, args, state, control, **kwargs):
        should_log = control.should_log
        self.trainer.log({"eval/accuracy": state.global_step / 10})
        control.should_log = should_log


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(model_dir, out, max_steps: int, resume=None) -> None:
    extra = LogsAtStepEnd()
    trainer = scripted_trainer(model_dir, out, max_steps=max_steps, save_strategy="steps", save_steps=1,
                               callbacks=[MetricsJsonlCallback(out / "metrics.jsonl"), extra])  # fmt: skip
    extra.trainer = trainer
    trainer.train(resume_from_checkpoint=resume)


def test_one_row_per_step_and_the_summary_in_its_own_file(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _train(tiny_model_dir, out, max_steps=2)
    rows = _rows(out)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:  # the step's own row (loss, reward, hsd/*, time/*) and the extra value, merged
        assert {"loss", "reward", "hsd/coverage", "time/teacher", "train/skipped_nonfinite_steps"} <= set(row)
        assert row["eval/accuracy"] == row["step"] / 10
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["step"] == 2 and summary["train_runtime"] > 0 and "train_loss" in summary
    assert not any("train_runtime" in row for row in rows)

    # resumed from checkpoint-1 with one more step: steps 2 and 3 are logged again once each
    (out / "metrics.jsonl").write_text(
        (out / "metrics.jsonl").read_text() + json.dumps({"step": 2, "train_runtime": 1.0}) + "\n"
    )  # a summary row as earlier versions wrote it
    _train(tiny_model_dir, out, max_steps=3, resume=str(out / "checkpoint-1"))
    assert [row["step"] for row in _rows(out)] == [1, 2, 3]
    assert json.loads((out / SUMMARY_FILE).read_text())["step"] == 3
