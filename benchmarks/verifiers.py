"""Verifier throughput on the real data, verified in parallel through the reward function; one JSON line out.
Run from the repository root: python benchmarks/verifiers.py [--gsm8k 1000] [--humaneval 164] [--workers 2]
The benchmarks come by name: from --data-dir (default $HSD_DATA_DIR) when it holds them, else from the hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from hsd.core.peers import SUCCESS_THRESHOLD
from hsd.tasks.code import isolation
from hsd.tasks.datasets import load_problems
from hsd.tasks.math import warm_workers
from hsd.tasks.rewards import make_reward_func


def gsm8k_batch(count: int, data: str | None) -> tuple[list[str], list[str], list[float]]:
    """Completions for the first `count` GSM8K test problems: worked solution + boxed answer, every other wrong."""
    problems = load_problems("gsm8k", limit=count, data_dir=data)
    completions, golds, expected = [], [], []
    for index, problem in enumerate(problems):
        right = index % 2 == 0
        answer = problem.answer if right else str(int(problem.answer) + 1)
        completions.append(f"{problem.reference}\nThe answer is \\boxed{{{answer}}}.")
        golds.append(problem.answer)
        expected.append(1.0 if right else 0.0)
    return completions, golds, expected


def score(workers: int, completions: list, problems_or_answers, **options) -> tuple[list, float]:
    """Rewards for a batch through the TRL reward function, and the seconds it took."""
    reward_func = make_reward_func(num_workers=workers, **options)
    if problems_or_answers and not isinstance(problems_or_answers[0], str):
        problems = problems_or_answers
        columns = dict(answer=[p.answer for p in problems], kind=[p.kind for p in problems],
                       meta=[json.dumps(p.meta) for p in problems])  # fmt: skip
    else:
        columns = dict(answer=list(problems_or_answers), kind=["math"] * len(problems_or_answers))
    started = time.perf_counter()
    rewards = reward_func(prompts=[""] * len(completions), completions=completions, **columns)
    seconds = time.perf_counter() - started
    reward_func.close()
    return rewards, seconds


def solved(problems) -> list[str]:
    return [f"```python\n{p.answer}\n```" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", type=int, default=1000, help="GSM8K answers to verify (0: skip)")
    parser.add_argument(
        "--humaneval", type=int, default=164, help="HumanEval reference solutions to run (0: skip)"
    )
    parser.add_argument("--mbppplus", type=int, default=0, help="MBPP+ reference solutions to run (0: skip)")
    parser.add_argument(
        "--math500", type=int, default=0, help="MATH-500 golds to verify as \\boxed{gold} (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel verifier workers")
    parser.add_argument(
        "--data-dir", default=None, help="local copies of the benchmarks (default: $HSD_DATA_DIR)"
    )
    args = parser.parse_args(argv)
    data = args.data_dir
    result: dict = {"workers": args.workers, "cpus": os.cpu_count()}
    warm_workers(args.workers)  # worker start-up (imports) is not part of the throughput

    if args.gsm8k:
        completions, golds, expected = gsm8k_batch(args.gsm8k, data)
        for label, shortcut in (("gsm8k", True), ("gsm8k_mathverify", False)):
            rewards, seconds = score(args.workers, completions, golds, math_shortcut=shortcut)
            result[f"{label}_answers"] = len(completions)
            result[f"{label}_answers_per_s"] = round(len(completions) / seconds, 1)
            result[f"{label}_agree"] = sum(r == e for r, e in zip(rewards, expected)) / len(expected)
    if args.math500:
        problems = load_problems("math500", limit=args.math500, data_dir=data)
        completions = [f"So the answer is $\\boxed{{{p.answer}}}$." for p in problems]
        rewards, seconds = score(args.workers, completions, [p.answer for p in problems], math_shortcut=False)
        result["math500_answers"] = len(problems)
        result["math500_answers_per_s"] = round(len(problems) / seconds, 1)
        result["math500_self_verified"] = sum(r >= SUCCESS_THRESHOLD for r in rewards)
    for name, count in (("humaneval", args.humaneval), ("mbppplus", args.mbppplus)):
        if not count:
            continue
        problems = load_problems(name, limit=count, data_dir=data)
        rewards, seconds = score(args.workers, solved(problems), problems)
        result[f"{name}_solutions"] = len(problems)
        result[f"{name}_solutions_per_s"] = round(len(problems) / seconds, 2)
        result[f"{name}_passed"] = sum(r >= SUCCESS_THRESHOLD for r in rewards)
        result[f"{name}_failed"] = [p.id for p, r in zip(problems, rewards) if r < SUCCESS_THRESHOLD]
    namespaces = [a.lstrip("-") for a in isolation()["prefix"][1:]]
    result["sandbox_namespaces"] = [n for n in namespaces if n in ("user", "net", "pid", "mount")]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
