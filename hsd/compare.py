"""`hsd compare`: several methods x seeds on one recipe, same model, data, seeds and step budget.

Each compared setting is an `Arm`: a method preset plus the recipe fields it changes (a bare method name is
the arm of that preset, unchanged). Runs go one after another into OUT/LABEL/seed-S/ (resumable: finished runs are skipped, interrupted
ones resume from their last checkpoint); then `comparison.md` and `learning_curves.png` are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback

from hsd.core.peers import SUCCESS_THRESHOLD
from hsd.stats import curve_auc, mean_std, paired_difference

ACCEPTS_OVERRIDES = True  # extra --field value pairs override the recipe for every run
PHASES = ("rollout", "scoring", "teacher", "update")  # the timed phases of a training step (time/NAME)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One compared setting: the method preset `method` with the recipe fields `changes` (field, value)
    pairs, named `label` in its run directory, its progress lines and every table."""

    label: str
    method: str
    changes: tuple = ()


def as_arm(arm: str | Arm) -> Arm:
    return arm if isinstance(arm, Arm) else Arm(arm, arm)


# ---------------------------------------------------------------------------------------------- callbacks
@dataclasses.dataclass(frozen=True)
class HeldOutSet:
    """Problems evaluated during training: where their accuracy is appended (jsonl) and under which name it
    is logged."""

    problems: list
    path: Path
    metric: str = "eval/accuracy"


