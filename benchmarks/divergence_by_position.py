"""Where one HSD step's divergence (Eq. 13) sits on the testbed: by kind of character and by place
relative to the first divergence tau of each failed rollout.

    python benchmarks/divergence_by_position.py [--model testbed|DIR] [--variant single|multi] [--seed 0]

Trains one step of the quick-start recipe (configs/quickstart.yaml) and prints, for each class of
completion position, its share of the summed per-token divergence and its mean. On a testbed whose
teacher copies its peer past tau, most of the mass sits on the result digits *after* tau (the teacher
crediting its peer's values over the rollout's own arithmetic); see docs/results.md.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

from hsd.trainer.cli import build_trainer, load_recipe


def position_class(text: str, previous: str, t: int, tau: int) -> tuple[str, str]:
    place = "at tau" if t == tau else ("after tau" if 0 <= tau < t else "before tau / success")
    if previous == "=":
        kind = "result digit"
    elif text in ("+", "-"):
        kind = "operation sign"
    elif previous in "+-":
        kind = "operand"
    elif previous == "\n" and text.isdigit():
        kind = "carried value"
    elif previous == " ":
        kind = "answer digit"
    else:
        kind = f"other ({text!r})"
    return place, kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--variant", default="single", choices=["single", "multi"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        script, config = load_recipe(
            "configs/quickstart.yaml",
            {
                "model": args.model,
                "dataset": f"testbed:chain?variant={args.variant}&n=2048&split=train",
                "output_dir": out,
                "max_steps": 1,
                "report_to": [],
                "save_steps": 1000,
                "seed": args.seed,
            },
        )
        trainer = build_trainer(script, config)
        captured = {}
        log_credit = trainer.step_metrics.credit

        def capture(inputs, div, credit, mask):
            captured.update(inputs=inputs, div=div, mask=mask)
            return log_credit(inputs, div, credit, mask)

        trainer.step_metrics.credit = capture
        trainer.train()
    tokenizer = trainer.processing_class
    inputs, div, mask = captured["inputs"], captured["div"], captured["mask"]
    total, count = defaultdict(float), defaultdict(int)
    for row in range(div.size(0)):
        ids = inputs["completion_ids"][row].tolist()
        tau = int(inputs["hsd_tau"][row])
        for t in range(div.size(1)):
            if mask[row, t] == 0:
                continue
            previous = tokenizer.decode([ids[t - 1]]) if t else ""
            key = position_class(tokenizer.decode([ids[t]]), previous, t, tau)
            total[key] += float(div[row, t])
            count[key] += 1
    grand = sum(total.values()) or 1.0
    print("| place | position | share of the divergence | mean per token | tokens |")
    print("|---|---|---|---|---|")
    for key in sorted(total, key=lambda k: -total[k]):
        if total[key] / grand >= 0.001:
            print(
                f"| {key[0]} | {key[1]} | {total[key] / grand:.1%} | {total[key] / count[key]:.3f} | {count[key]} |"
            )
    for place in ("before tau / success", "at tau", "after tau"):
        share = sum(v for k, v in total.items() if k[0] == place) / grand
        tokens = sum(n for k, n in count.items() if k[0] == place)
        print(f"{place}: {share:.1%} of the divergence on {tokens} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
