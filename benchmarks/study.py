"""The study in docs/results.md: every cell (a method preset plus HSDConfig overrides) x seeds on one
testbed, recipe and budget, one `hsd compare` run at a time, then the paired statistics against a baseline.

    python benchmarks/study.py run CELL [CELL ...] --seeds 0,1,2,3,4 [--testbed T] [--model-seeds M]
    python benchmarks/study.py report [CELL ...] [--report NAME] [--baseline CELL] [--testbed T] [--model-seeds M]
    python benchmarks/study.py commands CELL [--testbed T] [--model-seeds M]  # the exact hsd compare command

--model-seeds picks the testbed models (`hsd testbed build --seed M`, default 0); a model other than seed 0
keeps its runs under runs/study/[TESTBED/]model-seed-M/. A report over several models adds the paired
differences per model and pooled over models (runs/study/[TESTBED/]across-models/NAME/models.md).

Each run is `hsd compare --config configs/quickstart.yaml --methods METHOD --seeds S, --out
runs/study/[TESTBED/]CELL ...` with the testbed's model, training and held-out data (TESTBEDS: the long
chains by default, the quick start's own 4-step chains, the multi-path variant of each, and the terse-answer
chains (parity, or half, answers), whose JSONL problems `hsd testbed problems` writes first); every cell
gets the same steps, questions and rollouts (the quick-start recipe's: 30 steps of 4 questions x 8).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "study"
SEEDS = [0, 1, 2, 3, 4]
LOCK = "/tmp/hsd-study.lock"  # runs holding one lock file train one at a time
LONG_BUILD = [
    "hsd",
    "testbed",
    "build",
    "--seed",
    "0",
    "--knob",
    "steps_range=[16,16]",
    "--knob",
    "error_rate=0.05",
]


@dataclass(frozen=True)
class Testbed:
    """A testbed model and its task: the build command (its last output line is the model's path), the
    dataset URI (with {n} and {split}), the completion budget and where the runs go."""

    build: list[str]
    data: str
    max_completion_length: int
    out: Path
    problems: list[str] | None = None  # writes `data` when it is a file: this argv + --out --split --n


TERSE_DATA = "runs/study/terse/data/parity-{split}-{n}.jsonl"

TESTBEDS = {
    # 16-step chains, one correct solution per problem: where one sequence-level reward is spread thinnest
    "long": Testbed(LONG_BUILD, "testbed:chain?variant=single&steps=16&n={n}&split={split}", 128, OUT),
    # the same model on the multi-path variant (several correct solutions: what the peer rule chooses among)
    "long-multi": Testbed(
        LONG_BUILD, "testbed:chain?variant=multi&steps=16&n={n}&split={split}", 128, OUT / "multi"
    ),
    # the quick start's own testbed and task (4-step chains, 80-token completions)
    "quickstart": Testbed(
        ["hsd", "testbed", "build"],
        "testbed:chain?variant=single&n={n}&split={split}",
        80,
        OUT / "quickstart",
    ),
    "quickstart-multi": Testbed(
        ["hsd", "testbed", "build"], "testbed:chain?variant=multi&n={n}&split={split}", 80, OUT / "qs-multi"
    ),
    # the quick start's chains with a terse checked answer (the final value's parity) and a model pretrained
    # on that form, whose answer-only teacher learnt what a parity bit implies (hsd.testbed.terse)
    "terse": Testbed(
        ["hsd", "testbed", "build", "--knob", "answer_form=parity"],
        TERSE_DATA,
        80,
        OUT / "terse",
        problems=["hsd", "testbed", "problems", "--variant", "single"],
    ),
    # the same with the other terse answer: which half of 0-9 the value lies in (a flipped sign can change it)
    "terse-half": Testbed(
        ["hsd", "testbed", "build", "--knob", "answer_form=half"],
        "runs/study/terse-half/data/half-{split}-{n}.jsonl",
        80,
        OUT / "terse-half",
        problems=["hsd", "testbed", "problems", "--variant", "single", "--answer-form", "half"],
    ),
}


def datasets(validation: bool) -> dict[str, tuple[int, str]]:
    """flag -> (n, split) of the training, held-out and (when asked) validation data every cell shares."""
    sets = {"--dataset": (2048, "train"), "--eval-dataset": (128, "test")}
    return sets | ({"--validation-dataset": (128, "validation")} if validation else {})


def write_problems(testbed: Testbed, validation: bool) -> list[list[str]]:
    """Write a file-based testbed's missing data files (`testbed.problems`); returns the commands run."""
    if testbed.problems is None:
        return []
    commands = []
    for n, split in datasets(validation).values():
        path = testbed.data.format(n=n, split=split)
        if not (ROOT / path).exists():
            commands.append([*testbed.problems, "--n", str(n), "--split", split, "--out", path])
            subprocess.run(commands[-1], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return commands


def common(testbed: Testbed, validation: bool) -> list[str]:
    """The flags every cell shares on `testbed`: data, evaluation schedule and completion budget."""
    data = {flag: testbed.data.format(n=n, split=split) for flag, (n, split) in datasets(validation).items()}
    flags = [
        "--eval-every", "10", "--eval-limit", "128", "--eval-k", "4",
        "--dataset", data["--dataset"], "--eval-dataset", data["--eval-dataset"],
        "--max_completion_length", str(testbed.max_completion_length),
    ]  # fmt: skip
    return flags + (["--validation-dataset", data["--validation-dataset"]] if validation else [])


# cell -> (method preset, HSDConfig overrides); hsd cells keep the quick start's EMA teacher
CELLS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("grpo", []),
    "dapo": ("dapo", []),
    "opsd": ("opsd", []),  # answer-only self-distillation: the paper's OPSD baseline
    "hsd": ("hsd", []),
    "hsd-tt0.5": ("hsd", ["--teacher_temperature", "0.5"]),
    "hsd-tt0.25": ("hsd", ["--teacher_temperature", "0.25"]),
    "hsd-from-tau": ("hsd", ["--distill_positions", "from_tau"]),
    "hsd-window2": ("hsd", ["--distill_positions", "tau_window", "--tau_window", "2"]),
    "hsd-window8": ("hsd", ["--distill_positions", "tau_window", "--tau_window", "8"]),
    "hsd-mix": ("hsd", ["--distill_weight", "0.5", "--pg_weight", "0.5"]),
    "hsd-kl-st": ("hsd", ["--divergence", "kl_student_teacher"]),
    "hsd-no-fallback": ("hsd", ["--fallback", "false"]),
    # the sharpened teacher without the answer-only fallback (whose sharpened teacher drops long-chain runs)
    "hsd-tt0.5-no-fallback": ("hsd", ["--teacher_temperature", "0.5", "--fallback", "false"]),
    "hsd-mix-no-fallback": ("hsd", ["--distill_weight", "0.5", "--pg_weight", "0.5", "--fallback", "false"]),
    "hsd-kl-st-no-fallback": ("hsd", ["--divergence", "kl_student_teacher", "--fallback", "false"]),
    "hsd-kl-st-shortest": ("hsd", ["--divergence", "kl_student_teacher", "--peer_rule", "shortest"]),
    "hsd-kl-st-frozen": ("hsd", ["--divergence", "kl_student_teacher", "--teacher_weights", "frozen"]),
    "hsd-kl-st-no-successes": ("hsd", ["--divergence", "kl_student_teacher", "--distill_successes", "false"]),
    "hsd-kl-st-lowest-ppl": ("hsd", ["--divergence", "kl_student_teacher", "--peer_rule", "lowest_ppl"]),
    "hsd-kl-st-live": ("hsd", ["--divergence", "kl_student_teacher", "--teacher_weights", "live"]),
    "hsd-kl-st-highest-ppl": ("hsd", ["--divergence", "kl_student_teacher", "--peer_rule", "highest_ppl"]),
    "hsd-kl-st-first": ("hsd", ["--divergence", "kl_student_teacher", "--peer_rule", "first"]),
    "hsd-kl-st-peer-only": ("hsd", ["--divergence", "kl_student_teacher", "--context", "peer"]),
    "hsd-jsd": ("hsd", ["--divergence", "jsd"]),
    # 60 steps (twice every other cell's budget): the long-run row of the plateau's first report
    "grpo-60": ("grpo", ["--max_steps", "60"]),
    "hsd-60": ("hsd", ["--max_steps", "60"]),
    "hsd-kl-st-60": ("hsd", ["--divergence", "kl_student_teacher", "--max_steps", "60"]),  # the divergence ablation's third kind (alpha 0.5)
    "hsd-mix-from-tau": ("hsd", ["--distill_weight", "0.5", "--pg_weight", "0.5", "--distill_positions", "from_tau"]),
    "hsd-mix-tt0.5": ("hsd", ["--distill_weight", "0.5", "--pg_weight", "0.5", "--teacher_temperature", "0.5"]),
    # twice the budget on long chains: the candidates for ending level with GRPO (grpo-60 is the baseline)
    "hsd-tt0.5-no-fallback-60": ("hsd", ["--teacher_temperature", "0.5", "--fallback", "false", "--max_steps", "60"]),
    "hsd-mix-tt0.5-60": ("hsd", ["--distill_weight", "0.5", "--pg_weight", "0.5", "--teacher_temperature", "0.5", "--max_steps", "60"]),
    "hsd-sharper-60": ("hsd", ["--sharper_teacher_only", "true", "--max_steps", "60"]),
    "hsd-kl-st-sharper-60": ("hsd", ["--divergence", "kl_student_teacher", "--sharper_teacher_only", "true", "--max_steps", "60"]),
    "live": ("hsd", ["--teacher_weights", "live"]),
    "live-lr1e-4": ("hsd", ["--teacher_weights", "live", "--learning_rate", "1e-4"]),
    "live-clip1": ("hsd", ["--teacher_weights", "live", "--divergence_clip", "1.0"]),
    # more steps at a smaller learning rate (60 steps: twice the budget of every other cell)
    "live-lr1e-4-60": ("hsd", ["--teacher_weights", "live", "--learning_rate", "1e-4", "--max_steps", "60"]),
    "live-lr3e-5-60": ("hsd", ["--teacher_weights", "live", "--learning_rate", "3e-5", "--max_steps", "60"]),
    "live-tt0.5": ("hsd", ["--teacher_weights", "live", "--teacher_temperature", "0.5"]),
    "live-from-tau": ("hsd", ["--teacher_weights", "live", "--distill_positions", "from_tau"]),
    "live-mix-no-fallback": (
        "hsd",
        ["--teacher_weights", "live", "--distill_weight", "0.5", "--pg_weight", "0.5", "--fallback", "false"],
    ),
}  # fmt: skip


def with_model_seed(testbed: Testbed, seed: int) -> Testbed:
    """`testbed` with its model built from pretraining seed `seed`; runs of a model other than seed 0 go to
    their own directory."""
    build = list(testbed.build)
    if "--seed" in build:
        del build[build.index("--seed") : build.index("--seed") + 2]
    out = testbed.out / f"model-seed-{seed}" if seed else testbed.out
    return dataclasses.replace(testbed, build=[*build, "--seed", str(seed)], out=out)


def model_dir(testbed: Testbed) -> str:
    """The testbed's model (built once, then read from the cache: the last line is its path)."""
    out = subprocess.run(testbed.build, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def command(testbed: Testbed, cell: str, seeds: str, model: str, validation: bool = True) -> list[str]:
    method, overrides = CELLS[cell]
    return [
        "hsd", "compare", "--config", "configs/quickstart.yaml", "--methods", method, "--seeds", seeds,
        "--out", str((testbed.out / cell).relative_to(ROOT)), "--model", model, *common(testbed, validation),
        *overrides,
    ]  # fmt: skip


def run(
    testbed: Testbed, cells: list[str], seeds: list[int], validation: bool = True, lock: str = LOCK
) -> None:
    """One training at a time, one torch thread, under `lock` (seed-major: every cell gets seed 0 before any
    gets seed 1)."""
    model = model_dir(testbed)
    for argv in write_problems(testbed, validation):
        print(shlex.join(argv), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for seed in seeds:
        for cell in cells:
            if (testbed.out / cell / CELLS[cell][0] / f"seed-{seed}" / "done.json").exists():
                continue
            argv = ["flock", lock, *command(testbed, cell, f"{seed},", model, validation)]
            print(shlex.join(argv), flush=True)
            subprocess.run(argv, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def finished(out: Path, cell: str, seeds: list[int]) -> list[Path]:
    """The run directories of `cell` under `out` that finished, for the given seeds."""
    runs = [out / cell / CELLS[cell][0] / f"seed-{seed}" for seed in seeds]
    return [run for run in runs if (run / "done.json").exists()]


def load(out: Path, cells: list[str], seeds: list[int]) -> list[dict]:
    """Every finished run of the cells, labelled with its cell as the method (for `write_comparison`)."""
    results = []
    for cell in cells:
        for run_dir in finished(out, cell, seeds):
            done = run_dir / "done.json"
            run = json.loads(done.read_text())
            results.append({**run, "method": cell, "run_dir": str(done.parent)})
    return results


def report_argv(testbed_name: str, cells: list[str], seeds: list[int], name: str, baseline: str, models):
    """The study.py command line that writes this report."""
    argv = ["python", "benchmarks/study.py", "report", *cells, "--report", name, "--baseline", baseline]
    if testbed_name != "long":
        argv += ["--testbed", testbed_name]
    if seeds != SEEDS:
        argv += ["--seeds", ",".join(map(str, seeds))]
    if list(models) != [0]:
        argv += ["--model-seeds", ",".join(map(str, models))]
    return argv


def report(
    testbed_name: str,
    cells: list[str],
    seeds: list[int],
    name: str = "report",
    baseline: str = "grpo",
    model_seed: int = 0,
    argv: list[str] | None = None,
):
    from hsd.compare import write_comparison

    testbed = with_model_seed(TESTBEDS[testbed_name], model_seed)
    results = load(testbed.out, cells, seeds)
    if not results:
        print(f"no finished runs of {cells} under {testbed.out}")
        return
    out = testbed.out / name
    out.mkdir(parents=True, exist_ok=True)
    argv = argv or report_argv(testbed_name, cells, seeds, name, baseline, [model_seed])
    write_comparison(results, out, baseline=baseline, command=shlex.join(argv))
    lines = diagnostics(testbed.out, cells, seeds, out)
    (out / "diagnostics.md").write_text("\n".join(lines) + "\n")
    (out / "per_seed.md").write_text("\n".join(per_seed(testbed.out, cells, seeds)) + "\n")
    print((out / "comparison.md").read_text())
    print((out / "per_seed.md").read_text())
    print("\n".join(lines))


def per_seed(runs: Path, cells: list[str], seeds: list[int]) -> list[str]:
    """Each cell's held-out accuracy at every evaluation, one column per seed (markdown)."""
    curves = {
        (cell, int(run.name.split("-")[1])): [
            json.loads(line)["accuracy"] for line in (run / "eval.jsonl").read_text().splitlines()
        ]
        for cell in cells
        for run in finished(runs, cell, seeds)
    }
    seeds = sorted({seed for _, seed in curves})
    lines = ["| cell | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for cell in cells:
        row = [" / ".join(f"{a:.3f}".lstrip("0") for a in curves.get((cell, s), [])) or "-" for s in seeds]
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    return lines


MEASURES = {"final": "final_accuracy", "AUC": "auc_accuracy"}
# Runs whose directories are not kept, as their report printed them (per_seed.md: test accuracy at steps
# 0 / 10 / 20 / 30): the quick-start model (`hsd testbed build`, seed 0) at run seeds 5-9, docs/results.md
# "Confirmation on new seeds" (python benchmarks/study.py run grpo hsd-tt0.5 hsd-kl-st --testbed quickstart
# --seeds 5,6,7,8,9 --no-validation); the trainer has not changed since. Used where a model has no run here.
RECORDED = {
    ("quickstart", 0): {
        "seeds": [5, 6, 7, 8, 9],
        "grpo": [(.449, .830, .881, .875), (.410, .799, .865, .865), (.451, .805, .830, .898),
                 (.436, .770, .895, .895), (.434, .807, .879, .867)],
        "hsd-tt0.5": [(.449, .867, .916, .893), (.410, .865, .912, .936), (.451, .861, .900, .939),
                      (.436, .854, .938, .930), (.434, .869, .918, .943)],
        "hsd-kl-st": [(.449, .861, .893, .891), (.410, .869, .881, .904), (.451, .869, .900, .938),
                      (.436, .852, .926, .916), (.434, .852, .900, .918)],
    },
}  # fmt: skip


def model_runs(testbed_name: str, cells: list[str], seeds: list[int], models: list[int]):
    """(cell, model, seed) -> run summary for every finished run, completed by a model's `RECORDED` curves
    where it has no run for that cell and seed; per model the label that says which, and per rerun recorded
    run whether its curve came out the same (to the 3 decimals recorded)."""
    from hsd.stats import curve_auc

    runs, labels, reproduced = {}, {}, {}
    for model in models:
        found = {
            (r["method"], r["seed"]): r
            for r in load(with_model_seed(TESTBEDS[testbed_name], model).out, cells, seeds)
        }
        record = RECORDED.get((testbed_name, model), {})
        used = 0
        for cell in cells:
            for seed, values in zip(record.get("seeds", ()), record.get(cell, ()), strict=False):
                if (cell, seed) in found:
                    curve = [round(a, 3) for _, a in found[cell, seed]["accuracy_curve"]]
                    reproduced[cell, model, seed] = curve == list(values)
                    continue
                curve = list(zip((0, 10, 20, 30), values, strict=True))
                found[cell, seed] = {"final_accuracy": values[-1], "auc_accuracy": curve_auc(curve)}
                used += 1
        runs |= {(cell, model, seed): run for (cell, seed), run in found.items()}
        labels[model] = f"seed {model}" + (
            f" ({used} recorded runs, seeds {','.join(map(str, record['seeds']))})" if used else ""
        )
    return runs, labels, reproduced


def _difference_cells(ours: list[float], theirs: list[float], entry: dict, measure: str) -> list[str]:
    from hsd.stats import paired_difference

    diff = paired_difference(ours, theirs)
    entry[measure] = dataclasses.asdict(diff)
    return [f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]", f"{diff.p_value:.2g}"]


def across_models(testbed_name: str, cells: list[str], seeds: list[int], models: list[int], baseline: str):
    """Each cell minus `baseline` on every testbed model (paired over the run seeds), and pooled over models
    two ways: a paired t over all model x seed pairs (each pair one unit; ignores that seeds on one model
    share it), and a t over the per-model mean differences (the model as the unit, len(models) - 1 df).
    Returns (markdown lines, JSON-able dict)."""
    from hsd.stats import mean_std

    runs, labels, reproduced = model_runs(testbed_name, cells, seeds, models)
    header = f"| cell | testbed model | {baseline} final | cell final |"
    header += "".join(f" {m} - {baseline} [95% CI] | p |" for m in MEASURES) + " pairs |"
    lines, data = [header, "|---" * 9 + "|"], {}
    for cell in [c for c in cells if c != baseline]:
        pairs = {m: sorted(s for c, m_, s in runs if c == cell and m_ == m and (baseline, m, s) in runs)
                 for m in models}  # fmt: skip
        every = [(m, s) for m in models for s in pairs[m]]
        rows = [(labels[m], [(m, s) for s in pairs[m]]) for m in models if pairs[m]]
        rows.append((f"pooled: {len(every)} model x seed pairs (paired t)", every))
        data[cell] = {}
        for label, keys in rows:
            entry = {"pairs": len(keys)}
            cells_ = [
                "{:.3f} +/- {:.3f}".format(*mean_std(runs[side, *k]["final_accuracy"] for k in keys))
                for side in (baseline, cell)
            ]
            for measure, key in MEASURES.items():
                ours, theirs = ([runs[side, *k][key] for k in keys] for side in (cell, baseline))
                cells_ += _difference_cells(ours, theirs, entry, measure)
            data[cell][label] = entry
            lines.append(f"| {cell} | {label} | " + " | ".join(cells_) + f" | {len(keys)} |")
        unit = [m for m in models if len(pairs[m]) >= 2]
        entry, cells_ = {"models": unit}, []
        for measure, key in MEASURES.items():
            ours, theirs = (
                [statistics.fmean(runs[side, m, s][key] for s in pairs[m]) for m in unit]
                for side in (cell, baseline)
            )
            cells_ += _difference_cells(ours, theirs, entry, measure)
        label = f"pooled: {len(unit)} models as the unit (t over per-model mean differences)"
        data[cell][label] = entry
        lines.append(f"| {cell} | {label} | | | " + " | ".join(cells_) + f" | {len(unit)} |")
    if reproduced:
        same = sum(reproduced.values())
        lines.append(f"\nRecorded runs rerun: {same} of {len(reproduced)} gave the recorded curve again.")
        data["recorded_rerun_same_curve"] = {f"{c}/{m}/{s}": v for (c, m, s), v in reproduced.items()}
    return lines, data


DIAGNOSTICS = ("teacher_p_token", "student_p_token", "teacher_entropy", "student_entropy")
DIAGNOSED = ("hsd", "hsd-tt0.5", "hsd-mix", "hsd-kl-st", "hsd-mix-no-fallback")  # shown in diagnostics.*
WINDOWS = {"steps 1-5": range(1, 6), "steps 26-30": range(26, 31)}


def diagnostics(runs: Path, cells: list[str], seeds: list[int], out: Path) -> list[str]:
    """The teacher / student diagnostics of each cell with a teacher: early against late means (over steps
    and seeds) as a markdown table, and per-step curves in diagnostics.png."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = ("", "/failed_at_tau", "/failed_after_tau", "/failed_no_peer")
    cells = [c for c in cells if c in DIAGNOSED]
    per_cell = {}
    for cell in cells:
        rows = []
        for run in finished(runs, cell, seeds):
            lines = (run / "metrics.jsonl").read_text().splitlines()
            rows += [json.loads(line) for line in lines if "hsd/teacher_p_token" in line]
        if rows:
            per_cell[cell] = rows
    lines = [
        "| cell | steps | region | teacher p(o_t) | student p(o_t) | teacher entropy | student entropy |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, rows in per_cell.items():
        for label, steps in WINDOWS.items():
            for region in regions:
                cells_ = []
                for name in DIAGNOSTICS:
                    values = [
                        r[f"hsd/{name}{region}"]
                        for r in rows
                        if r["step"] in steps and f"hsd/{name}{region}" in r
                    ]
                    cells_.append(f"{statistics.fmean(values):.3f}" if values else "-")
                lines.append(
                    f"| {cell} | {label} | {region.strip('/') or 'all'} | " + " | ".join(cells_) + " |"
                )
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for index, (cell, rows) in enumerate(per_cell.items()):
        steps = sorted({r["step"] for r in rows})
        for ax, (name, region) in zip(
            axes,
            (
                ("entropy", ""),
                ("p_token", "/failed_at_tau"),
                ("p_token", "/failed_after_tau"),
                ("entropy", "/failed_no_peer"),
            ),
            strict=True,
        ):
            for side, style in (("teacher", "-"), ("student", "--")):
                key = f"hsd/{side}_{name}{region}"
                means = [
                    statistics.fmean([r[key] for r in rows if r["step"] == s and key in r] or [float("nan")])
                    for s in steps
                ]
                ax.plot(steps, means, style, color=f"C{index}", label=f"{cell} {side}")
            ax.set_title(f"{name}{region or ' (all distilled positions)'}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "diagnostics.png", dpi=100)
    plt.close(fig)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "report", "commands"))
    parser.add_argument("cells", nargs="*", default=list(CELLS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds to run, or to report")
    parser.add_argument("--no-validation", action="store_true", help="skip the validation set's evaluations")
    parser.add_argument("--report", default="report", help="report directory under runs/study")
    parser.add_argument("--baseline", default="grpo", help="cell the paired differences are taken against")
    parser.add_argument(
        "--lock", default=LOCK, help=f"lock file one training at a time is held under (default {LOCK})"
    )
    parser.add_argument("--testbed", choices=TESTBEDS, default="long", help="testbed model and task")
    parser.add_argument(
        "--model-seeds", default="0", help="testbed models by pretraining seed (`hsd testbed build --seed`)"
    )
    args = parser.parse_args()
    unknown = [c for c in [*args.cells, args.baseline] if c not in CELLS]
    if unknown:
        raise SystemExit(f"study.py: unknown cell(s) {unknown}; choose from {', '.join(CELLS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    models = [int(s) for s in args.model_seeds.split(",") if s]
    for model in models:
        testbed = with_model_seed(TESTBEDS[args.testbed], model)
        if args.action == "run":
            run(testbed, args.cells, seeds, validation=not args.no_validation, lock=args.lock)
        elif args.action == "report":
            argv = report_argv(args.testbed, args.cells, seeds, args.report, args.baseline, models)
            report(args.testbed, args.cells, seeds, args.report, args.baseline, model, argv)
        else:
            if testbed.problems is not None:
                for n, split in datasets(not args.no_validation).values():
                    out = testbed.data.format(n=n, split=split)
                    print(shlex.join([*testbed.problems, "--n", str(n), "--split", split, "--out", out]))
            for cell in args.cells:
                print(shlex.join(command(testbed, cell, args.seeds + ",", "$M", not args.no_validation)))
    if args.action == "report" and len(models) > 1:
        lines, data = across_models(args.testbed, args.cells, seeds, models, args.baseline)
        out = TESTBEDS[args.testbed].out / "across-models" / args.report
        out.mkdir(parents=True, exist_ok=True)
        argv = shlex.join(report_argv(args.testbed, args.cells, seeds, args.report, args.baseline, models))
        (out / "models.md").write_text(f"`{argv}`\n\n" + "\n".join(lines) + "\n")
        (out / "models.json").write_text(json.dumps({"command": argv, "differences": data}, indent=1) + "\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
