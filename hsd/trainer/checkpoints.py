"""Checkpoints that are complete or absent: written into a staging folder, marked complete, renamed into place.

A checkpoint counts only with its marker (`hsd_complete.json`, the size of every file); at start the newest
checkpoint whose files all match their marker and open is resumed from, and every one skipped is named with
the file and the reason. HSD's own state (peer draws, teacher weights) is saved beside the model.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Sampler

from hsd.trainer.guards import NonFiniteWeightsError, RunStopped

logger = logging.getLogger(__name__)

MARKER = "hsd_complete.json"
STATE = "hsd_state.json"
TEACHER = "teacher.safetensors"
STAGING = ".incomplete-checkpoints"  # under output_dir; removed at start and after a failed save
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left", "storagefull", "os error 28", "disk quota")


class CheckpointSaveError(RunStopped):
    """A checkpoint could not be written; nothing of it is left behind."""


class CheckpointLoadError(RunStopped):
    """The checkpoint asked for by path is incomplete or unreadable."""


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `run_dir`, highest N first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path, step: int) -> None:
    """Flush every file of `folder` to disk, then write the marker that lists them with their sizes."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[str(path.relative_to(folder))] = path.stat().st_size
    marker = folder / MARKER
    marker.write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync(marker)
    _fsync(folder)


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint file cannot be opened as what its name says (header / index only), else None."""
    name = path.name
    try:
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif name.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(path) as z:  # torch.save's format: a zip whose index sits at the end
                z.namelist()
        elif name.endswith(".json"):
            json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - the reason is reported, the checkpoint skipped
        return f"{name} cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete, readable checkpoint (naming the file), or None when it is."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        return f"{MARKER} is missing (the save did not finish)"
    try:
        listed = json.loads(marker.read_text())["files"]
    except Exception as exc:  # noqa: BLE001
        return f"{MARKER} cannot be read ({type(exc).__name__}: {exc})"
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            what = "empty" if actual == 0 else "truncated" if actual < size else "longer than written"
            return f"{name} is {what} ({actual} bytes, {size} when saved)"
        problem = _unreadable(path)
        if problem:
            return problem
    return None


def newest_good_checkpoint(run_dir: Path, warn=logger.warning) -> Path | None:
    """The newest checkpoint of `run_dir` without a problem; each newer one is reported through `warn`."""
    for folder in checkpoints_newest_first(run_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        warn(f"skipping {folder}: {problem}")
    return None


def resolve_resume(resume, run_dir: Path, warn=logger.warning) -> str | None:
    """What to hand to `Trainer.train`: True -> the newest good checkpoint (None if there is none);
    a path -> that path if it is good, else `CheckpointLoadError` naming the file; None/False -> None."""
    if resume is None or resume is False:
        return None
    if resume is True:
        good = newest_good_checkpoint(run_dir, warn)
        if good is None and checkpoints_newest_first(run_dir):
            warn(f"no usable checkpoint in {run_dir}: starting from the beginning")
        return None if good is None else str(good)
    problem = checkpoint_problem(Path(resume))
    if problem:
        raise CheckpointLoadError(f"cannot resume from {resume}: {problem}")
    return str(resume)


def remove_staging(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / STAGING, ignore_errors=True)


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed save ran out of space: ENOSPC/EDQUOT anywhere in the chain, a message saying so, or
    a torch zip-writer failure ("unexpected pos") on a file system with under 64 MiB free."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        text = str(seen).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return True
        if "unexpected pos" in text or "failed writing" in text:
            try:
                return shutil.disk_usage(folder).free < 64 << 20
            except OSError:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def staged_checkpoint(run_dir: Path, step: int, is_main: bool, wait_for_everyone):
    """Yield the staging run folder; on success rename `checkpoint-step` from it into `run_dir`.

    Every process writes into the staging folder; after all are done the main process writes the marker and
    renames. On failure the staging folder is removed and `CheckpointSaveError` says why, and which
    checkpoint is still intact.
    """
    run_dir = Path(run_dir)
    staging_run = run_dir / STAGING
    staged = staging_run / f"checkpoint-{step}"
    final = run_dir / f"checkpoint-{step}"
    try:
        if is_main:
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
        wait_for_everyone()
        yield staging_run
        wait_for_everyone()
        if is_main:
            write_marker(staged, step)
            if final.exists():  # a previous, unusable checkpoint of this step
                shutil.rmtree(final)
            os.replace(staged, final)
            _fsync(run_dir)
            shutil.rmtree(staging_run, ignore_errors=True)
        wait_for_everyone()
    except RunStopped:
        if is_main:
            shutil.rmtree(staging_run, ignore_errors=True)
        raise
    except Exception as exc:
        full = is_disk_full(exc, staging_run if staging_run.exists() else run_dir)
        if is_main:
            shutil.rmtree(staging_run, ignore_errors=True)
        intact = newest_good_checkpoint(run_dir, warn=lambda _: None)
        kept = f"{intact.name} is intact" if intact else "no earlier checkpoint exists"
        what = "no space left on device" if full else f"{type(exc).__name__}: {str(exc)[:300]}"
        raise CheckpointSaveError(f"{what} while saving checkpoint-{step} to {run_dir}; {kept}") from exc


def publish(state, run_dir: str, save_total_limit: int | None, is_main: bool) -> None:
    """After a staged checkpoint is renamed into place: the best checkpoint's path without the staging
    folder, and the oldest checkpoints beyond `save_total_limit` removed (transformers' rotation)."""
    from transformers.trainer_utils import rotate_checkpoints

    best = state.best_model_checkpoint
    if best and STAGING in best:
        state.best_model_checkpoint = best.replace(f"{STAGING}/", "")
    if is_main:
        rotate_checkpoints(run_dir, save_total_limit, state.best_model_checkpoint, True)


def refuse_nonfinite_save(nonfinite: str | None, run_dir: Path, output_dir: Path) -> None:
    """`NonFiniteWeightsError` naming the first non-finite parameter `nonfinite` (None: nothing to refuse)
    and the newest intact checkpoint of `run_dir`."""
    if nonfinite is None:
        return
    intact = newest_good_checkpoint(run_dir, warn=lambda _: None)
    raise NonFiniteWeightsError(
        f"not saving {output_dir.name}: the weights hold NaN or inf (first: {nonfinite}); "
        + (f"{intact.name} is intact" if intact else "no earlier checkpoint exists")
    )


def teacher_parameters(trainer) -> list | None:
    """The (name, parameter) pairs of the trainer's teacher weights of its own (a frozen / EMA copy or the
    teacher adapter), which a checkpoint holds; None for a teacher without weights of its own (live, adapter
    off)."""
    unwrap = trainer.accelerator.unwrap_model
    if trainer.teacher_model is not None:
        return list(unwrap(trainer.teacher_model).named_parameters())
    if trainer.adapter_teacher is not None:
        return trainer.adapter_teacher.parameters(unwrap(trainer.model))
    return None


def _teacher_layout(accelerator) -> dict:
    from hsd.trainer.engines import gathers_parameters

    return dict(rank=accelerator.process_index, sharded=gathers_parameters(accelerator))


def save_staged(trainer, run_dir: str, peer_draws: int, save_trl) -> str:
    """A checkpoint of `trainer` at its step: `save_trl(staging)` (TRL's checkpoint, written into the
    staging folder) and HSD's state, renamed into place when complete (`staged_checkpoint`), then
    `publish`ed. Returns the checkpoint's path."""
    step, main = trainer.state.global_step, trainer.args.should_save
    with staged_checkpoint(run_dir, step, main, trainer.accelerator.wait_for_everyone) as staging:
        save_trl(staging)
        save_hsd_state(
            staging / f"checkpoint-{step}",
            peer_draws,
            teacher_parameters(trainer),
            **_teacher_layout(trainer.accelerator),
        )
    publish(trainer.state, run_dir, trainer.args.save_total_limit, main)
    return str(Path(run_dir) / f"checkpoint-{step}")


def restore_hsd_state(trainer, folder: str) -> int:
    """The teacher weights of `trainer` restored from checkpoint `folder`, split as the engine splits them
    now (once the engine has prepared the model); returns the peer draws."""
    from hsd.trainer.engines import release_gathered

    owner = trainer.teacher_model if trainer.teacher_model is not None else trainer.model
    release_gathered(trainer.accelerator.unwrap_model(owner))  # FSDP2: no stale unsharded copy survives
    return load_hsd_state(folder, teacher_parameters(trainer), **_teacher_layout(trainer.accelerator))


def teacher_file(rank: int, sharded: bool) -> str:
    """`teacher.safetensors`, or one file per process when an engine splits the teacher's parameters."""
    return f"teacher-rank{rank}.safetensors" if sharded else TEACHER


def save_hsd_state(
    folder: Path, peer_draws: int, teacher: list | None = None, *, rank: int = 0, sharded: bool = False
) -> None:
    """HSD's state beyond TRL's: the peer-draw counter (process 0) and, for an EMA / frozen teacher, its
    weights (`teacher`: (name, parameter) pairs of a copy of the model or of the teacher adapter): each
    parameter's locally held piece, by name (every process when sharded, else process 0)."""
    from safetensors.torch import save_file

    from hsd.trainer.engines import local_piece

    folder = Path(folder)
    if rank == 0:
        (folder / STATE).write_text(json.dumps({"peer_draws": peer_draws}))
    if teacher is not None and (sharded or rank == 0):
        pieces = {name: local_piece(p).detach().contiguous().cpu() for name, p in teacher}
        save_file(pieces, str(folder / teacher_file(rank, sharded)))


@torch.no_grad()
def load_hsd_state(folder: Path, teacher: list | None = None, *, rank: int = 0, sharded: bool = False) -> int:
    """Restore the teacher's weights (when it has its own: (name, parameter) pairs, as saved) and return the
    peer-draw counter. Under FSDP2 the caller reshards the teacher's module first (`release_gathered`)."""
    from safetensors.torch import load_file

    from hsd.trainer import engines

    folder = Path(folder)
    state_file = folder / STATE
    if not state_file.is_file():
        logger.warning("%s has no %s: peer draws restart at 0", folder, STATE)
        return 0
    if teacher is not None:
        path = folder / teacher_file(rank, sharded)
        if not path.is_file():
            raise CheckpointLoadError(f"{folder} has no {path.name}, which teacher_weights needs to resume")
        saved = load_file(str(path))
        for name, param in teacher:
            piece = engines.local_piece(param)
            piece.copy_(saved[name].to(piece.device, piece.dtype))
        engines.regather_zero3([param for _, param in teacher])
    return int(json.loads(state_file.read_text())["peer_draws"])


class EpochSeededSampler(Sampler):
    """A shuffling sampler (TRL's RepeatSampler) whose order in epoch e depends only on (seed, e).

    TRL seeds its generator once, so epoch e is its (e+1)-th shuffle and a resumed run, with a fresh
    generator, would see another order. `set_epoch(e)` (called by the Trainer before every epoch) reseeds and
    replays e shuffles: the same order as the uninterrupted run, resumed or not.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        inner = self.sampler
        if getattr(inner, "shuffle", False) and getattr(inner, "seed", None) is not None:
            inner.generator.manual_seed(inner.seed)
            for _ in range(epoch):
                torch.randperm(inner.num_samples, generator=inner.generator)
