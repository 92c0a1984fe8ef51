"""Checkpoints are complete or absent: a damaged newest checkpoint is skipped (naming the file) for the previous
good one, and a full disk during a save names itself, leaves nothing behind and keeps the last checkpoint."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import uuid

import pytest
from scripted import scripted_trainer
from transformers import TrainerCallback

from hsd.trainer.checkpoints import MARKER, STAGING, CheckpointLoadError, CheckpointSaveError, resolve_resume

RUN = dict(per_device_train_batch_size=8, save_strategy="steps", save_steps=1)


class StepsRun(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.fixture(scope="module")
def two_checkpoints(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-checkpoints")
    scripted_trainer(tiny_model_dir, out, max_steps=2, **RUN).train()
    assert (out / "checkpoint-1" / MARKER).is_file() and (out / "checkpoint-2" / MARKER).is_file()
    return out


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


DAMAGE = {
    "optimizer.pt truncated": ("optimizer.pt", truncate, "optimizer.pt is truncated"),
    "optimizer.pt emptied": ("optimizer.pt", empty, "optimizer.pt is empty"),
    "optimizer.pt garbage": ("optimizer.pt", garbage, "optimizer.pt cannot be read (BadZipFile"),
    "model truncated": ("model.safetensors", truncate, "model.safetensors is truncated"),
    "marker missing": (MARKER, lambda p: p.unlink(), f"{MARKER} is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
    tiny_model_dir, two_checkpoints, tmp_path, caplog, damage
):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    name, spoil, reason = DAMAGE[damage]
    spoil(out / "checkpoint-2" / name)
    ran = StepsRun()
    trainer = scripted_trainer(tiny_model_dir, out, max_steps=3, callbacks=[ran], **RUN)
    with caplog.at_level(logging.WARNING, logger="hsd.trainer.checkpoints"):
        trainer.train(resume_from_checkpoint=True)
    assert f"skipping {out / 'checkpoint-2'}: {reason}" in caplog.text
    assert ran.steps == [2, 3]  # resumed from checkpoint-1
    assert (out / "checkpoint-2" / MARKER).is_file()  # step 2 saved again, complete


def test_a_damaged_checkpoint_asked_for_by_path_is_refused_naming_the_file(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    empty(out / "checkpoint-2" / "optimizer.pt")
    with pytest.raises(CheckpointLoadError, match=r"checkpoint-2: optimizer.pt is empty \(0 bytes"):
        resolve_resume(str(out / "checkpoint-2"), out)


class FillDiskAfterSave(TrainerCallback):
    """After checkpoint `step` is saved, fills the output's file system to within `leave` bytes."""

    def __init__(self, step: int, leave: int = 64 << 10):
        self.step, self.leave = step, leave

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            free = shutil.disk_usage(args.output_dir).free
            with open(os.path.join(args.output_dir, "ballast"), "wb") as f:
                f.write(b"\0" * max(free - self.leave, 0))


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (root only: elsewhere the file size limit stands in for it)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    if os.geteuid() != 0:
        yield mount, False
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount, True
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_itself_keeps_the_last_checkpoint_and_a_rerun_resumes(
    tiny_model_dir, small_disk, tmp_path
):
    disk, is_tmpfs = small_disk
    out = disk / "run"
    callbacks = [FillDiskAfterSave(1)] if is_tmpfs else []
    trainer = scripted_trainer(tiny_model_dir, out, max_steps=3, callbacks=callbacks, **RUN)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if not is_tmpfs:  # no mount allowed: files may not grow past 1 MiB once checkpoint-1 is written
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        trainer.add_callback(LimitFileSizeAfterSave(1, 64 << 10))
    try:
        with pytest.raises(CheckpointSaveError) as failed:
            trainer.train()
    finally:
        if not is_tmpfs:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, previous)
    message = str(failed.value)
    assert message.startswith("no space left on device") or not is_tmpfs, message
    assert message.endswith(f"while saving checkpoint-2 to {out}; checkpoint-1 is intact"), message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / STAGING).exists()  # nothing half-written is left to block the next run

    roomy = tmp_path / "moved"  # the same run on a disk with space
    shutil.copytree(out, roomy, ignore=shutil.ignore_patterns("ballast"))
    ran = StepsRun()
    scripted_trainer(tiny_model_dir, roomy, max_steps=3, callbacks=[ran], **RUN).train(
        resume_from_checkpoint=True
    )
    assert ran.steps == [2, 3]


class LimitFileSizeAfterSave(TrainerCallback):
    def __init__(self, step: int, size: int):
        self.step, self.size = step, size

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (self.size, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
            )
