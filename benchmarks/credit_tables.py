"""Markdown tables from `hsd analyze` outputs, as docs/results.md ("Credit analysis") shows them.

    python benchmarks/credit_tables.py "SmolLM2 T=1.0=runs/an/smol-t10" "testbed single=runs/an/tb-single" ...

Each argument is LABEL=DIR, DIR holding a credit.json. Prints three tables: the share of |A_t| within
|t - tau| <= w per context with the random-position control beside it, the same restricted to tau > 0, and
the counts, tau statistics and mean |A_t| at tau and elsewhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WIDTHS = ("2", "4", "8", "16", "32")


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def mass_rows(label: str, credit: dict, key: str, control: str) -> list[str]:
    rows = []
    for context in credit["contexts"]:
        real, rand = credit[key].get(context) or {}, credit[control].get(context) or {}
        cells = " | ".join(f"{pct(real.get(w))} ({pct(rand.get(w))})" for w in WIDTHS)
        rows.append(f"| {label} | {context} | {cells} |")
    return rows


def main(argv: list[str]) -> int:
    runs = []
    for arg in argv:
        label, _, path = arg.rpartition("=")
        if not label:
            raise SystemExit(f"expected LABEL=DIR, got {arg!r}")
        runs.append((label, json.loads((Path(path) / "credit.json").read_text())))
    head = "| run | context | " + " | ".join(f"w = {w}" for w in WIDTHS) + " |"
    rule = "|---|---|" + "---|" * len(WIDTHS)
    for title, key, control in (
        (
            "Share of |A_t| within |t - tau| <= w (random-position control in brackets)",
            "mass_within",
            "mass_within_random",
        ),
        ("The same, failures with tau > 0 only", "mass_within_tau_pos", "mass_within_random_tau_pos"),
    ):
        print(f"{title}\n\n{head}\n{rule}")
        for label, credit in runs:
            print("\n".join(mass_rows(label, credit, key, control)))
        print()
    print(
        "| run | p | failed with a peer | tau = 0 | median tau | tau = true error | context | "
        "mean abs A at tau | elsewhere | ratio | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, credit in runs:
        counts = credit["counts"]
        p = counts["successes"] / max(counts["rollouts"], 1)
        error = (credit.get("error_position") or {}).get("tau_equals_error_share")
        for i, context in enumerate(credit["contexts"]):
            at, off = credit["abs_credit_at_tau"].get(context), credit["abs_credit_elsewhere"].get(context)
            ratio = "-" if not at or not off else f"{at / off:.1f}x"
            first = (
                f"| {label} | {p:.3f} | {counts['analysed']} | {pct(credit['tau_zero_share'])} | "
                f"{'-' if credit['median_tau'] is None else format(credit['median_tau'], '.0f')} | {pct(error)} |"
                if i == 0
                else "| | | | | | |"
            )
            wall = f"{credit.get('wall_s', 0):.0f} s" if i == 0 else ""
            at_text, off_text = ("-" if x is None else f"{x:.3f}" for x in (at, off))
            print(f"{first} {context} | {at_text} | {off_text} | {ratio} | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
