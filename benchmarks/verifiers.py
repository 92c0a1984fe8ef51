"""Verifier throughput: GSM8K answers and HumanEval solutions verified in parallel, printed as one JSON line.
Run from the repository root: python benchmarks/verifiers.py [--gsm8k 1000] [--humaneval 164] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hsd.tasks.code import isolation
from hsd.tasks.datasets import data_dir, load_problems
from hsd.tasks.math import warm_workers
from hsd.tasks.rewards import make_reward_func


def gsm8k_batch(count: int, data: Path) -> tuple[list[str], list[str], list[float]]:
    """Completions for the first `count` GSM8K test problems: worked solution + boxed answer, every other wrong."""
    problems = load_problems(str(data / "gsm8k" / "test.jsonl"), limit=count)
    completions, golds, expected = [], [], []
    for index, problem in enumerate(problems):
        right = index % 2 == 0
        answer = problem.answer if right else str(int(problem.answer) + 1)
        completions.append(f"{problem.reference}\nThe answer is \\boxed{{{answer}}}.")
        golds.append(problem.answer)
        expected.append(1.0 if right else 0.0)
    return completions, golds, expected


def timed_rewards(reward_func, completions: list, **columns) -> tuple[list, float]:
    started = time.perf_counter()
    rewards = reward_func(prompts=[""] * len(completions), completions=completions, **columns)
    return rewards, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=int, default=1000, help="GSM8K answers to verify")
    parser.add_argument("--humaneval", type=int, default=164, help="HumanEval solutions to run")
    parser.add_argument("--workers", type=int, default=2, help="parallel verifier workers")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: $HSD_DATA_DIR or ../shared/data"
    )
    args = parser.parse_args(argv)
    data = args.data_dir or data_dir()
    result: dict = {"workers": args.workers, "cpus": os.cpu_count()}

    warm_workers(args.workers)  # worker start-up (imports) is not part of the throughput
    completions, golds, expected = gsm8k_batch(args.gsm8k, data)
    for label, shortcut in (("gsm8k", True), ("gsm8k_mathverify", False)):
        reward_func = make_reward_func(num_workers=args.workers, math_shortcut=shortcut)
        rewards, seconds = timed_rewards(reward_func, completions, answer=golds, kind=["math"] * len(golds))
        reward_func.close()
        result[f"{label}_answers"] = len(completions)
        result[f"{label}_answers_per_s"] = round(len(completions) / seconds, 1)
        result[f"{label}_agree"] = sum(r == e for r, e in zip(rewards, expected)) / len(expected)

    problems = load_problems(str(data / "code" / "humaneval.jsonl"), limit=args.humaneval)
    completions = [f"```python\n{p.answer}\n```" for p in problems]
    reward_func = make_reward_func(num_workers=args.workers)
    rewards, seconds = timed_rewards(
        reward_func, completions, answer=[p.answer for p in problems], kind=["code"] * len(problems),
        meta=[json.dumps(p.meta) for p in problems],
    )  # fmt: skip
    reward_func.close()
    result["humaneval_solutions"] = len(problems)
    result["humaneval_solutions_per_s"] = round(len(problems) / seconds, 2)
    result["humaneval_pass_rate"] = sum(r == 1.0 for r in rewards) / len(rewards)
    namespaces = [a.lstrip("-") for a in isolation()["prefix"][1:]]
    result["sandbox_namespaces"] = [n for n in namespaces if n in ("user", "net", "pid", "mount")]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
