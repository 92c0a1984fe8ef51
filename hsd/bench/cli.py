"""`hsd bench`: GRPO, OPSD and HSD timed phase by phase on one fixed batch, and HSD against TRL's SDPO.

Everything runs in one process through the real trainers (`HSDTrainer.train`, `SDPOTrainer.train`) with
scripted rollouts, so the numbers in docs/performance.md are what a training run pays per step.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from hsd.bench.fixtures import MODEL_CONFIGS, OPTIMISATIONS_OFF
from hsd.bench.step import STEP_METHODS, BenchSetup, run_step
from hsd.bench.vs_trl import run_vs_trl

ACCEPTS_OVERRIDES = True  # hsd.cli passes unparsed --field value pairs (HSDConfig fields) as args.overrides


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-config",
        default="tiny",
        help=f"{', '.join(MODEL_CONFIGS)} (random init) or a model directory (default: tiny)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights for a model directory too")
    parser.add_argument("--batch", type=int, default=4, help="questions per step (default: 4)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per question, G (default: 8)")
    parser.add_argument("--completion-len", type=int, default=64, help="tokens per completion (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="turn off TRL's default activation checkpointing",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=argparse.SUPPRESS,  # deprecated: --FIELD VALUE, as hsd train and hsd compare take it
    )
    parser.add_argument(
        "--plain", action="store_true", help="switch every teacher-pass optimisation off (the plain path)"
    )
    parser.add_argument("--out", help="write the JSON report here (it is printed either way)")
    parser.epilog = (
        "Any other --field value pair sets that HSDConfig field for every method, as in hsd train "
        "(e.g. --teacher_prefix_cache false)."
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="{step,vs-trl}", required=True)
    step = sub.add_parser("step", help="GRPO, OPSD and HSD phase by phase on one fixed batch")
    _add_common(step)
    step.add_argument(
        "--methods",
        default=",".join(STEP_METHODS),
        help="comma-separated (default: grpo,opsd,hsd); a name ending in :plain runs with every optimisation off",
    )
    versus = sub.add_parser("vs-trl", help="an HSD step of HSDTrainer against a step of TRL's SDPOTrainer")
    _add_common(versus)


def config_overrides(args: argparse.Namespace) -> dict:
    """The HSDConfig fields every method gets: --plain's switches, then each `--field value` pair (read as
    `hsd train` reads them: `hsd.trainer.cli.parse_overrides`); an explicit pair wins over --plain."""
    from hsd.trainer.cli import check_known_fields, parse_overrides
    from hsd.trainer.config import HSDConfig

    tokens = list(getattr(args, "overrides", None) or [])
    if args.set:
        print("hsd bench: --set FIELD=VALUE is deprecated; write --FIELD VALUE", file=sys.stderr)
        tokens = [f"--{item}" for item in args.set] + tokens
    values = parse_overrides(tokens)
    check_known_fields(values, (HSDConfig,))
    return {**OPTIMISATIONS_OFF, **values} if args.plain else values


def setup_from_args(args) -> BenchSetup:
    """The BenchSetup of the parsed options: each field from the option of its name, then the overrides."""
    options = {f.name: getattr(args, f.name) for f in fields(BenchSetup) if f.name != "overrides"}
    return BenchSetup(**options, overrides=config_overrides(args))


def format_table(report: dict) -> str:
    """Phase medians in seconds, peak memory in MiB, one row per method, then the ratios."""
    phases = ("prepare", "teacher", "student_forward_backward", "optimizer", "update", "step")
    lines = [f"{'method':<8}" + "".join(f"{p[:14]:>16}" for p in phases) + f"{'peak MiB':>12}"]
    for method, result in report["methods"].items():
        median = result["median_s"]
        cells = "".join(f"{median[p]:>16.4f}" if median.get(p) is not None else f"{'-':>16}" for p in phases)
        lines.append(f"{method:<8}{cells}{result['peak_memory_bytes'] / 2**20:>12.1f}")
    for metric, values in report.get("ratios", {}).items():
        lines.append(f"{metric}: " + ", ".join(f"{k} = {v}" for k, v in values.items()))
    return "\n".join(lines)


def main(args) -> int:
    setup = setup_from_args(args)
    if args.bench == "step":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {*STEP_METHODS, *(f"{m}:plain" for m in STEP_METHODS)}
        unknown = [m for m in methods if m not in known]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ValueError(
                f"--methods {args.methods!r}: each once, among {', '.join(STEP_METHODS)} (add :plain for a method "
                "with every optimisation off)"
            )
        report = run_step(setup, methods)
    else:
        report = run_vs_trl(setup)
    report["argv"] = ["hsd", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else sys.argv
    print(format_table(report))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0
