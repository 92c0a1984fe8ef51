"""`hsd train --config FILE.yaml [--field value ...]`: a TRL-style YAML recipe plus command-line overrides.

The YAML holds the script fields below (model, dataset, reward) and any `HSDConfig` / `GRPOConfig` field.
An unknown field, a value of the wrong type or out of range is an error that names it (hsd.trainer.validate).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from hsd.errors import MissingInputError, UserError
from hsd.trainer.runlock import RunLock
from hsd.trainer.validate import check_recipe, context_size, fit_prompts, prompt_budget

ACCEPTS_OVERRIDES = True  # hsd.cli passes unparsed --field value pairs as args.overrides
RECIPE_FILE = "recipe.json"  # the resolved recipe each run writes into its output directory


@dataclass
class TrainScript:
    """What to train on: the fields of a recipe that are not trainer settings."""

    model: str = field(metadata={"help": "Hub id, model directory, .gguf file, 'smollm2' or 'testbed'."})
    dataset: str = field(
        metadata={"help": "Dataset spec for hsd.tasks.datasets.load_problems (path, name, rg:, testbed:)."}
    )
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split of a hub / datasets-directory dataset."}
    )
    dataset_limit: int | None = field(default=None, metadata={"help": "Use only the first N problems."})
    instruction: str | None = field(default=None, metadata={"help": "Instruction appended to every prompt."})
    reward_workers: int = field(default=2, metadata={"help": "Verifier worker processes."})
    math_timeout: float = field(default=5.0, metadata={"help": "Seconds per math answer check."})
    code_timeout: float = field(default=10.0, metadata={"help": "Seconds per code test run."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt in tokens (chat template applied); default: context - completion."},
    )
    long_prompts: str = field(
        default="refuse",
        metadata={
            "help": "A longer prompt: refuse (stop, naming file and row) or truncate (drop its start)."
        },
    )


def parse_overrides(tokens: list[str]) -> dict:
    """`--key value`, `--key=value` and bare `--flag` (true) into a dict; values read as YAML scalars."""
    out, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise UserError(f"unexpected argument {token!r}: overrides are --field value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 2
        else:
            value, i = "true", i + 1
        out[key.replace("-", "_")] = yaml_scalar(value)
    return out


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def yaml_scalar(value):
    """A value as YAML reads it, except that 1e-3 is a number (YAML 1.1 would keep it a string)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return (
            int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
        )
    return yaml.safe_load(value) if isinstance(value, str) else value


def load_recipe(config: str | Path | None, overrides: list[str] | dict | None = None):
    """`(TrainScript, HSDConfig)` from a YAML file and overrides, every field typed and range-checked
    (hsd.trainer.validate); a mistake raises a `UserError` naming the field, its value and what is allowed."""
    from transformers import HfArgumentParser

    from hsd.trainer.config import HSDConfig

    values = read_recipe(config)
    values.update(overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or [])))
    known = {f.name for cls in (TrainScript, HSDConfig) for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    where = f"{config}: " if config else ""
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"{where}unknown config field(s): {', '.join(hints)}")
    for key in ("model", "dataset"):
        if key not in values:
            raise UserError(f"{where}the recipe needs the field {key!r}")
    try:
        values = check_recipe(values, (TrainScript, HSDConfig))
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    values.setdefault("output_dir", "runs/hsd")
    parser = HfArgumentParser((TrainScript, HSDConfig))
    try:
        script, args = parser.parse_dict(values, allow_extra_keys=False)
    except ValueError as exc:  # HSDConfig's and TRL's own checks of how fields combine
        raise UserError(f"{where}{' '.join(str(exc).split())}") from None
    return script, args


def read_recipe(config: str | Path | None) -> dict:
    """The recipe file's `field: value` pairs (numbers such as 1e-3 read as numbers, quoted strings kept)."""
    if config is None:
        return {}
    path = Path(config)
    if not path.is_file():
        raise MissingInputError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of field: value")
    # YAML has read every value; only a number it kept as a string (1e-3, YAML 1.1) is converted ('no' stays)
    return {key: _number_or_value(value) for key, value in loaded.items()}


