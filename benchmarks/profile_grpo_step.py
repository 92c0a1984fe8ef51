"""Where a step of TRL's GRPOTrainer (and of HSDTrainer) spends its time: cProfile over real `train()` steps.

    python benchmarks/profile_grpo_step.py [--trainer trl-grpo|hsd|sdpo] [--steps 2] [--batch 4] ...

The fixed batch, model shapes and scripted rollouts are `hsd bench`'s; the first step is a warm-up and is
not profiled. Prints the share of the profiled time spent in each phase of the step (inclusive times of
the functions that implement it) and the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile

from transformers import TrainerCallback

from hsd.bench import fixtures, step, vs_trl

# phase -> (file fragment, function name) whose inclusive time is the phase's
PHASES = {
    "batch: _generate_and_score_completions (rollout, rewards, advantages, logging)": (
        "grpo_trainer.py",
        "_generate_and_score_completions",
    ),
    "batch: SDPO _prepare_training_batch": ("sdpo_trainer.py", "_prepare_training_batch"),
    "loss: compute_loss (forward passes, head, loss, metrics)": ("", "compute_loss"),
    "  head: TRL ChunkedLogProbFunction.forward (log-probs + entropy)": ("chunked_logprob.py", "forward"),
    "  TRL metrics: get_high_entropy_mask / gathers in _compute_loss": ("accelerator.py", "gather"),
    "  HSD teacher pass": ("passes.py", "teacher_hidden"),
    "backward: accelerator.backward": ("accelerator.py", "backward"),
    "  head backward: TRL ChunkedLogProbFunction.backward": ("chunked_logprob.py", "backward"),
    "  head backward: HSD _TeacherStudentKL.backward": ("distill.py", "backward"),
    "optimizer: clip_grad_norm_": ("accelerator.py", "clip_grad_norm_"),
    "optimizer: AdamW step": ("adamw.py", "adamw"),
    "logging: Trainer.log / _maybe_log_save_evaluate": ("trainer.py", "_maybe_log_save_evaluate"),
}


class Profiler(TrainerCallback):
    """cProfile on from the second step's start to the end of training."""

    def __init__(self):
        self.profile = cProfile.Profile()
        self.steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.steps == 1:
            self.profile.enable()
        self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.profile.disable()


def phase_times(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for phase, (fragment, name) in PHASES.items():
        total = 0.0
        for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
            if function == name and fragment in filename:
                total = max(total, cumulative)  # the outermost frame's inclusive time
        if total:
            out[phase] = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", default="trl-grpo", choices=("trl-grpo", "hsd", "sdpo"))
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up)")
    parser.add_argument("--model-config", default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()

    setup = step.BenchSetup(
        model_config=args.model_config,
        batch=args.batch,
        group_size=args.group_size,
        completion_len=args.completion_len,
        repeats=args.steps,
        warmup=1,
    )
    tokenizer = fixtures.build_tokenizer(fixtures.model_config(setup.model_config).vocab_size)
    batch = fixtures.fixed_batch(
        tokenizer, setup.batch, setup.group_size, setup.completion_len, seed=setup.seed
    )
    with tempfile.TemporaryDirectory() as out:
        if args.trainer == "trl-grpo":
            trainer = vs_trl.build_trl_grpo_trainer(setup, tokenizer, batch, out)
        elif args.trainer == "sdpo":
            trainer = vs_trl.build_sdpo_trainer(setup, tokenizer, batch, out)
        else:
            trainer = step.build_hsd_trainer(setup, "hsd", tokenizer, batch, out)
        profiler = Profiler()
        trainer.add_callback(profiler)
        trainer.train()
    stats = pstats.Stats(profiler.profile)
    total = stats.total_tt
    print(
        f"{args.trainer}: {args.steps} profiled steps, {total:.2f} s in all ({total / args.steps:.2f} s a step)"
    )
    for phase, seconds in phase_times(stats).items():
        print(f"  {seconds / args.steps:8.3f} s/step  {100 * seconds / total:5.1f}%  {phase}")
    print(f"\ntop {args.top} functions by own time:")
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
