"""The top kernels of one HSD step and one GRPO step (torch.profiler), on `hsd bench`'s fixed batch.

    python benchmarks/gpu/profile_step.py [--device cuda] [--model-config qwen3-1.7b] [--batch 4]
        [--group-size 8] [--completion-len 1024] [--methods hsd,grpo] [--top 15] [--out profile.json]

Each method is an `HSDTrainer` running its real `train()` for two steps (the first warms up); the second
step runs under torch.profiler. The report lists the `--top` operators and kernels by their own time on
the device (CUDA time on a GPU, CPU time on a CPU), with counts and their share of the step's total.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from hsd.bench import fixtures, meter, step


class ProfileLastStep(TrainerCallback):
    """torch.profiler around the last of `steps` steps (the earlier ones warm up)."""

    def __init__(self, steps: int, device: str):
        self.steps, self.device, self.seen = steps, device, 0
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        self.profiler = profile(activities=activities)

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen += 1
        if self.seen == self.steps:
            meter.synchronize(self.device)
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seen == self.steps:
            meter.synchronize(self.device)
            self.profiler.__exit__(None, None, None)


def top_kernels(profiler, device: str, top: int) -> dict:
    """The `top` events by own device time (CPU time on a CPU), and the total over all events."""
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    events = [e for e in profiler.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return {
        "time": key,
        "total_ms": total / 1000,
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_ms": getattr(e, key) / 1000,
                "share": round(getattr(e, key) / total, 4) if total else None,
            }
            for e in ranked
        ],
    }


def profile_method(setup: step.BenchSetup, method: str, top: int) -> dict:
    tokenizer = fixtures.build_tokenizer(fixtures.model_config(setup.model_config).vocab_size)
    batch = fixtures.fixed_batch(
        tokenizer, setup.batch, setup.group_size, setup.completion_len, seed=setup.seed
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = step.build_hsd_trainer(setup, method, tokenizer, batch, out)
        callback = ProfileLastStep(setup.warmup + setup.repeats, setup.device)
        trainer.add_callback(callback)
        trainer.train()
        result = top_kernels(callback.profiler, setup.device, top)
    del trainer
    gc.collect()
    if setup.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-config", default="qwen3-1.7b")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--completion-len", type=int, default=1024)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--methods", default="hsd,grpo")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", help="write the JSON report here (it is printed either way)")
    args = parser.parse_args()
    setup = step.BenchSetup(
        model_config=args.model_config,
        random_init=args.random_init,
        batch=args.batch,
        group_size=args.group_size,
        completion_len=args.completion_len,
        repeats=1,
        warmup=1,
        device=args.device,
        dtype=args.dtype,
    )
    setup.check()
    report = {"setup": {**vars(args)}, "methods": {}}
    for method in args.methods.split(","):
        result = profile_method(setup, method, args.top)
        report["methods"][method] = result
        print(f"== {method}: {result['time']} over the step {result['total_ms']:.1f} ms")
        for row in result["top"]:
            print(f"{row['self_ms']:10.2f} ms {row['share']:7.2%} {row['calls']:6d}  {row['name'][:90]}")
        if args.out:  # written after each method, so a later failure keeps the earlier profile
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
