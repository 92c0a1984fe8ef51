"""`hsd quickstart`: HSD against GRPO on the embedded default, on a CPU, in minutes.

Builds (or reuses) the small pretrained testbed model, trains it with GRPO, the paper's HSD (Eq. 13) and HSD
with a sharpened teacher on the same problems and seed, evaluates both before and after on held-out problems, and writes the credit report of the
trained HSD model. Everything lands in one run directory.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import yaml

from hsd.compare import Arm

# The quick-start recipe, shipped as package data; configs/quickstart.yaml links to this file.
RECIPE_FILE = resources.files("hsd") / "recipes" / "quickstart.yaml"


def quickstart_recipe() -> dict:
    """The quick-start recipe (the fields of `hsd train --config configs/quickstart.yaml`)."""
    return yaml.safe_load(RECIPE_FILE.read_text())


HELD_OUT = "testbed:chain?variant=single&n=128&split=test"
# GRPO, the recipe as shipped (the paper's HSD, Eq. 13) and the setting that beat GRPO on this testbed: HSD
# with the teacher sharpened to pT^(1/0.5) (configs/quickstart-sharp-teacher.yaml; docs/results.md).
SHARP_TEACHER = Arm("hsd-sharp", "hsd", (("teacher_temperature", 0.5),))
ARMS = (Arm("grpo", "grpo"), Arm("hsd", "hsd"), SHARP_TEACHER)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="run directory")
    parser.add_argument(
        "--steps", type=int, default=quickstart_recipe()["max_steps"], help="training steps per setting"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed shared by every compared setting")
    parser.add_argument(
        "--eval-every", type=int, default=10, help="held-out evaluation every N steps (the study's protocol)"
    )
    parser.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem")
    parser.add_argument(
        "--analysis-problems", type=int, default=128, help="problems sampled for the credit report"
    )


def main(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from hsd.compare import compare
    from hsd.models import testbed_model
    from hsd.tasks.datasets import load_problems

    # The testbed model is tiny: one thread runs it as fast as two and leaves a core to the verifier workers
    # (with more threads than free cores, OpenMP's waiting makes small matrix products many times slower).
    torch.set_num_threads(1)
    console = Console()
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]hsd quickstart: GRPO, HSD and HSD with a sharpened teacher on the testbed")
    model_dir = testbed_model("testbed", announce=console.print)
    console.print(f"testbed model: {model_dir}  ({time.time() - start:.0f}s)")
    recipe = {**quickstart_recipe(), "model": str(model_dir), "max_steps": args.steps}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    held_out = load_problems(HELD_OUT)
    results = compare(recipe, list(ARMS), [args.seed], out, eval_problems=held_out,
                      eval_every=args.eval_every, eval_k=args.eval_k, console=console,
                      command=f"hsd quickstart --steps {args.steps} --seed {args.seed}")  # fmt: skip

    console.print("credit report of the trained HSD model ...")
    credit_report(out / "hsd" / f"seed-{args.seed}" / "final", out / "credit", recipe, args)
    title = f"held-out accuracy (pass@1, {len(held_out)} problems x {args.eval_k} samples)"
    console.print(results_table(results, title))
    console.print(
        f"run directory: {out}/  (comparison.md, learning_curves.png, METHOD/seed-{args.seed}/"
        "{metrics.jsonl, summary.json, eval.jsonl, recipe.json, final/, runs/ (TensorBoard)}, credit/report.html)"
    )
    console.print(f"total time: {time.time() - start:.0f}s")
    return 0


def credit_report(model_dir: Path, out: Path, recipe: dict, args: argparse.Namespace) -> None:
    """`hsd analyze` of the trained model on `--analysis-problems` held-out problems, into `out`."""
    from hsd.analysis.cli import analyze
    from hsd.analysis.credit import CollectSettings
    from hsd.models import load_model, load_tokenizer
    from hsd.sampling import SamplingSettings
    from hsd.tasks.datasets import load_problems

    problems = load_problems(HELD_OUT.replace("n=128", f"n={args.analysis_problems}"))
    sampling = SamplingSettings(max_new_tokens=recipe["max_completion_length"])
    settings = CollectSettings(
        group_size=recipe["num_generations"], sampling=sampling, min_failures=64, seed=args.seed
    )
    analyze(load_model(str(model_dir)), load_tokenizer(str(model_dir)), problems, settings, out_dir=out,
            progress=False, info={"model": str(model_dir), "dataset": HELD_OUT})  # fmt: skip


def results_table(results: list[dict], title: str):
    """Each method's held-out accuracy before and after training, and its training time, as a rich table."""
    from rich.table import Table

    table = Table("method", "before", "after", "train time", title=title)
    for r in results:
        table.add_row(
            r["method"],
            f"{r['initial_accuracy']:.3f}",
            f"{r['final_accuracy']:.3f}",
            f"{r['train_seconds']:.0f}s",
        )
    return table
