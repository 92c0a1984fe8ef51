"""Time saved by not computing TRL's old-policy log-probs when no loss term reads them (pure HSD).

    python benchmarks/old_logps_forward.py [--model-config tiny|DIR] [--batch 4] [--group-size 8]
        [--completion-len 64] [--repeats 4]

TRL computes the old policy's log-probs (a no-grad forward over every rollout) whenever a generation batch
serves several optimizer steps (`num_iterations > 1` or `steps_per_generation` not dividing
`gradient_accumulation_steps`) and, with vLLM, for its importance weights on every batch. Only the
policy-gradient loss reads them; `HSDTrainer` skips the forward when `pg_weight == 0`. Here pure HSD runs
with `num_iterations=2` (each generation batch trains two steps) twice, steps interleaved on the same fixed
batch with scripted rollouts: as shipped (forward skipped) and with the forward forced back on. Prints the
mean batch-preparation time (rollouts, rewards, and the old-policy forward when on) and step time of each,
their ratios, and the largest relative difference between the two runs' losses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from hsd.bench.fixtures import scripted_rollouts
from hsd.bench.meter import train_in_turns
from hsd.bench.step import BenchSetup, environment, scripted_data, trainer_args
from hsd.trainer.config import HSDConfig
from hsd.trainer.trainer import HSDTrainer


class OldLogpsComputed(HSDTrainer):
    """HSDTrainer that computes TRL's old-policy log-probs even though no loss term reads them."""

    def _old_logps_unused(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="tiny", help="tiny, qwen3-0.6b, or a model directory")
    parser.add_argument("--batch", type=int, default=4, help="questions per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4, help="timed steps (even: two per generation)")
    args = parser.parse_args()
    setup = BenchSetup(
        model_config=args.model_config,
        batch=args.batch,
        group_size=args.group_size,
        completion_len=args.completion_len,
        repeats=args.repeats,
        warmup=2,
        overrides={"num_iterations": 2},
    )
    setup.check()
    tokenizer, batch = setup.fixed_inputs()
    classes = {"old logps skipped": HSDTrainer, "old logps computed": OldLogpsComputed}
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            name: cls(
                setup.model(),
                args=HSDConfig(**trainer_args(setup, f"{out}/{i}", method="hsd", **setup.overrides)),
                rollout_func=scripted_rollouts(batch, tokenizer),
                **scripted_data(batch, tokenizer),
            )
            for i, (name, cls) in enumerate(classes.items())
        }
        records = train_in_turns(trainers, setup.device, setup.warmup + setup.repeats)
        losses = {n: [h["loss"] for h in t.state.log_history if "loss" in h] for n, t in trainers.items()}
    means = {
        name: {k: round(statistics.mean(r[k] for r in steps[setup.warmup :]), 4) for k in ("prepare", "step")}
        for name, steps in records.items()
    }
    skipped, computed = means["old logps skipped"], means["old logps computed"]
    report = {
        "command": "python benchmarks/old_logps_forward.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "environment": environment(setup.device),
        "mean_s": means,
        "saved_s_per_step": round(computed["step"] - skipped["step"], 4),
        "step_time_skipped_over_computed": round(skipped["step"] / computed["step"], 4),
        "prepare_time_skipped_over_computed": round(skipped["prepare"] / computed["prepare"], 4),
        "loss_max_relative_difference": max(
            abs(a - b) / abs(b) for a, b in zip(losses["old logps skipped"], losses["old logps computed"])
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
