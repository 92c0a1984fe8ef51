"""How soon each limit stops a runaway, and how much running at once saves: wall seconds beside the limit
(or beside the serial time). The tests check that the limits fire and that work runs at once
(tests/tasks/test_math_verifier.py, test_worker_pool.py, test_hostile_inputs.py, test_reward_func.py); this
script measures how fast. Prints a table and one JSON line.
Run from the repository root: python benchmarks/limits.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SLOW_ANSWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate a number with ~10^8 digits
TESTS = {"test": "def check(candidate):\n    assert candidate(2) == 3\n", "entry_point": "f"}
SLEEPY = "```python\nimport time\ndef f(x):\n    time.sleep(1.5)\n    return x + 1\n```"
CODE_TESTS = {"test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"}


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def math_timeout_in_a_thread() -> float:
    from hsd.tasks.math import verify_math, warm_workers

    warm_workers(1)
    with ThreadPoolExecutor(1) as executor:
        return timed(lambda: executor.submit(verify_math, SLOW_ANSWER, "5", timeout=1.0).result())


def worker_overrun() -> float:
    from hsd.tasks.pool import DeadlineWorker, WorkerTimeout

    worker = DeadlineWorker()
    worker.call("math", "gcd", 1, 1, timeout=30)  # started and ready

    def overrun() -> None:
        try:
            worker.call("time", "sleep", 60, timeout=0.5)
        except WorkerTimeout:
            pass

    try:
        return timed(overrun)
    finally:
        worker.close()


def two_pool_calls() -> float:
    from hsd.tasks.pool import WorkerPool

    pool = WorkerPool()
    pool.warm(2)
    threads = [threading.Thread(target=pool.call, args=("time", "sleep", 1.0), kwargs={"timeout": 30})
               for _ in range(2)]  # fmt: skip

    def both() -> None:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    try:
        return timed(both)
    finally:
        pool.close()


def two_reward_rows() -> float:
    from hsd.tasks.rewards import make_reward_func

    reward_func = make_reward_func(num_workers=2, code_timeout=2.0)
    reward_func([""], ["\\boxed{1}"], answer=["1"])  # threads started
    meta = [{"tests": CODE_TESTS}] * 2
    try:
        return timed(
            lambda: reward_func([""] * 2, [SLEEPY] * 2, answer=[""] * 2, kind=["code"] * 2, meta=meta)
        )
    finally:
        reward_func.close()


def sandbox(program: str) -> float:
    from hsd.tasks.code import run_tests

    return timed(lambda: run_tests(program, TESTS, timeout=2.0))


CASES = {  # name -> (measure, reference seconds, what the reference is)
    "math check, 1 s limit, from a thread": (math_timeout_in_a_thread, 1.0, "limit"),
    "worker call, 0.5 s limit": (worker_overrun, 0.5, "limit"),
    "sandbox: endless loop, 2 s limit": (lambda: sandbox("def f(x):\n    while True:\n        pass\n"), 2.0, "limit"),
    "sandbox: 60 s sleep, 2 s limit": (lambda: sandbox("import time\ndef f(x):\n    time.sleep(60)\n"), 2.0, "limit"),
    "2 pool calls of 1 s, 2 workers": (two_pool_calls, 2.0, "serial"),
    "2 reward rows of 1.5 s, 2 workers": (two_reward_rows, 3.0, "serial"),
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):  # cases interleaved per round: a busy spell hits all alike
        for name, (measure, _, _) in CASES.items():
            runs[name].append(measure())
    report = {"repeats": args.repeats, "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0], "cases": {}}
    print(f"{'case':40} {'wall s':>7} {'reference s':>14} {'ratio':>6}")
    for name, (_, reference, kind) in CASES.items():
        wall = sorted(runs[name])[args.repeats // 2]
        report["cases"][name] = {
            "wall_s": round(wall, 2),
            kind + "_s": reference,
            "ratio": round(wall / reference, 2),
        }
        print(f"{name:40} {wall:7.2f} {reference:5.1f} ({kind:6}) {wall / reference:6.2f}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
