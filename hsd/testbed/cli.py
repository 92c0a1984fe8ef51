"""`hsd testbed build` (pretrain or find the cached testbed model, print its directory),
`hsd testbed measure` (initial p, tau against the true error, fully correct peers; JSON on stdout) and
`hsd testbed problems` (the terse-answer chain problems as a JSONL file, for any `--dataset`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _knob(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--knob wants NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed (default 0)")
    parser.add_argument(
        "--knob",
        type=_knob,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a pretraining knob of TestbedConfig, e.g. --knob train_steps=50 (repeatable)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default $HSD_CACHE_DIR/testbed or ~/.cache/hsd/testbed)",
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="pretrain (or find cached) and print the model directory")
    _add_model_args(build)
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.add_argument(
        "--log-every", type=int, default=100, help="print the loss every N steps to stderr (0: off)"
    )
    build.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 2, or 1 on a busy machine)"
    )
    measure = sub.add_parser("measure", help="initial p and tau against the true error position, as JSON")
    _add_model_args(measure)
    measure.add_argument("--model", default=None, help="a model directory (default: build/find the testbed)")
    measure.add_argument("--variant", choices=("single", "multi"), default="single")
    measure.add_argument("--problems", type=int, default=256)
    measure.add_argument("--group-size", type=int, default=8)
    measure.add_argument(
        "--steps", type=int, default=None, help="operations per chain (default: as pretrained)"
    )
    measure.add_argument(
        "--operand-max", type=int, default=None, help="largest operand (default: as pretrained)"
    )
    measure.add_argument(
        "--modulus", type=int, default=None, choices=(10, 100), help="default: as pretrained"
    )
    measure.add_argument("--temperature", type=float, default=1.0)
    measure.add_argument("--top-p", type=float, default=1.0)
    measure.add_argument("--sample-seed", type=int, default=0, help="seed of the problems and the sampling")
    problems = sub.add_parser(
        "problems", help="write terse-answer chain problems as JSONL: the same draw as testbed:chain"
    )
    problems.add_argument(
        "--answer-form",
        choices=("parity", "half"),
        default="parity",
        help="the checked answer (default parity)",
    )
    problems.add_argument("--out", required=True, help="the JSONL file to write")
    problems.add_argument("--n", type=int, default=256, help="problems (default 256)")
    problems.add_argument("--split", choices=("train", "test", "validation", "all"), default="train")
    problems.add_argument("--variant", choices=("single", "multi"), default="single")
    problems.add_argument("--steps", type=int, default=4, help="operations per chain (default 4)")
    problems.add_argument("--operand-max", type=int, default=3, help="largest operand (default 3)")
    problems.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")


def _build(args: argparse.Namespace, log_every: int = 0, force: bool = False, threads: int | None = None):
    from contextlib import redirect_stdout

    from hsd.testbed.model import build_testbed_model

    with redirect_stdout(sys.stderr):  # stdout carries only the result
        return build_testbed_model(
            args.seed,
            cache_dir=args.cache_dir,
            force=force,
            log_every=log_every,
            threads=threads,
            **dict(args.knob),
        )


def _problems(args: argparse.Namespace) -> int:
    from hsd.testbed.terse import write_terse_problems

    options = dict(n=args.n, seed=args.seed, variant=args.variant, steps=args.steps, split=args.split)
    print(write_terse_problems(args.out, args.answer_form, operand_max=args.operand_max, **options))
    return 0


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        if args.action == "problems":
            return _problems(args)
        if args.action == "build":
            path = _build(args, log_every=args.log_every, force=args.force, threads=args.threads)
            print(f"testbed ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            print(path)
            return 0
        from hsd.models import load_model, load_tokenizer
        from hsd.testbed.measure import measure_testbed, task_defaults

        model_dir = args.model or _build(args)
        task = task_defaults(model_dir)  # a model of another answer form fails here, before it loads
        result = measure_testbed(
            load_model(str(model_dir)),
            load_tokenizer(str(model_dir)),
            task=task,
            variant=args.variant,
            problems=args.problems,
            group_size=args.group_size,
            steps=args.steps,
            operand_max=args.operand_max,
            modulus=args.modulus,
            temperature=args.temperature,
            top_p=args.top_p,
            sample_seed=args.sample_seed,
        )
    except ValueError as error:
        print(f"hsd testbed: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"model": str(model_dir), "seed": args.seed, **result}, indent=2))
    return 0
