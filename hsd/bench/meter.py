"""Timing and memory of real `train()` loops: a memory meter, the trainers' turn table, per-phase clocks."""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time

from transformers import TrainerCallback


class MemoryMeter:
    """Growth of memory in use over a window: CUDA's allocated bytes on GPU, sampled RSS on CPU.

    On CPU a thread samples RSS every millisecond; glibc serves allocations of 32 MiB and more ([chunk, V]
    logits, activations) with their own mappings, which leave the resident set when freed, and the heap is
    trimmed before each step, so the growth follows the step's large tensors.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self._start = self._peak = 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def trim() -> None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return
        self._start = self._peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self.rss())

    def stop(self) -> int:
        """The largest growth above the memory in use at `start`, in bytes."""
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated()) - self._start
        self._stop.set()
        self._thread.join()
        return max(self._peak, self.rss()) - self._start


def resident_bytes(trainer) -> int:
    """Bytes a trainer holds between steps: its models' weights and buffers, gradients, optimizer state."""
    import torch

    seen: dict[int, int] = {}

    def add(tensor) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for model in (
        trainer.model,
        getattr(trainer, "ref_model", None),
        getattr(trainer, "teacher_model", None),
    ):
        if isinstance(model, torch.nn.Module):
            for tensor in [*model.parameters(), *model.buffers()]:
                add(tensor)
                add(tensor.grad)
    optimizer = getattr(trainer, "optimizer", None)
    for state in getattr(optimizer, "state", {}).values():
        for value in state.values():
            add(value)
    return sum(seen.values())


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class TurnTable:
    """Steps of several `train()` loops, each in its own thread, taken one at a time in rotating rounds.

    Round r runs one step of every trainer, in the trainers' order rotated by r, so slow phases of a
    shared machine fall on every method alike. A trainer's turn lasts from its step's start to the start
    of its next step (or the end of its training), so nothing of one trainer overlaps another's step.
    """

    def __init__(self, names: list[str], steps: int):
        self.slots = [(r, names[(r + k) % len(names)]) for r in range(steps) for k in range(len(names))]
        self.position = 0
        self.done: set[str] = set()
        self.error: BaseException | None = None
        self.holder: str | None = None
        self.condition = threading.Condition()

    def _skip_done(self) -> None:
        while self.position < len(self.slots) and self.slots[self.position][1] in self.done:
            self.position += 1

    def begin_step(self, name: str, step: int) -> None:
        with self.condition:
            self._pass(name)
            while self.error is None and self.slots[min(self.position, len(self.slots) - 1)] != (step, name):
                if self.position >= len(self.slots):
                    raise RuntimeError(f"{name} asked for step {step} beyond the {len(self.slots)} planned")
                self.condition.wait()
            if self.error is not None:
                raise RuntimeError("another trainer of the benchmark failed") from self.error
            self.holder = name

    def _pass(self, name: str) -> None:
        if self.holder == name:
            self.holder = None
            self.position += 1
            self._skip_done()
            self.condition.notify_all()

    def finish(self, name: str, error: BaseException | None = None) -> None:
        with self.condition:
            self._pass(name)
            self.done.add(name)
            if error is not None and self.error is None:
                self.error = error
            self._skip_done()
            self.condition.notify_all()


class StepClock(TrainerCallback):
    """At each step's begin and end: take the trainer's turn, reset the clocks and the memory meter, then
    append the step's phase times (from `clock`, filled by `instrument`'s wrappers) and peak memory."""

    def __init__(self, trainer, name: str, device: str, turns: TurnTable, clock: dict, records: list[dict]):
        self.trainer, self.name, self.device, self.turns = trainer, name, device, turns
        self.clock, self.records, self.meter = clock, records, MemoryMeter(device)

    def on_step_begin(self, args, state, control, **kwargs):
        self.turns.begin_step(self.name, len(self.records))
        gc.collect()
        MemoryMeter.trim()
        synchronize(self.device)
        self.clock.clear()
        self.clock["resident"] = resident_bytes(self.trainer)
        self.meter.start()
        self.clock["begin"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        end, clock = time.perf_counter(), self.clock
        growth = self.meter.stop()
        prepare, teacher = clock.get("prepare", 0.0), clock.get("teacher", 0.0)
        student = clock["training_step"] - prepare - teacher
        optimizer = end - clock["end_of_backward"]
        self.records.append(
            dict(
                prepare=prepare,
                teacher=teacher,
                student_forward_backward=student,
                optimizer=optimizer,
                update=teacher + student + optimizer,
                step=end - clock["begin"],
                peak_memory=clock["resident"] + growth,
            )
        )


def instrument(trainer, name: str, device: str, turns: TurnTable) -> list[dict]:
    """Per-step phase times and peak memory of the real `trainer.train()`: wraps the instance's
    `_prepare_inputs` and `training_step`, and takes turns at step begin / end. Returns the list it fills."""
    records: list[dict] = []
    clock: dict[str, float] = {}
    prepare_inputs, training_step = trainer._prepare_inputs, trainer.training_step

    def timed_prepare(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = prepare_inputs(*args, **kwargs)
        synchronize(device)
        clock["prepare"] = clock.get("prepare", 0.0) + time.perf_counter() - start
        return out

    def timed_training_step(*args, **kwargs):
        start = time.perf_counter()
        out = training_step(*args, **kwargs)
        synchronize(device)
        clock["training_step"] = time.perf_counter() - start
        phases = getattr(trainer, "phases", None)  # HSDTrainer's phase times (TRL's trainers have none)
        clock["teacher"] = phases.seconds.get("teacher", 0.0) if phases is not None else 0.0
        clock["end_of_backward"] = time.perf_counter()
        return out

    trainer._prepare_inputs = timed_prepare
    trainer.training_step = timed_training_step
    trainer.synchronize_timers = device.startswith("cuda")
    trainer.add_callback(StepClock(trainer, name, device, turns, clock, records))
    return records


def train_in_turns(trainers: dict, device: str, steps: int) -> dict[str, list[dict]]:
    """Run every trainer's `train()` for `steps` steps, interleaved step by step; per-step records."""
    turns = TurnTable(list(trainers), steps)
    records = {name: instrument(trainer, name, device, turns) for name, trainer in trainers.items()}
    errors: dict[str, BaseException] = {}

    def run(name, trainer):
        try:
            trainer.train()
        except BaseException as error:  # re-raised in the main thread below
            errors[name] = error
            turns.finish(name, error)
        else:
            turns.finish(name)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in trainers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"the {name} trainer failed: {type(error).__name__}: {error}") from error
    return records


def summarize(records: list[dict], warmup: int) -> dict:
    """Medians over the timed steps (peak memory: the largest), and every step for reference."""
    timed = records[warmup:]
    if not timed:
        raise RuntimeError("no timed step was recorded")
    median = {k: statistics.median(r[k] for r in timed) for k in timed[0] if k != "peak_memory"}
    return {"median_s": median, "peak_memory_bytes": max(r["peak_memory"] for r in timed), "steps": records}
