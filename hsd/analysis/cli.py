"""`hsd analyze` and `analyze()`: sample groups, score failed rollouts under each teacher context, and write
credit.json, rollouts.jsonl, the plots and report.html.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hsd.analysis.credit import CONTEXTS, WIDTHS, CollectSettings, FailedRollout, collect, credit_tables
from hsd.analysis.report import percent, write_report
from hsd.core.peers import RULES_FROM_REWARDS, SUCCESS_THRESHOLD
from hsd.sampling import SamplingSettings, add_sampling_arguments, problems_and_model
from hsd.tasks.problem import Problem
from hsd.tasks.rewards import VERIFIERS, Verifier, verify_problem

CREDIT_FILE = "credit.json"
# the CollectSettings fields that `hsd analyze` takes from the option of the same name
COLLECT_OPTIONS = ("group_size", "min_failures", "problems_per_batch", "batch_size", "seed", "peer_rule",
                   "success_threshold", "contexts", "max_peer_tokens", "batch_tokens", "verify_workers")  # fmt: skip
ROLLOUTS_FILE = "rollouts.jsonl"


def analyze(
    model,
    tokenizer,
    problems: Sequence[Problem],
    settings: CollectSettings | None = None,
    *,
    out_dir: str | Path | None = None,
    verifier: Verifier = verify_problem,
    max_report_rollouts: int = 60,
    progress: bool = True,
    info: dict | None = None,
) -> dict:
    """Run the credit analysis in-process on a loaded model; returns the credit.json dict.

    With `out_dir`, also writes credit.json, rollouts.jsonl (every analysed rollout with its per-token
    log-probs and A_t), credit_profile.png, silence_curve.png, coverage.png and report.html there.
    `settings` (default `CollectSettings()`) say how to sample and score; `info` (e.g. model and dataset
    names) is stored with them.
    """
    settings = settings or CollectSettings()
    start = time.perf_counter()
    analysis = collect(model, tokenizer, problems, verifier, settings, progress=progress)
    tables = credit_tables(analysis.rollouts, analysis.groups, seed=settings.seed, widths=WIDTHS)
    recorded = {**(info or {}), **analysis.settings, "problems_available": len(problems)}
    credit = {
        "settings": recorded,
        **tables,
        "reached_min_failures": len(analysis.rollouts) >= settings.min_failures,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if out_dir is not None:
        title = "Where the credit lands"
        if info:
            title += f": {info.get('model', 'model')} on {info.get('dataset', 'data')}"
        write_outputs(
            Path(out_dir), tables, analysis.rollouts, recorded, title=title, max_rollouts=max_report_rollouts
        )
        credit["wall_s"] = round(time.perf_counter() - start, 1)
        (Path(out_dir) / CREDIT_FILE).write_text(json.dumps(credit, indent=1) + "\n")
    return credit


def write_outputs(
    out: Path, tables: dict, rollouts: Sequence[FailedRollout], settings: dict, **report
) -> None:
    """rollouts.jsonl (every analysed rollout with its per-token log-probs and A_t), the plots and
    report.html (`write_report`, given `report`'s title and max_rollouts) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ROLLOUTS_FILE, "w") as handle:
        for rollout in rollouts:
            handle.write(json.dumps(rollout.to_json()) + "\n")
    write_report(tables, rollouts, out, settings=settings, **report)


def _contexts(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONTEXTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--contexts takes a comma-separated subset of {CONTEXTS}, got {text!r}"
        )
    return names


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="hub id, model directory, .gguf file, 'smollm2', or an adapter directory (hsd train "
                             "--use_peft's final/: its base is named inside)")  # fmt: skip
    parser.add_argument(
        "--dataset", required=True, help="path, short name, rg:NAME, testbed:chain?variant=..."
    )
    parser.add_argument("--out", required=True, help="output directory (credit.json, plots, report.html)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0: off)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per problem, G (default 8)")
    parser.add_argument("--problems", type=int, default=512,
                        help="at most this many problems are sampled (default 512)")  # fmt: skip
    parser.add_argument("--min-failures", type=int, default=64,
                        help="sample batches of problems until this many failed rollouts with a peer (default 64)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=256, help="completion length cap (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling, peer draws and the control")
    parser.add_argument("--peer-rule", choices=RULES_FROM_REWARDS, default="uniform",
                        help="the failed rollout's peer: uniform over its group's successes (seeded), the first, "
                        "or one uniform draw shared by the group")  # fmt: skip
    parser.add_argument("--success-threshold", type=float, default=SUCCESS_THRESHOLD,
                        help=f"a rollout succeeds when its reward >= this (default {SUCCESS_THRESHOLD}, as HSDConfig)")  # fmt: skip
    parser.add_argument("--contexts", type=_contexts, default=list(CONTEXTS),
                        help="comma-separated teacher contexts among opsd,hsd,reference (default: all)")  # fmt: skip
    parser.add_argument(
        "--problems-per-batch", type=int, default=8, help="problems sampled per round (default 8)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sequences generated at once (default 64)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per scoring batch")
    parser.add_argument(
        "--max-peer-tokens", type=int, default=None, help="truncate the peer shown to the teacher"
    )
    parser.add_argument("--report-rollouts", type=int, default=60, help="rollouts shown in report.html")
    add_sampling_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from hsd.errors import UserError

    start = time.perf_counter()
    if args.problems < 1:
        raise UserError(f"--problems must be >= 1, got {args.problems}")
    problems, loaded = problems_and_model(args, limit=args.problems)
    sampling = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens)
    settings = CollectSettings(sampling=sampling, **{name: getattr(args, name) for name in COLLECT_OPTIONS})
    info = {"model": args.model, "dataset": args.dataset, "verifier": args.verifier, **loaded.info()}
    credit = analyze(loaded.model, loaded.tokenizer, problems, settings, out_dir=args.out, info=info,
                     verifier=VERIFIERS[args.verifier], max_report_rollouts=args.report_rollouts,
                     progress=not args.quiet)  # fmt: skip
    _print_outcome(credit, args, time.perf_counter() - start)
    return 0


def _print_outcome(credit: dict, args: argparse.Namespace, total: float) -> None:
    """What the run found, on stderr (a warning when too few rollouts were analysed), and the summary as
    JSON on stdout."""
    counts = credit["counts"]
    if not credit["reached_min_failures"]:
        print(
            f"hsd analyze: only {counts['analysed']} failed rollouts with a peer in {counts['problems']} problems "
            f"(wanted {args.min_failures}); raise --problems or change the temperature",
            file=sys.stderr,
        )
    print(
        f"hsd analyze: {counts['analysed']} failed rollouts with a peer from {counts['problems']} problems, "
        f"tau = 0 for {percent(credit['tau_zero_share'])}, {total:.0f} s in all; wrote {Path(args.out) / 'report.html'}",
        file=sys.stderr,
    )
    summary = {"wall_s_total": round(total, 1), "counts": counts, "mass_within": credit["mass_within"]}
    print(json.dumps(summary))