class HeldOutAccuracy(TrainerCallback):
    """Every `every` optimizer steps (and at step 0): pass@1 on each held-out set, logged under its metric.
    One callback for every set (transformers warns when a callback class is added twice)."""

    def __init__(self, sets: list[HeldOutSet], *, every: int, k: int, temperature: float, max_new_tokens: int,
                 seed: int = 0, success_threshold: float = SUCCESS_THRESHOLD):  # fmt: skip
        self.sets, self.every, self.k, self.temperature = sets, every, k, temperature
        self.max_new_tokens, self.seed, self.success_threshold = max_new_tokens, seed, success_threshold
        self.trainer = None

    def _measure(self, model, tokenizer, held_out: HeldOutSet, step: int) -> float:
        from hsd.eval import evaluate

        was_training = model.training
        model.eval()  # generation with gradient checkpointing active (train mode) runs without a KV cache
        # batch_size 256: one generate call for a small model; memory is not the limit here
        summary = evaluate(model, tokenizer, held_out.problems, k=self.k, temperature=self.temperature,
                           max_new_tokens=self.max_new_tokens, seed=self.seed + step, batch_size=256,
                           success_threshold=self.success_threshold, progress=False)  # fmt: skip
        model.train(was_training)
        accuracy = summary["pass@1"]
        with held_out.path.open("a") as f:
            f.write(json.dumps({"step": step, "accuracy": accuracy}) + "\n")
        return accuracy

    @staticmethod
    def _done_steps(held_out: HeldOutSet) -> set[int]:
        return {entry["step"] for entry in _read_jsonl(held_out.path)}

    def _measure_all(self, model, tokenizer, step: int) -> dict[str, float]:
        """Each set not yet measured at `step` (a resumed run does not measure a step twice)."""
        return {
            held_out.metric: self._measure(model, tokenizer, held_out, step)
            for held_out in self.sets
            if step not in self._done_steps(held_out)
        }

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step == 0 and state.is_world_process_zero:
            self._measure_all(model, processing_class, 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if (step % self.every == 0 or step == state.max_steps) and state.is_world_process_zero:
            accuracies = self._measure_all(model, processing_class, step)
            if accuracies and self.trainer is not None:
                should_log = control.should_log  # a log call clears it: the step's own row would be skipped
                self.trainer.log(accuracies)  # metrics.jsonl merges it into the step's row
                control.should_log = should_log


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
    arm: str | Arm,
    seed: int,
    out: Path,
    *,
    eval_problems=None,
    eval_every: int = 5,
    eval_k: int = 4,
    eval_temperature: float = 1.0,
    validation_problems=None,
    console=None,
) -> dict:
    """Train one (arm, seed) run of `recipe` into `out`; return its summary (cached in done.json).
    Held-out accuracy goes to eval.jsonl, validation accuracy (when given) to validation.jsonl."""
    arm = as_arm(arm)
    from hsd.models import weight_file_bars_off
    from hsd.trainer.cli import build_trainer, load_recipe, write_recipe

    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    values = {**recipe, **dict(arm.changes), "method": arm.method, "seed": seed, "output_dir": str(out)}
    values["disable_tqdm"] = True
    script, args = load_recipe(None, values)
    write_recipe(out, script, args)
    callbacks = [LiveProgress(f"{arm.label} seed {seed}", console)]
    sets = [
        HeldOutSet(problems, out / name, metric)
        for problems, name, metric in (
            (eval_problems, "eval.jsonl", "eval/accuracy"),
            (validation_problems, "validation.jsonl", "eval/validation_accuracy"),
        )
        if problems
    ]
    held_out = HeldOutAccuracy(
        sets, every=eval_every, k=eval_k, temperature=eval_temperature,
        max_new_tokens=args.max_completion_length, seed=seed, success_threshold=args.success_threshold,
    )  # fmt: skip
    trainer = build_trainer(script, args, callbacks=[*callbacks, held_out] if sets else callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # LiveProgress prints one line per step instead
    held_out.trainer = trainer
    start = time.time()
    resume = True if any(out.glob("checkpoint-*")) else None
    with weight_file_bars_off():  # one line per step: no "Writing model shards" bar between them
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out / "final"))  # safetensors
    summary = summarize_run(out)
    summary.update(method=arm.label, seed=seed, train_seconds=time.time() - start)
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(out: Path) -> dict:
    """Accuracy curve, reward curve and median per-phase times of one run directory."""
    metrics = [m for m in _read_jsonl(out / "metrics.jsonl") if "reward" in m]
    by_step = {e["step"]: e["accuracy"] for e in _read_jsonl(out / "eval.jsonl")}
    validation = {e["step"]: e["accuracy"] for e in _read_jsonl(out / "validation.jsonl")}
    phases = {name: [m[f"time/{name}"] for m in metrics if f"time/{name}" in m] for name in PHASES}
    return {
        "accuracy_curve": sorted(by_step.items()),
        "reward_curve": [(m["step"], m["reward"]) for m in metrics],
        "initial_accuracy": by_step.get(0),
        "final_accuracy": by_step[max(by_step)] if by_step else None,
        "auc_accuracy": curve_auc(sorted(by_step.items())),
        "validation_curve": sorted(validation.items()),
        "validation_final_accuracy": validation[max(validation)] if validation else None,
        "validation_auc_accuracy": curve_auc(sorted(validation.items())),
        "phase_seconds": {name: statistics.median(v) if v else None for name, v in phases.items()},
    }


def steps_to_reach(curve: list, threshold: float) -> int | None:
    """First evaluated step whose accuracy is at least `threshold`."""
    return next((step for step, acc in curve if acc >= threshold), None)


# split -> (final-accuracy key, area-under-curve key, curve key) of a run summary
SPLIT_KEYS = {
    "test": ("final_accuracy", "auc_accuracy", "accuracy_curve"),
    "validation": ("validation_final_accuracy", "validation_auc_accuracy", "validation_curve"),
}


def _run_value(run: dict, key: str) -> float | None:
    """A summary value, recomputed from the curve where an older done.json lacks it."""
    if key in run:
        return run[key]
    curve = run.get({auc: curve_key for _, auc, curve_key in SPLIT_KEYS.values()}.get(key))
    return curve_auc(curve) if curve else None