def _number_or_value(value):
    return yaml_scalar(value) if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else value


def checked_problems(script: TrainScript, args) -> tuple[list, object]:
    """(problems, tokenizer): the recipe's data, each prompt checked against the model's context (its
    config only; no weights load) and refused or truncated as `long_prompts` says."""
    from hsd.models import load_tokenizer
    from hsd.tasks.datasets import load_problems

    problems = load_problems(script.dataset, split=script.dataset_split, limit=script.dataset_limit,
                             instruction=script.instruction, seed=args.seed)  # fmt: skip
    budget = prompt_budget(context_size(script.model), script.max_prompt_length, args.max_completion_length)
    tokenizer = load_tokenizer(script.model)
    problems, notes = fit_prompts(problems, tokenizer, budget, script.long_prompts)
    for note in notes:
        print(f"hsd: warning: {note}", file=sys.stderr)
    return problems, tokenizer


def build_trainer(script: TrainScript, args, *, callbacks=None):
    """An `HSDTrainer` for a recipe: model, dataset and verifier reward wired as the recipe says.

    Before the model loads: output_dir's run lock (`RunLock`, held by the trainer as `run_lock`), the data
    (bad rows name file and row) and every prompt's length against the model's context (`fit_prompts`).
    """
    from hsd.models import load_model
    from hsd.tasks.datasets import to_hf_dataset

    lock = RunLock(args.output_dir) if os.environ.get("RANK", "0") == "0" else None
    problems, tokenizer = checked_problems(script, args)
    from hsd.tasks.rewards import make_reward_func
    from hsd.trainer.callbacks import MetricsJsonlCallback
    from hsd.trainer.trainer import HSDTrainer, check_vllm_model

    if args.use_vllm:
        check_vllm_model(script.model, args)  # its config only: before the weights load

    dataset = to_hf_dataset(problems)
    reward = make_reward_func(
        num_workers=script.reward_workers, math_timeout=script.math_timeout, code_timeout=script.code_timeout
    )
    model = load_model(script.model)
    metrics = MetricsJsonlCallback(Path(args.output_dir) / "metrics.jsonl")
    trainer = HSDTrainer(model, reward_funcs=reward, args=args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[metrics, *(callbacks or [])])  # fmt: skip
    trainer.run_lock = lock
    return trainer


def write_recipe(out: Path, script: TrainScript, config) -> Path:
    """The resolved recipe of a run (script fields and every trainer field) as `out`/RECIPE_FILE."""
    path = out / RECIPE_FILE
    path.write_text(json.dumps({"script": vars(script), "config": config.to_dict()}, indent=2, default=str))
    return path


def close_reward_workers(trainer) -> None:
    """Stop the verifier threads and worker processes of the trainer's reward functions."""
    from hsd.tasks.pool import close_shared_pools

    for func in trainer.reward_funcs:
        close = getattr(getattr(func, "__wrapped__", func), "close", None)
        if callable(close):
            close()
    close_shared_pools()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.epilog = "Any other --field value pair overrides that field of the recipe."


def main(args: argparse.Namespace) -> int:
    from hsd.trainer.guards import RunStopped

    script, config = load_recipe(args.config, args.overrides)
    trainer = build_trainer(script, config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_recipe(out, script, config)
    resume = config.resume_from_checkpoint
    if resume is None and any(out.glob("checkpoint-*")):
        resume = True  # resume from the newest good checkpoint automatically
    try:
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out / "final"))
    except RunStopped as stopped:  # interrupted, non-finite, checkpoint errors: one line, no traceback
        print(f"hsd train: {stopped}", file=sys.stderr)
        return stopped.exit_status
    finally:
        close_reward_workers(trainer)
    print(f"hsd train: done; metrics in {out / 'metrics.jsonl'}, model in {out / 'final'}")
    return 0
