"""`hsd train --config FILE.yaml [--field value ...]`: a TRL-style YAML recipe plus command-line overrides.

The YAML holds the script fields below (model, dataset, reward), any `HSDConfig` / `GRPOConfig` field, and
the adapter fields of TRL's `ModelConfig` (MODEL_CONFIG_FIELDS: `use_peft`, `lora_r`, ...). An unknown field,
a value of the wrong type or out of range is an error that names it (hsd.trainer.validate).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from hsd.errors import MissingInputError, UserError
from hsd.trainer.runlock import RunLock
from hsd.trainer.validate import check_recipe, context_size, fit_prompts, prompt_budget

ACCEPTS_OVERRIDES = True  # hsd.cli passes unparsed --field value pairs as args.overrides
RECIPE_FILE = "recipe.json"  # the resolved recipe each run writes into its output directory
RECIPE_DEFAULTS = {"output_dir": "runs/hsd"}  # hsd train's defaults where the dataclass has another


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
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding local copies of the named benchmarks (default: $HSD_DATA_DIR); a "
                  "name it lacks comes from the hub."},
    )  # fmt: skip
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
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "With use_peft: also write the base model with the adapter merged to final/merged."
        },
    )
    # TRL's ModelConfig holding the recipe's MODEL_CONFIG_FIELDS (set by load_recipe; not a recipe field)
    model_config: object = field(default=None, init=False, repr=False)


# The fields of TRL's `ModelConfig` that `hsd train` takes: those `trl.get_peft_config` turns into a LoraConfig.
MODEL_CONFIG_FIELDS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                       "lora_target_parameters", "lora_modules_to_save", "lora_task_type", "use_rslora",
                       "use_dora")  # fmt: skip


def model_config(values: dict, where: str = ""):
    """TRL's `ModelConfig` from a recipe's MODEL_CONFIG_FIELDS (typed and range-checked like every field;
    one name may stand for a one-name list); `get_peft_config` of it is checked here too, so a mistake stops
    the run before any model loads. Without `use_peft` the adapter fields are unused, which a warning says."""
    from trl.trainer.model_config import ModelConfig  # not `from trl import`: that loads trl.trainer.utils

    from hsd.trainer.validate import check_recipe

    given = {k: v for k, v in values.items() if k in MODEL_CONFIG_FIELDS}
    for name in ("lora_target_modules", "lora_target_parameters", "lora_modules_to_save"):
        if isinstance(given.get(name), str):
            given[name] = [given[name]]  # ModelConfig keeps a one-name list as that name ("all-linear")
    try:
        config = ModelConfig(**check_recipe(given, (ModelConfig,)))
        if config.use_peft:
            from hsd.models import require_peft

            require_peft("use_peft: true")
            peft_config(config)
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    except ValueError as exc:  # ModelConfig's and LoraConfig's own checks
        raise UserError(f"{where}adapter fields: {' '.join(str(exc).split())}") from None
    unused = sorted(set(given) - {"use_peft"})
    if unused and not config.use_peft:
        print(f"hsd: warning: {where}{', '.join(unused)} unused: use_peft is false", file=sys.stderr)
    return config


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


def check_known_fields(values: dict, classes: tuple[type, ...], where: str = "", also: tuple = ()) -> None:
    """A `UserError` naming every key of `values` that is no init field of `classes` nor one of `also`, with
    the closest one."""
    known = {f.name for cls in classes for f in fields(cls) if f.init} | set(also)
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"{where}unknown config field(s): {', '.join(hints)}")


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
    where = f"{config}: " if config else ""
    check_known_fields(values, (TrainScript, HSDConfig), where, also=MODEL_CONFIG_FIELDS)
    for key in ("model", "dataset"):
        if key not in values:
            raise UserError(f"{where}the recipe needs the field {key!r}")
    adapter = model_config(values, where)
    try:
        values = check_recipe(values, (TrainScript, HSDConfig))  # keeps only these classes' fields
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    if values.get("merge_adapter") and not adapter.use_peft:
        raise UserError(
            f"{where}field 'merge_adapter': true needs use_peft: true (there is no adapter to merge)"
        )
    values = {**RECIPE_DEFAULTS, **values}
    parser = HfArgumentParser((TrainScript, HSDConfig))
    try:
        script, args = parser.parse_dict(values, allow_extra_keys=False)
    except ValueError as exc:  # HSDConfig's and TRL's own checks of how fields combine
        raise UserError(f"{where}{' '.join(str(exc).split())}") from None
    script.model_config = adapter
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
                             instruction=script.instruction, seed=args.seed, data_dir=script.data_dir)  # fmt: skip
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
    from hsd.trainer.trainer import HSDTrainer
    from hsd.trainer.vllm_cpu import check_vllm_model

    if args.use_vllm:
        check_vllm_model(script.model, args)  # its config only: before the weights load

    dataset = to_hf_dataset(problems)
    reward = make_reward_func(
        num_workers=script.reward_workers, math_timeout=script.math_timeout, code_timeout=script.code_timeout
    )
    model = load_model(script.model)
    metrics = MetricsJsonlCallback(Path(args.output_dir) / "metrics.jsonl")
    trainer = HSDTrainer(model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[metrics, *(callbacks or [])], peft_config=peft_config(script.model_config),
                         run_lock=lock)  # fmt: skip
    name_base_model(trainer, script.model)
    return trainer


def peft_config(model_config):
    """The LoraConfig of a recipe's ModelConfig fields (TRL's `get_peft_config`), or None without use_peft."""
    if model_config is None or not model_config.use_peft:
        return None
    from trl import get_peft_config

    return get_peft_config(model_config)


def name_base_model(trainer, model: str) -> None:
    """Record the recipe's model (an alias, a hub id, a directory made absolute) as the base of the run's
    adapters, so `hsd eval --model RUN/final` loads the right base (a GGUF's directory would not load)."""
    from hsd.trainer.adapters import is_adapter_model

    policy = trainer.accelerator.unwrap_model(trainer.model)
    if is_adapter_model(policy):
        path = Path(model).expanduser()
        for config in policy.peft_config.values():
            config.base_model_name_or_path = str(path.resolve()) if path.exists() else model


def write_recipe(out: Path, script: TrainScript, config) -> Path:
    """The resolved recipe of a run as `out`/RECIPE_FILE: script fields, every trainer field with the value the
    run uses, and `filled_by_preset`, the fields the method preset filled (the others are the user's or
    defaults)."""
    path = out / RECIPE_FILE
    script_fields = {k: v for k, v in vars(script).items() if k != "model_config"}
    adapter = {k: getattr(script.model_config, k) for k in MODEL_CONFIG_FIELDS} if script.model_config else {}
    record = {"script": script_fields, "model_config": adapter, "config": config.to_dict()}
    record["filled_by_preset"] = config.filled_by_preset
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def save_merged(trainer, adapter_dir: Path) -> Path:
    """`adapter_dir`/merged: the base model with the saved adapter merged into it, and the tokenizer (process
    0 loads the base again, whatever engine trained the adapter)."""
    from hsd.models import load_model, load_tokenizer

    merged = adapter_dir / "merged"
    if trainer.accelerator.is_main_process:
        load_model(str(adapter_dir)).save_pretrained(merged)
        load_tokenizer(str(adapter_dir)).save_pretrained(merged)
    trainer.accelerator.wait_for_everyone()
    return merged


def close_reward_workers(trainer) -> None:
    """Stop the verifier threads and worker processes of the trainer's reward functions."""
    from hsd.tasks.pool import close_shared_pools

    for func in trainer.reward_funcs:
        close = getattr(getattr(func, "__wrapped__", func), "close", None)
        if callable(close):
            close()
    close_shared_pools()


def help_sources() -> list[tuple]:
    """(title, dataclass[, the only fields to list]) whose fields `hsd train --help` lists, in this order.
    HSDConfig's own fields are listed by topic (`HELP_GROUPS`) before its TRL fields."""
    from trl.trainer.model_config import ModelConfig

    from hsd.trainer.config import HSDConfig

    return [
        ("recipe: model and data", TrainScript),
        ("adapter (TRL's ModelConfig; used with use_peft: true)", ModelConfig, MODEL_CONFIG_FIELDS),
        ("TRL (GRPOConfig, TrainingArguments)", HSDConfig),
    ]


def fields_help(
    sources: list[tuple], groups: dict[str, tuple[str, ...]], defaults: dict | None = None
) -> str:
    """Every field of `sources` once, as argparse lists options, with its type, help and default (`defaults`
    replace the dataclass's): a field that `groups` (topic -> field names) names under its topic, the
    source's other fields under its title. A listing only: the values themselves are parsed by
    `parse_overrides` and checked by `check_recipe`."""
    topic_of = {name: topic for topic, names in groups.items() for name in names}
    listing = argparse.ArgumentParser(add_help=False, usage=argparse.SUPPRESS)
    listed: set[str] = set()
    for title, cls, *only in sources:
        hints = typing.get_type_hints(cls)
        sections: dict[str, list] = {topic: [] for topic in groups} | {title: []}
        for f in fields(cls):
            if f.init and f.name not in listed and (not only or f.name in only[0]):
                listed.add(f.name)
                sections[topic_of.get(f.name, title)].append(f)
        for topic, members in sections.items():
            section = listing.add_argument_group(topic) if members else None
            for f in members:
                help_text = _field_help(f, (defaults or {}).get(f.name, _default(f)))
                section.add_argument(f"--{f.name}", metavar=_metavar(hints[f.name]), help=help_text)
    return listing.format_help()


def _metavar(annotation) -> str:
    """`float | None` -> FLOAT, `dict | str` -> DICT|STR."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    names = [getattr(typing.get_origin(m) or m, "__name__", "VALUE") for m in members if m is not type(None)]
    return "|".join(dict.fromkeys(names)).upper()


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _field_help(f, default) -> str:
    text = " ".join(str(f.metadata.get("help", "")).split())
    shown = "required" if default is MISSING else repr(default) if isinstance(default, str) else default
    return f"{text} (default: {shown})".replace("%", "%%")  # argparse formats help with %


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from hsd.trainer.config import HELP_GROUPS

    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the field listing is formatted already
    parser.epilog = (
        "Every field below can be set in the recipe (field: value) or on the command line (--field value,\n"
        "which wins over the recipe).\n\n" + fields_help(help_sources(), HELP_GROUPS, RECIPE_DEFAULTS)
    )


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
        if script.merge_adapter:
            save_merged(trainer, out / "final")
    except RunStopped as stopped:  # interrupted, non-finite, checkpoint errors: one line, no traceback
        print(f"hsd train: {stopped}", file=sys.stderr)
        return stopped.exit_status
    finally:
        close_reward_workers(trainer)
    print(f"hsd train: done; metrics in {out / 'metrics.jsonl'}, model in {out / 'final'}")
    return 0