def paired_statistics(results: list[dict], baseline: str, split: str = "test") -> dict:
    """Per method: final and area-under-curve accuracy (mean, std, n over seeds) and, against `baseline`,
    the paired difference over the seeds both ran (method - baseline, same seed = same initial model, data
    order and evaluation samples) with its 95% t-interval and paired t-test p-value."""
    final_key, auc_key, _ = SPLIT_KEYS[split]
    by_method: dict[str, dict[int, dict]] = {}
    for run in results:
        by_method.setdefault(run["method"], {})[run["seed"]] = run
    base = by_method.get(baseline, {})
    out = {}
    for method, runs in by_method.items():
        entry = {}
        for label, key in (("final", final_key), ("auc", auc_key)):
            values = {seed: _run_value(run, key) for seed, run in runs.items()}
            values = {seed: v for seed, v in values.items() if v is not None}
            mean, std = mean_std(values.values())
            entry[label] = {"mean": mean, "std": std, "n": len(values)}
            if method == baseline:  # no difference to itself: the cells stay empty (null in JSON)
                entry[f"{label}_vs_{baseline}"] = None
                continue
            base_values = {seed: _run_value(run, key) for seed, run in base.items()}
            seeds = sorted(s for s in values if base_values.get(s) is not None)
            diff = paired_difference([values[s] for s in seeds], [base_values[s] for s in seeds])
            entry[f"{label}_vs_{baseline}"] = {**dataclasses.asdict(diff), "seeds": seeds}
        if entry["final"]["n"]:  # a method not evaluated on this split has no row
            out[method] = entry
    return out


