"""Whole-chain accuracy of a study's trained models: a terse answer's reward (parity, half) also pays about half
of the wrong chains, so a difference in it understates a difference in right chains. This samples each run's
final model (and the initial model) on held-out problems and counts both.

    python benchmarks/terse_chains.py runs/study/terse grpo hsd opsd --seeds 0,1,2,3,4 [--baseline opsd]
    python benchmarks/terse_chains.py runs/study/terse-half grpo hsd opsd \
        --data runs/study/terse-half/data/half-test-128.jsonl
    python benchmarks/terse_chains.py runs/study/quickstart grpo hsd opsd \
        --data "testbed:chain?variant=single&n=128&split=test"

Per run: 128 problems x 4 samples at T = 1.0 (the study's evaluation), sampling seed 0. Prints the mean per
cell (with the share of samples whose first error is a sign flip, 6+2=8 for 6-2, which a parity cannot see),
and each cell minus the baseline paired over seeds (hsd.stats.paired_difference), for the reward and for the
chain right at every step (`hsd.testbed.terse.first_error_of`); keeps the scores in RUNS/chains.json
so that a rerun scores only the runs it has not seen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runs/study/terse/data/parity-test-128.jsonl"


def score(model_dir: str, problems) -> dict:
    """Parity reward and whole-chain accuracy of `model_dir` on `problems`, 4 samples each at T = 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hsd.tasks.rewards import verify_problem
    from hsd.testbed.measure import completion_text, sample_completions
    from hsd.testbed.terse import first_error_of

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = sample_completions(model, tokenizer, problems, 4, max_new_tokens=80, seed=0)
    reward = chain = flipped = total = 0
    for problem, group in zip(problems, rows, strict=True):
        for ids in group:
            text = completion_text(ids, tokenizer)
            reward += verify_problem(problem, text).reward
            error = first_error_of(text, problem)
            chain += error is None
            flipped += error is not None and sign_flip(text, problem, error[0])
            total += 1
    return {"reward": reward / total, "chain": chain / total, "sign_flip": flipped / total}


def sign_flip(text: str, problem, step: int) -> bool:
    """Whether a single-path completion's first wrong line applies its operation with the sign flipped (6+2=8
    for 6-2): a slip the parity never sees, since v + a and v - a differ by 2a."""
    from hsd.tasks.chain import Chain

    chain = Chain.from_meta(problem.meta)
    if step >= len(chain.ops):
        return False
    value = chain.start
    for op in chain.ops[:step]:
        value = chain.apply(value, op)
    op, lines = chain.ops[step], text.split("\n")
    return step < len(lines) and lines[step] + "\n" == chain.step_line(value, -op, chain.apply(value, -op))


def main() -> int:
    from hsd.stats import paired_difference
    from hsd.tasks.datasets import load_problems

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the study's testbed directory, e.g. runs/study/terse")
    parser.add_argument("cells", nargs="+")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--baseline", default="opsd")
    parser.add_argument(
        "--data", default=str(DATA), help=f"held-out problems (default {DATA.relative_to(ROOT)})"
    )
    args = parser.parse_args()
    problems = load_problems(args.data)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = Path(args.runs)
    saved = runs / "chains.json"
    results: dict = json.loads(saved.read_text()) if saved.exists() else {}  # a rerun scores new runs only
    for cell in args.cells:
        for seed in seeds:
            final = next((runs / cell).glob(f"*/seed-{seed}/final"), None)  # CELL/METHOD/seed-S
            if final is not None and f"{cell}/{seed}" not in results:
                results[f"{cell}/{seed}"] = score(str(final), problems)
                print(cell, seed, results[f"{cell}/{seed}"], flush=True)
    recipe = next(runs.glob("*/*/seed-*/recipe.json"), None)
    if recipe is not None and "initial" not in results:  # the model every run started from
        results["initial"] = score(json.loads(recipe.read_text())["script"]["model"], problems)
    base = args.baseline
    print(f"\n| cell | runs | reward | chain right at every step | first error a sign flip "
          f"| reward - {base} [95% CI] | p | chain - {base} [95% CI] | p |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in args.cells:
        mine = [s for s in seeds if f"{cell}/{s}" in results]
        pairs = [s for s in mine if f"{base}/{s}" in results]
        keys = ("reward", "chain", "sign_flip")
        cells = [f"{statistics.fmean(results[f'{cell}/{s}'][k] for s in mine):.3f}" for k in keys]
        for key in ("reward", "chain"):
            if cell == base or len(pairs) < 2:
                cells += ["", ""]
                continue
            d = paired_difference(
                [results[f"{cell}/{s}"][key] for s in pairs], [results[f"{base}/{s}"][key] for s in pairs]
            )
            cells += [f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]", f"{d.p_value:.2g}"]
        print(f"| {cell} | {len(mine)} | " + " | ".join(cells) + " |")
    if "initial" in results:
        print(f"\ninitial model: {results['initial']}")
    saved.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
