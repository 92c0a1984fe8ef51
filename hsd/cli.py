"""The `hsd` command: parsing and dispatch only.

Each subcommand lives in its own module, which exposes `configure_parser(parser)` and `main(args) -> int`.
Modules are imported only when their subcommand runs, so `hsd --help` is fast. A `UserError` from any of
them is printed as one line with exit status 2; `--debug` (anywhere on the line) shows its traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings

from hsd.errors import UserError
from hsd.models import weight_file_bars_off

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("hsd.quickstart", "build the testbed model, train HSD and GRPO side by side, report"),
    "train": ("hsd.trainer.cli", "train with HSD or a baseline from a YAML config"),
    "eval": ("hsd.eval", "pass@1 (avg@k), pass@k and greedy accuracy on math and code benchmarks"),
    "analyze": ("hsd.analysis.cli", "where the teacher's credit lands: tables, plots, report.html"),
    "compare": ("hsd.compare", "several methods x seeds on one config: comparison.md and curves"),
    "bench": ("hsd.bench.cli", "time GRPO, OPSD and HSD phase by phase on one fixed batch"),
    "testbed": ("hsd.testbed.cli", "build the small pretrained testbed model"),
    "core-demo": ("hsd.core_demo", "a few training-free HSD core computations (no model needed)"),
}


def _not_deepspeed_cpu_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU")


def quiet_libraries() -> None:
    """Hide library notices a user can do nothing about: DeepSpeed's "Setting accelerator to CPU" (on stdout
    when accelerate or transformers import it without a GPU; its other messages pass), and the FutureWarnings
    of TRL 1.16's generation helper calling transformers' deprecated gradient_checkpointing_* names. Calling
    it again adds nothing (a logger keeps one copy of a filter)."""
    logging.getLogger("DeepSpeed").addFilter(_not_deepspeed_cpu_notice)  # set before DeepSpeed is imported
    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing", category=FutureWarning)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsd", description="Hindsight Self-Distillation for LLM reasoners")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        build_parser().print_usage(sys.stderr)
        print(f"hsd: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        return run(name, rest)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"hsd {name}: error: {exc}", file=sys.stderr)
        return 2


def run(name: str, rest: list[str]) -> int:
    """Parse the subcommand's arguments and run it (without transformers' weight-file progress bars)."""
    module = importlib.import_module(COMMANDS[name][0])
    # No abbreviations: `hsd compare --method grpo` would otherwise be read as `--methods`, not as the
    # recipe field `method` the user meant.
    parser = argparse.ArgumentParser(prog=f"hsd {name}", description=COMMANDS[name][1], allow_abbrev=False)
    module.configure_parser(parser)
    if getattr(module, "ACCEPTS_OVERRIDES", False):  # `--field value` pairs the module parses itself
        args, extra = parser.parse_known_args(rest)
        args.overrides = extra
    else:
        args = parser.parse_args(rest)
    with weight_file_bars_off():
        return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
