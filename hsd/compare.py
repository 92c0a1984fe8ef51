"""`hsd compare`: several methods x seeds on one recipe, same model, data, seeds and step budget.

Runs go one after another into OUT/METHOD/seed-S/ (resumable: finished runs are skipped, interrupted
ones resume from their last checkpoint); then `comparison.md` and `learning_curves.png` are written.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback

ACCEPTS_OVERRIDES = True  # extra --field value pairs override the recipe for every run


# ---------------------------------------------------------------------------------------------- callbacks
class HeldOutAccuracy(TrainerCallback):
    """Every `every` optimizer steps (and at step 0): pass@1 on held-out problems, logged as eval/accuracy."""

    def __init__(
        self,
        problems,
        *,
        every: int,
        k: int,
        temperature: float,
        max_new_tokens: int,
        path: Path,
        seed: int = 0,
    ):
        self.problems, self.every, self.k, self.temperature = problems, every, k, temperature
        self.max_new_tokens, self.path, self.seed = max_new_tokens, Path(path), seed
        self.trainer = None

    def _measure(self, model, tokenizer, step: int) -> float:
        from hsd.eval import evaluate

        was_training = model.training
        model.eval()  # generation with gradient checkpointing active (train mode) runs without a KV cache
        summary = evaluate(
            model,
            tokenizer,
            self.problems,
            k=self.k,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed + step,
            progress=False,
            batch_size=256,  # one generate call for a small model; memory is not the limit here
        )
        model.train(was_training)
        accuracy = summary["pass@1"]
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "accuracy": accuracy}) + "\n")
        return accuracy

    def _done_steps(self) -> set[int]:
        if not self.path.exists():
            return set()
        return {json.loads(line)["step"] for line in self.path.read_text().splitlines() if line.strip()}

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step == 0 and 0 not in self._done_steps() and state.is_world_process_zero:
            self._measure(model, processing_class, 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if (step % self.every == 0 or step == state.max_steps) and state.is_world_process_zero:
            if step not in self._done_steps():
                accuracy = self._measure(model, processing_class, step)
                if self.trainer is not None:
                    self.trainer.log({"eval/accuracy": accuracy})


class LiveProgress(TrainerCallback):
    """One line per logged step: method, seed, step, reward, coverage, elapsed and time left."""

    def __init__(self, label: str, console=None):
        from rich.console import Console

        self.label, self.console, self.start = label, console or Console(), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.time(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs or not state.is_world_process_zero:
            return
        done = max(state.global_step - self.first_step, 1)
        elapsed = time.time() - self.start
        left = elapsed / done * (state.max_steps - state.global_step)
        coverage = logs.get("hsd/coverage")
        cov = f"coverage {coverage:.2f}" if coverage is not None else "coverage  -  "
        self.console.print(
            f"[bold]{self.label:<18}[/] step {state.global_step:>4}/{state.max_steps:<4} "
            f"reward {logs['reward']:.3f}  {cov}  elapsed {elapsed:5.0f}s  left ~{left:4.0f}s",
            soft_wrap=True,  # one line per step, also when the output is a file or a narrow terminal
        )


# ------------------------------------------------------------------------------------------------- runs
def run_method(
    recipe: dict,
    method: str,
    seed: int,
    out: Path,
    *,
    eval_problems=None,
    eval_every: int = 5,
    eval_k: int = 4,
    eval_temperature: float = 1.0,
    console=None,
) -> dict:
    """Train one (method, seed) run of `recipe` into `out`; return its summary (cached in done.json)."""
    from hsd.trainer.cli import build_trainer, load_recipe

    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    values = {**recipe, "method": method, "seed": seed, "output_dir": str(out), "disable_tqdm": True}
    script, args = load_recipe(None, values)
    (out / "resolved_config.json").write_text(
        json.dumps({"script": vars(script), "config": args.to_dict()}, indent=2, default=str)
    )
    callbacks = [LiveProgress(f"{method} seed {seed}", console)]
    held_out = None
    if eval_problems:
        held_out = HeldOutAccuracy(
            eval_problems,
            every=eval_every,
            k=eval_k,
            temperature=eval_temperature,
            max_new_tokens=args.max_completion_length,
            path=out / "eval.jsonl",
            seed=seed,
        )
        callbacks.append(held_out)
    trainer = build_trainer(script, args, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # LiveProgress prints one line per step instead
    if held_out is not None:
        held_out.trainer = trainer
    start = time.time()
    resume = True if any(out.glob("checkpoint-*")) else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out / "final"))  # safetensors
    summary = summarize_run(out)
    summary.update(method=method, seed=seed, train_seconds=time.time() - start)
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(out: Path) -> dict:
    """Accuracy curve, reward curve and median per-phase times of one run directory."""
    metrics = [m for m in _read_jsonl(out / "metrics.jsonl") if "reward" in m]
    evals = _read_jsonl(out / "eval.jsonl")
    by_step = {e["step"]: e["accuracy"] for e in evals}
    phases = {}
    for name in ("rollout", "scoring", "teacher", "update"):
        values = [m[f"time/{name}"] for m in metrics if f"time/{name}" in m]
        phases[name] = statistics.median(values) if values else None
    return {
        "accuracy_curve": sorted(by_step.items()),
        "reward_curve": [(m["step"], m["reward"]) for m in metrics],
        "initial_accuracy": by_step.get(0),
        "final_accuracy": by_step[max(by_step)] if by_step else None,
        "phase_seconds": phases,
    }


def steps_to_reach(curve: list, threshold: float) -> int | None:
    """First evaluated step whose accuracy is at least `threshold`."""
    return next((step for step, acc in curve if acc >= threshold), None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_comparison(
    results: list[dict], out: Path, *, threshold: float | None = None, command: str | None = None
) -> Path:
    """comparison.md (mean +/- std over seeds, steps to threshold, per-phase time) and learning_curves.png."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    if threshold is None:
        initial = [r["initial_accuracy"] for r in results if r.get("initial_accuracy") is not None]
        threshold = round(statistics.fmean(initial) + 0.1, 3) if initial else 0.5
    lines = ["# Method comparison", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    seeds = sorted({r["seed"] for r in results})
    lines += [
        f"Seeds: {', '.join(map(str, seeds))}. Accuracy: pass@1 on held-out problems (mean over samples), "
        f"mean +/- std over seeds. Steps to reach {threshold:.3f}: mean over the seeds that reached it "
        "(count in brackets). Phase times: median seconds per step, mean over seeds.",
        "",
        "| method | initial acc | final acc | steps to threshold | rollout s | scoring s | teacher s | update s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        init_m, _ = _mean_std([r.get("initial_accuracy") for r in runs])
        fin_m, fin_s = _mean_std([r.get("final_accuracy") for r in runs])
        reached = [s for s in (steps_to_reach(r["accuracy_curve"], threshold) for r in runs) if s is not None]
        reach = (
            f"{statistics.fmean(reached):.0f} ({len(reached)}/{len(runs)})"
            if reached
            else f"- (0/{len(runs)})"
        )
        phases = []
        for name in ("rollout", "scoring", "teacher", "update"):
            m, _ = _mean_std([r["phase_seconds"].get(name) for r in runs])
            phases.append("-" if math.isnan(m) else f"{m:.2f}")
        lines.append(
            f"| {method} | {init_m:.3f} | {fin_m:.3f} +/- {fin_s:.3f} | {reach} | {' | '.join(phases)} |"
        )
    path = out / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    plot_curves(results, out / "learning_curves.png")
    return path


def plot_curves(results: list[dict], path: Path) -> None:
    """Held-out accuracy and training reward against step, one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax, title in (
        ("accuracy_curve", axes[0], "held-out accuracy (pass@1)"),
        ("reward_curve", axes[1], "training reward"),
    ):
        for method in dict.fromkeys(r["method"] for r in results):
            curves = [dict(r[key]) for r in results if r["method"] == method]
            steps = sorted(set().union(*curves)) if curves else []
            means = [statistics.fmean(c[s] for c in curves if s in c) for s in steps]
            ax.plot(steps, means, marker="o" if key == "accuracy_curve" else None, label=method)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    recipe: dict,
    methods: list[str],
    seeds: list[int],
    out: Path,
    *,
    eval_problems=None,
    eval_every: int = 5,
    eval_k: int = 4,
    threshold: float | None = None,
    command: str | None = None,
    console=None,
) -> list[dict]:
    """Every (method, seed) run of `recipe` (sequential, resumable), then the comparison files."""
    results = []
    for seed in seeds:
        for method in methods:
            results.append(
                run_method(
                    recipe,
                    method,
                    seed,
                    out / method / f"seed-{seed}",
                    eval_problems=eval_problems,
                    eval_every=eval_every,
                    eval_k=eval_k,
                    console=console,
                )
            )
    write_comparison(results, out, threshold=threshold, command=command)
    return results


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe shared by every run (see configs/)")
    parser.add_argument("--methods", default="hsd,grpo", help="comma-separated method presets")
    parser.add_argument("--seeds", default="3", help="number of seeds N (0 .. N-1), or a list such as 0,2")
    parser.add_argument("--out", default="runs/compare", help="output directory")
    parser.add_argument("--eval-dataset", default=None, help="held-out dataset spec (default: none)")
    parser.add_argument("--eval-limit", type=int, default=128, help="held-out problems")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate every N steps")
    parser.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem")
    parser.add_argument("--threshold", type=float, default=None, help="accuracy for 'steps to reach'")
    parser.epilog = "Any other --field value pair overrides that field of the recipe for every run."


def main(args: argparse.Namespace) -> int:
    import shlex
    import sys

    import yaml

    from hsd.trainer.cli import _parse_overrides

    recipe = yaml.safe_load(Path(args.config).read_text()) or {}
    recipe.update(_parse_overrides(list(getattr(args, "overrides", []) or [])))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from hsd.trainer.config import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"hsd compare: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    eval_problems = None
    if args.eval_dataset:
        from hsd.tasks.datasets import load_problems

        eval_problems = load_problems(args.eval_dataset, limit=args.eval_limit)
    out = Path(args.out)
    seeds = (
        [int(x) for x in args.seeds.split(",") if x] if "," in args.seeds else list(range(int(args.seeds)))
    )
    compare(
        recipe,
        methods,
        seeds,
        out,
        eval_problems=eval_problems,
        eval_every=args.eval_every,
        eval_k=args.eval_k,
        threshold=args.threshold,
        command="hsd " + shlex.join(sys.argv[1:]),
    )
    print(f"hsd compare: wrote {out / 'comparison.md'} and {out / 'learning_curves.png'}")
    return 0
