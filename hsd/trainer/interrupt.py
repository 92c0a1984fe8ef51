"""SIGTERM / SIGINT during training: finish the current step, save a checkpoint, stop; a second signal stops at
once. Every process agrees on the step it stops after, so a multi-process run never waits on a missing peer.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
from transformers import TrainerCallback

from hsd.trainer.guards import RunStopped

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, a checkpoint saved, rerun to resume


class TrainingInterrupted(RunStopped):
    """Training stopped on a signal after saving a checkpoint; rerunning the same command resumes from it."""

    exit_status = EXIT_INTERRUPTED


class StopOnSignal(TrainerCallback):
    """Records the first SIGINT/SIGTERM; at the end of the step it asks the trainer to save and stop."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread: the default stays
        self.signum = None
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # second signal: stop now, without a checkpoint
            os.write(2, f"\nhsd: {name} again: stopping at once, without a checkpoint\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        os.write(
            2,
            f"\nhsd: {name} received: finishing this step, then saving a checkpoint and stopping "
            f"(send it again to stop at once, without a checkpoint)\n".encode(),
        )

    def _requested(self) -> bool:
        """Whether any process has been signalled (one small all-reduce per step when there are several)."""
        local = self.signum is not None
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested():
            if self.signum is None:
                self.signum = signal.SIGTERM  # another process was signalled
            control.should_save = True
            control.should_training_stop = True

    def interruption(self, step: int, checkpoint: str | None) -> TrainingInterrupted | None:
        """The error to raise after `train` returned, when it returned because of a signal."""
        if self.signum is None:
            return None
        name = signal.Signals(self.signum).name
        saved = f"saved {checkpoint}" if checkpoint else "no checkpoint saved"
        return TrainingInterrupted(
            f"interrupted by {name} after step {step}, {saved}; resumable: run the same command again to "
            f"continue from it (exit status {EXIT_INTERRUPTED})"
        )
