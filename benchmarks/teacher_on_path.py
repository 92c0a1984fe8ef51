"""How sure the peer-conditioned teacher is of a correct result digit while a failed testbed rollout is still
on its peer's path, from an `hsd analyze` run on the testbed.

    python benchmarks/teacher_on_path.py DIR [--context hsd]

DIR holds the run's rollouts.jsonl. Averages exp(log pT) and exp(log pS) of the result digits (the token after
'=') before tau; before tau the rollout equals its peer, so these digits are correct. With per-digit
probability q, a chain of n steps sampled from the teacher succeeds about q^n of the time (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--context", default="hsd")
    args = parser.parse_args()
    teacher, student = [], []
    for line in (args.dir / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        tokens, tau = row["completion_tokens"], row["tau"]
        for t in range(1, min(tau, len(tokens))):
            if tokens[t - 1] == "=":
                teacher.append(math.exp(row["teacher_logps"][args.context][t]))
                student.append(math.exp(row["student_logps"][t]))
    if not teacher:
        raise SystemExit(f"{args.dir / 'rollouts.jsonl'}: no result digit before tau")
    q = sum(teacher) / len(teacher)
    print(
        f"{len(teacher)} result digits before tau: teacher {q:.4f}, student {sum(student) / len(student):.4f}"
    )
    print("teacher^n: " + ", ".join(f"n={n}: {q**n:.3f}" for n in (4, 8)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