def pairing_check(results: list[dict]) -> dict:
    """Whether every method starts from the same step-0 held-out accuracy for each seed: the same initial
    model evaluated on the same samples (the evaluation is seeded by the run's seed)."""
    initial: dict[int, set] = {}
    for run in results:
        if run.get("initial_accuracy") is not None:
            initial.setdefault(run["seed"], set()).add(run["initial_accuracy"])
    return {
        "same_initial_accuracy_per_seed": all(len(v) == 1 for v in initial.values()),
        "seeds": sorted(initial),
    }


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def statistics_lines(stats: dict, baseline: str, split: str) -> list[str]:
    """A markdown table of `paired_statistics`: mean +/- std and the paired difference to the baseline."""
    lines = [
        f"| method | final acc ({split}) | AUC acc | final - {baseline} [95% CI] | p | "
        f"AUC - {baseline} [95% CI] | p | seeds paired |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in stats.items():
        cells = [method]
        for label in ("final", "auc"):
            cells.append(f"{entry[label]['mean']:.3f} +/- {entry[label]['std']:.3f} (n={entry[label]['n']})")
        for label in ("final", "auc"):
            d = entry[f"{label}_vs_{baseline}"]  # None on the baseline's own row: empty cells
            cells += (
                [f"{_fmt(d['mean'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]", _p(d["p_value"])]
                if d
                else ["", ""]
            )
        paired = entry[f"final_vs_{baseline}"]
        cells.append(str(paired["n"]) if paired else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _method_row(method: str, runs: list[dict], threshold: float) -> str:
    """One method's row of comparison.md: initial and final accuracy, steps to `threshold`, phase times."""
    init_m, _ = mean_std([r.get("initial_accuracy") for r in runs])
    fin_m, fin_s = mean_std([r.get("final_accuracy") for r in runs])
    reached = [s for s in (steps_to_reach(r["accuracy_curve"], threshold) for r in runs) if s is not None]
    reach = (
        f"{statistics.fmean(reached):.0f} ({len(reached)}/{len(runs)})" if reached else f"- (0/{len(runs)})"
    )
    means = [mean_std([r["phase_seconds"].get(name) for r in runs])[0] for name in PHASES]
    phases = " | ".join("-" if math.isnan(m) else f"{m:.2f}" for m in means)
    return f"| {method} | {init_m:.3f} | {fin_m:.3f} +/- {fin_s:.3f} | {reach} | {phases} |"


def _paired_sections(report: dict, results: list[dict], baseline: str) -> list[str]:
    """The sections of comparison.md against `baseline`, one per split that was evaluated, and the pairing
    check; their statistics go into `report` (comparison.json)."""
    report.update(baseline=baseline, statistics={})
    lines = []
    for split in SPLIT_KEYS:
        if not any(r.get(SPLIT_KEYS[split][2]) for r in results):
            continue
        stats = paired_statistics(results, baseline, split)
        report["statistics"][split] = stats
        lines += [
            "",
            f"## Against {baseline}, {split} split",
            "",
            f"Final and area-under-curve accuracy (the curve's mean over training, trapezoids), mean +/- std "
            f"over seeds; paired difference to {baseline} over the seeds both ran (same seed: same initial "
            "model, data order and evaluation samples), with its 95% t-interval and the paired t-test's "
            "two-sided p-value.",
            "",
            *statistics_lines(stats, baseline, split),
        ]
    same = report["pairing"]["same_initial_accuracy_per_seed"]
    return lines + ["", f"Pairing check: step-0 accuracy identical across methods for every seed: {same}."]


def write_comparison(
    results: list[dict],
    out: Path,
    *,
    threshold: float | None = None,
    command: str | None = None,
    baseline: str | None = None,
) -> Path:
    """comparison.md (mean +/- std over seeds, steps to threshold, per-phase time; with `baseline`, the
    paired statistics of `paired_statistics`), comparison.json and learning_curves.png."""
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
    lines += [
        _method_row(method, [r for r in results if r["method"] == method], threshold) for method in methods
    ]
    report = {"command": command, "seeds": seeds, "runs": results, "pairing": pairing_check(results)}
    if baseline is not None:
        lines += _paired_sections(report, results, baseline)
    path = out / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=str))
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
    methods: list[str | Arm],
    seeds: list[int],
    out: Path,
    *,
    eval_problems=None,
    eval_every: int = 5,
    eval_k: int = 4,
    threshold: float | None = None,
    command: str | None = None,
    console=None,
    baseline: str | None = None,
    validation_problems=None,
) -> list[dict]:
    """Every (arm, seed) run of `recipe` (sequential, resumable), then the comparison files."""
    results = []
    for seed in seeds:
        for arm in map(as_arm, methods):
            results.append(
                run_method(
                    recipe,
                    arm,
                    seed,
                    out / arm.label / f"seed-{seed}",
                    eval_problems=eval_problems,
                    eval_every=eval_every,
                    eval_k=eval_k,
                    validation_problems=validation_problems,
                    console=console,
                )
            )
    write_comparison(results, out, threshold=threshold, command=command, baseline=baseline)
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
    parser.add_argument(
        "--baseline", default=None, help="method to pair every other against (95%% CI, paired t-test)"
    )
    parser.add_argument(
        "--validation-dataset", default=None, help="second held-out set (choose settings on it; default none)"
    )
    parser.add_argument("--data-dir", default=None,
                        help="folder holding local copies of the named benchmarks (default: $HSD_DATA_DIR), "
                             "for the held-out sets and every run's recipe")  # fmt: skip
    parser.epilog = "Any other --field value pair overrides that field of the recipe for every run."


def main(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from hsd.core.methods import METHODS
    from hsd.errors import UserError
    from hsd.trainer.cli import parse_overrides, read_recipe

    recipe = read_recipe(args.config)
    recipe.update(parse_overrides(list(getattr(args, "overrides", []) or [])))
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        recipe["data_dir"] = data_dir
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    baseline = getattr(args, "baseline", None)
    if baseline is not None and baseline not in methods:
        raise UserError(f"--baseline {baseline!r} is not one of --methods {','.join(methods)}")
    from hsd.tasks.datasets import load_problems

    eval_problems = validation_problems = None
    if args.eval_dataset:
        eval_problems = load_problems(args.eval_dataset, limit=args.eval_limit, data_dir=data_dir)
    if getattr(args, "validation_dataset", None):
        validation_problems = load_problems(args.validation_dataset, limit=args.eval_limit, data_dir=data_dir)
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
        baseline=baseline,
        validation_problems=validation_problems,
    )
    print(f"hsd compare: wrote {out / 'comparison.md'} and {out / 'learning_curves.png'}")
    return 0
