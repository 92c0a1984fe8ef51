"""A run stopped by a real SIGTERM after step 2 and resumed from its checkpoint reproduces the uninterrupted
run's losses step for step: peer draws, the EMA / frozen teacher, the data order and TRL's state are all saved."""

from __future__ import annotations

import json
import os
import signal

import pytest
from scripted import scripted_trainer
from transformers import TrainerCallback

from hsd.trainer.checkpoints import MARKER, STATE, TEACHER
from hsd.trainer.interrupt import EXIT_INTERRUPTED, TrainingInterrupted

STEPS = 4
RUN = dict(per_device_train_batch_size=8, max_steps=STEPS, save_strategy="no", learning_rate=5e-2)


class SignalAt(TrainerCallback):
    """Sends this process a real signal at the end of step `step`."""

    def __init__(self, step: int, signum=signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class StepsRun(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def losses(trainer) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}


def uninterrupted_and_resumed(model_dir, tmp_path, **overrides):
    whole = scripted_trainer(model_dir, tmp_path / "whole", **RUN, **overrides)
    whole.train()
    out = tmp_path / "split"
    first = scripted_trainer(model_dir, out, callbacks=[SignalAt(2)], **RUN, **overrides)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.train()
    ran = StepsRun()
    resumed = scripted_trainer(model_dir, out, callbacks=[ran], **RUN, **overrides)
    resumed.train(resume_from_checkpoint=True)
    assert ran.steps == [3, 4]  # continued from the checkpoint, not from the start
    return whole, first, resumed, stopped.value


def test_sigterm_saves_the_step_and_a_resume_reproduces_every_loss_ema_teacher(tiny_model_dir, tmp_path):
    whole, first, resumed, stopped = uninterrupted_and_resumed(
        tiny_model_dir, tmp_path, teacher_weights="ema"
    )
    assert first.state.global_step == 2
    checkpoint = tmp_path / "split" / "checkpoint-2"
    assert (checkpoint / MARKER).is_file() and (checkpoint / TEACHER).is_file()
    assert json.loads((checkpoint / STATE).read_text())["peer_draws"] == 2
    assert "SIGTERM" in str(stopped) and "resumable" in str(stopped) and str(checkpoint) in str(stopped)
    assert stopped.exit_status == EXIT_INTERRUPTED
    expected = losses(whole)
    assert sorted(expected) == [1, 2, 3, 4] and len(set(expected.values())) > 1
    assert sorted(losses(first)) == [1, 2]
    assert losses(resumed) == expected  # the checkpoint's history, then steps 3 and 4


@pytest.mark.parametrize("teacher", ["frozen", "live"])
def test_resume_reproduces_every_loss_for_a_frozen_and_a_live_teacher(tiny_model_dir, tmp_path, teacher):
    whole, first, resumed, _ = uninterrupted_and_resumed(tiny_model_dir, tmp_path, teacher_weights=teacher)
    assert losses(resumed) == losses(whole)


def test_resume_reproduces_every_grpo_loss(tiny_model_dir, tmp_path):
    whole, first, resumed, _ = uninterrupted_and_resumed(tiny_model_dir, tmp_path, method="grpo")
    expected = losses(whole)
    assert any(v != 0 for v in expected.values())
    assert losses(resumed) == expected


@pytest.mark.parametrize("teacher", ["ema", "frozen"])
def test_resume_reproduces_every_loss_of_an_adapter_run(tiny_model_dir, tmp_path, teacher):
    """LoRA: the checkpoint holds the adapter (TRL's), the EMA teacher adapter (HSD's state) and the rest;
    a frozen teacher is the adapter switched off, so it needs nothing saved."""
    from peft import LoraConfig
    from safetensors import safe_open

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    whole, first, resumed, _ = uninterrupted_and_resumed(
        tiny_model_dir, tmp_path, teacher_weights=teacher, peft_config=lora
    )
    checkpoint = tmp_path / "split" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / TEACHER).is_file() == (teacher == "ema")
    if teacher == "ema":
        with safe_open(str(checkpoint / TEACHER), framework="pt") as saved:
            assert saved.keys() and all(".hsd_teacher." in name for name in saved.keys())
    expected = losses(whole)
    assert len(set(expected.values())) > 1
    assert losses(resumed) == expected
