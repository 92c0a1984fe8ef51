"""Teacher silence and the true error on `hsd analyze` runs, as docs/results.md's terse-answer section shows it.

    python benchmarks/terse_credit.py "value answer=runs/analyze/testbed-single" \
        "parity answer=runs/analyze/terse=runs/terse/data/parity-test-512.jsonl"

Each argument is LABEL=DIR[=DATA]: DIR holds rollouts.jsonl; DATA, for terse-answer problems, is their
JSONL file (`hsd testbed problems`), whose chains give each failure's true error position and say whether its
peer is right at every step (the math verifier scoring the terse answer knows neither; the chain task's own
verifier records the error in rollouts.jsonl). Prints the silence curve (mean |A_t| by relative position, in
fifths, per context, and the peer / answer-only ratio), the credit at the true error, and how often the parity
and half mixes' context-free and answer-only targets are right at every step (4,000 draws each).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from hsd.core.tau import abs_credit_at, mass_within, silence_curve
from hsd.tasks.chain import Chain, first_error
from hsd.tasks.datasets import load_problems
from hsd.testbed.mix import example
from hsd.testbed.model import DEFAULT_TESTBED
from hsd.testbed.terse import first_error_of

BINS = 5
EOS = "<|end|>"  # the testbed's eos, the last token of a finished rollout


def text(tokens: list[str]) -> str:
    return "".join(tokens[:-1] if tokens and tokens[-1] == EOS else tokens)


def load(directory: str, data: str | None) -> list[dict]:
    """The run's failed rollouts, each with its true error token ("error") and whether its peer is fully right."""
    rows = [json.loads(line) for line in (Path(directory) / "rollouts.jsonl").read_text().splitlines()]
    problems = {p.id: p for p in load_problems(data)} if data else {}
    for row in rows:
        problem = problems.get(row["problem_id"])
        if problem is None:  # the chain task: the analysis recorded the error; peers are not checked here
            row["error"], row["peer_right"] = row["error_position"], None
            continue
        error = first_error_of(text(row["completion_tokens"]), problem)
        row["error"] = None if error is None else error[1]  # one token per character
        row["peer_right"] = first_error_of(text(row["peer_tokens"]), problem) is None
    return rows


def silence_rows(label: str, rows: list[dict]) -> list[str]:
    curves = {c: silence_curve([r["credit"][c] for r in rows], BINS)[1] for c in ("opsd", "hsd")}
    lines = []
    for context in ("opsd", "hsd"):
        lines.append(f"| {label} | {context} | " + " | ".join(f"{v:.3f}" for v in curves[context]) + " |")
    ratios = [h / o if o else float("nan") for h, o in zip(curves["hsd"], curves["opsd"], strict=True)]
    lines.append(f"| {label} | hsd / opsd | " + " | ".join(f"{r:.1f}x" for r in ratios) + " |")
    return lines


def error_rows(label: str, rows: list[dict]) -> list[str]:
    known = [r for r in rows if r["error"] is not None]
    at_error = sum(r["tau"] == r["error"] for r in known) / max(len(known), 1)
    checked = [r["peer_right"] for r in rows if r["peer_right"] is not None]
    peers = f"{100 * sum(checked) / len(checked):.0f}%" if checked else "-"
    lines = []
    for context in ("opsd", "hsd"):
        credits, errors = [r["credit"][context] for r in known], [r["error"] for r in known]
        at, elsewhere = abs_credit_at(credits, errors)
        share = mass_within(credits, errors, (2,))[2]
        head = (
            f"| {label} | {len(rows)} | {peers} | {100 * at_error:.0f}% |"
            if context == "opsd"
            else "| | | | |"
        )
        lines.append(f"{head} {context} | {at:.3f} | {elsewhere:.3f} | {100 * share:.0f}% |")
    return lines


def mix_correct_share(context: str, form: str, draws: int = 4000) -> float:
    """The share of the `form` mix's `context` targets (default knobs, 4-step chains) right at every step."""
    rng, right = random.Random(0), 0
    for _ in range(draws):
        user, target, _ = example(
            rng, context=context, variant="single", steps=4, operand_max=DEFAULT_TESTBED.operand_max,
            error_rate=DEFAULT_TESTBED.error_rate, modulus=10, answer_form=form,
        )  # fmt: skip
        numbers = user.split("\n")[0].split(": ")[1].split()
        chain = Chain(int(numbers[0]), tuple(int(n) for n in numbers[1:]))
        error = first_error(target, chain)
        right += error is None or error[0] == len(chain.ops)  # the worked lines all right
    return right / draws


def main(argv: list[str]) -> int:
    runs = []
    for arg in argv:
        label, _, rest = arg.partition("=")
        directory, _, data = rest.partition("=")
        if not label or not directory:
            raise SystemExit(f"expected LABEL=DIR[=DATA], got {arg!r}")
        runs.append((label, load(directory, data or None)))
    fifths = " | ".join(f"t/|o| {i / BINS:.1f}-{(i + 1) / BINS:.1f}" for i in range(BINS))
    print(f"Silence curve: mean |A_t| by relative position\n\n| run | context | {fifths} |")
    print("|---|---|" + "---|" * BINS)
    for label, rows in runs:
        print("\n".join(silence_rows(label, rows)))
    print("\nAt the true error (the first wrong character of the failed rollout)\n")
    print("| run | failures | peers right at every step | tau = true error | context | mean abs A at the error "
          "| elsewhere | share within 2 of the error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, rows in runs:
        print("\n".join(error_rows(label, rows)))
    print("\nTerse mixes: targets right at every step")
    for form in ("parity", "half"):
        for context in ("none", "answer"):
            print(f"- {form}, {context}: {mix_correct_share(context, form):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
