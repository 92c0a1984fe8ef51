"""Checks of a recipe and its data that run before any model loads: field types and ranges, the step count,
and prompt lengths against the model's context. Every failure is a `UserError` naming the field (or the
file and row), the value and what is allowed. And `HSDTrainer`'s checks of its Python arguments
(`trainer_arguments`, `validate_dataset`), which raise as TRL raises its own.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

from hsd.errors import UserError
from hsd.tasks.problem import chat_prompt

LONG_PROMPT_POLICIES = ("refuse", "truncate")


@dataclass(frozen=True)
class Rule:
    """An allowed range: `test(value)` must hold; `allowed` says so in words."""

    test: Callable[[float], bool]
    allowed: str


POSITIVE_INT = Rule(lambda v: v >= 1, "a whole number >= 1")
POSITIVE = Rule(lambda v: v > 0, "a number > 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, "a number >= 0")
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
HALF_OPEN = Rule(lambda v: 0 <= v < 1, "a number in [0, 1)")
OPEN = Rule(lambda v: 0 < v < 1, "a number in (0, 1)")
TOP_P = Rule(lambda v: 0 < v <= 1, "a probability in (0, 1]")

RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
         "max_completion_length", "max_prompt_length", "dataset_limit", "max_peer_tokens", "divergence_topk",
         "divergence_chunk_size", "num_iterations", "steps_per_generation", "generation_batch_size",
         "reward_workers", "save_total_limit", "lora_r"),
        POSITIVE_INT,
    ),
    "num_generations": Rule(lambda v: v >= 2, "a whole number >= 2 (a group needs peers)"),
    **dict.fromkeys(
        ("learning_rate", "temperature", "num_train_epochs", "math_timeout", "code_timeout", "logging_steps",
         "save_steps", "eval_steps", "repetition_penalty", "adam_epsilon", "lora_alpha"),
        POSITIVE,
    ),
    **dict.fromkeys(
        ("weight_decay", "beta", "warmup_steps", "distill_weight", "pg_weight", "epsilon", "epsilon_high",
         "max_grad_norm", "top_k", "seed", "divergence_clip"),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(
        ("divergence_alpha", "rlsd_lambda", "max_uncomputed_reward_fraction", "min_p", "top_entropy_quantile",
         "lora_dropout"),
        PROBABILITY,
    ),
    **dict.fromkeys(("teacher_ema_decay", "adam_beta1", "adam_beta2"), HALF_OPEN),
    "rlsd_eps": OPEN,
    "top_p": TOP_P,
}  # fmt: skip


def _members(annotation) -> tuple:
    """The alternatives of a type annotation: `int | None` -> (int, NoneType)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _describe(annotation) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "null"}  # fmt: skip
    words = []
    members = _members(annotation)
    if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
        members = tuple(m for m in members if m is not str)  # an enum field's string must name a member
    for member in members:
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and issubclass(origin, enum.Enum):
            words.append("one of " + ", ".join(str(e.value) for e in origin))
        else:
            words.append(names.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(dict.fromkeys(words))


_NO = object()


def _accept(member, value):
    """`value` converted to the type `member`, or _NO when it is not one (bools are never numbers)."""
    origin = typing.get_origin(member) or member
    if member is type(None):
        return value if value is None else _NO
    if origin is typing.Literal:
        return value if value in typing.get_args(member) else _NO
    if origin is bool:
        return value if isinstance(value, bool) else _NO
    if isinstance(origin, type) and issubclass(origin, enum.Enum) and value is False:
        return "no" if "no" in {e.value for e in origin} else _NO  # YAML 1.1 reads a bare `no` as false
    if isinstance(value, bool):
        return _NO
    if origin is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return int(value) if integral else _NO
    if origin is float:
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else _NO
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return value if value in {e.value for e in origin} else _NO
    if origin is str:
        return value if isinstance(value, str) else _NO
    return value if isinstance(origin, type) and isinstance(value, origin) else _NO


def check_value(name: str, value, annotation):
    """`value` as the field's type (a whole float becomes an int), checked against RULES[name]."""
    members = _members(annotation)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    order = sorted(members, key=lambda m: m is str)  # str last: an enum field must name a member
    for member in order:
        if member is str and enums and isinstance(value, str):
            continue
        converted = _accept(member, value)
        if converted is not _NO:
            break
    else:
        rule = RULES.get(name)
        allowed = rule.allowed if rule else _describe(annotation)
        raise UserError(f"field {name!r}: {value!r} is not allowed; it must be {allowed}")
    rule = RULES.get(name)
    if rule is not None and converted is not None and not isinstance(converted, bool):
        if not (isinstance(converted, int | float) and rule.test(converted)):
            raise UserError(f"field {name!r}: {converted!r} is not allowed; it must be {rule.allowed}")
    return converted


def check_steps(values: dict) -> None:
    """`max_steps` > 0, or -1 (train by epochs) when the recipe sets `num_train_epochs`."""
    steps = values.get("max_steps")
    if steps is None or steps > 0:
        return
    if steps == -1 and "num_train_epochs" in values:
        return
    raise UserError(
        f"field 'max_steps': {steps!r} is not allowed; it must be a whole number >= 1 (optimizer steps), "
        "or -1 together with num_train_epochs to train by epochs"
    )


def check_recipe(values: dict, classes: Sequence[type]) -> dict:
    """Every value typed and in range (see RULES, check_steps); returns the converted values."""
    hints = {}
    for cls in classes:
        declared = {f.name for f in fields(cls) if f.init}
        hints.update({k: v for k, v in typing.get_type_hints(cls).items() if k in declared})
    checked = {name: check_value(name, value, hints[name]) for name, value in values.items() if name in hints}
    if checked.get("long_prompts", "refuse") not in LONG_PROMPT_POLICIES:
        raise UserError(
            f"field 'long_prompts': {checked['long_prompts']!r} is not allowed; it must be one of "
            + ", ".join(LONG_PROMPT_POLICIES)
        )
    check_steps(checked)
    return checked


def context_size(model: str) -> int | None:
    """The longest sequence the model takes, from its config (no weights are read); None if unknown."""
    from transformers import AutoConfig

    from hsd.models import resolve_model

    source = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(source.pretrained, **source.init_kwargs)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def prompt_budget(
    context: int | None, max_prompt_length: int | None, max_completion_length: int
) -> int | None:
    """Tokens a prompt may take: max_prompt_length if set, else context - max_completion_length.

    Both must fit: max_prompt_length + max_completion_length <= context.
    """
    if context is not None:
        if max_completion_length >= context:
            raise UserError(
                f"field 'max_completion_length': {max_completion_length} leaves no room for a prompt in the "
                f"model's context of {context} tokens; it must be < {context}"
            )
        room = context - max_completion_length
        if max_prompt_length is not None and max_prompt_length > room:
            raise UserError(
                f"field 'max_prompt_length': {max_prompt_length} is not allowed; with max_completion_length "
                f"{max_completion_length} in the model's context of {context} it must be <= {room}"
            )
    return max_prompt_length if max_prompt_length is not None else (None if context is None else room)


def _prompt_tokens(tokenizer, texts: list[str], budget: int | None = None) -> tuple[list[int], set[int]]:
    """Token count of each prompt as the trainer sends it (one user message, chat template applied).

    With `budget`, a text is first counted on its first 16 * (budget + 8) characters only: when that prefix
    alone has more than budget + 2 tokens (2 for a merge across the cut), its count stands as a lower bound
    (enough to refuse it; a megabyte prompt is not tokenized whole). Otherwise the whole text is counted.
    Returns (counts, indices of the counts that are lower bounds).
    """
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(chat_prompt(t), tokenize=False, add_generation_prompt=True)
            for t in texts
        ]
        options = {"add_special_tokens": False, "verbose": False}
    else:
        options = {"verbose": False}
    cut = None if budget is None else 16 * (budget + 8)
    counts = [len(ids) for ids in tokenizer([t[:cut] for t in texts], **options)["input_ids"]]
    whole = [i for i, t in enumerate(texts) if cut is not None and len(t) > cut and counts[i] <= budget + 2]
    if whole:
        full = tokenizer([texts[i] for i in whole], **options)["input_ids"]
        for i, ids in zip(whole, full):
            counts[i] = len(ids)
    bounds = {i for i, t in enumerate(texts) if cut is not None and len(t) > cut and i not in whole}
    return counts, bounds


def _truncated(tokenizer, text: str, excess: int) -> str:
    """`text` without its first `excess` tokens (the end, with the question and instruction, stays)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return tokenizer.decode(ids[min(len(ids), excess) :])


def fit_prompts(problems: list, tokenizer, budget: int | None, policy: str) -> tuple[list, list[str]]:
    """Problems whose prompts fit `budget` tokens: refuse (a UserError naming file:row) or truncate.

    Returns (problems, warnings); a truncated prompt loses its leading tokens, a few more if decoding
    and re-encoding do not round-trip.
    """
    if budget is None:
        return problems, []
    lengths, bounds = _prompt_tokens(tokenizer, [p.prompt for p in problems], budget)
    long = [(i, n) for i, n in enumerate(lengths) if n > budget]
    if not long:
        return problems, []
    where = [problems[i].origin or f"problem {problems[i].id}" for i, _ in long]
    if policy == "refuse":
        first, count = long[0]
        more = f" (and {len(long) - 1} more: {', '.join(where[1:4])}{', ...' if len(long) > 4 else ''})"
        raise UserError(
            f"{where[0]}: the prompt is {'over ' if first in bounds else ''}{count} tokens long; at most {budget} "
            "are allowed (max_prompt_length, or the model's context minus max_completion_length)"
            f"{more if len(long) > 1 else ''}; shorten it, or set long_prompts: truncate"
        )
    problems = list(problems)
    for i, _ in long:
        prompt = problems[i].prompt
        for _ in range(4):
            excess = _prompt_tokens(tokenizer, [prompt])[0][0] - budget
            if excess <= 0:
                break
            prompt = _truncated(tokenizer, prompt, excess)
        problems[i] = replace(problems[i], prompt=prompt)
    return problems, [f"{w}: prompt truncated to {budget} tokens (long_prompts: truncate)" for w in where]


def validate_dataset(dataset, args) -> None:
    """`HSDTrainer`'s check of its dataset: the columns the chosen context needs exist and are filled; a
    `ValueError` names the column and the rows (a Python caller's mistake, raised as TRL raises its own)."""
    if dataset is None or not args.needs_teacher or not hasattr(dataset, "column_names"):
        return
    needs = []
    if args.context in ("hsd", "opsd"):
        needs.append(args.answer_column)
    if args.context == "reference":
        needs.append(args.reference_column)
    for column in needs:
        if column not in dataset.column_names:
            raise ValueError(
                f"context {args.context!r} needs the dataset column {column!r}, which is missing "
                f"(columns: {', '.join(dataset.column_names)}); set HSDConfig."
                f"{'answer_column' if column == args.answer_column else 'reference_column'} to the right name"
            )
        bad = [i for i, value in enumerate(dataset[column]) if value is None or str(value).strip() == ""]
        if bad:
            raise ValueError(
                f"dataset column {column!r} is empty in {len(bad)} row(s), first rows (0-based): {bad[:10]}; "
                f"context {args.context!r} needs it in every row"
            )


def trainer_arguments(model, reward_funcs, args, train_dataset, kwargs: dict):
    """`HSDTrainer`'s arguments checked (the dataset, a model vLLM cannot run) and made ready for
    `GRPOTrainer.__init__`: a model named by a string loaded where TRL cannot (`model_for_trl`), reward
    functions wrapped to name themselves when they raise (`guards.guard_reward_funcs`), `kwargs` updated in
    place. Returns `(args, model, reward_funcs, reference_beta)`. `reference_beta` is not None when the reference
    policy is copied from an in-memory model after TRL's init (TRL rebuilds it from a hub id / path, which
    such a model lacks; with an adapter, TRL's reference is the adapter switched off): TRL then sees beta 0."""
    from hsd.models import model_for_trl, require_peft
    from hsd.trainer.adapters import is_adapter_model
    from hsd.trainer.config import HSDConfig
    from hsd.trainer.guards import guard_reward_funcs
    from hsd.trainer.vllm_cpu import check_vllm_model

    if args is None:
        args = HSDConfig(output_dir="hsd-output")
    if not isinstance(args, HSDConfig):
        raise TypeError(f"HSDTrainer needs an HSDConfig, got {type(args).__name__}")
    validate_dataset(train_dataset, args)
    if args.use_vllm:
        check_vllm_model(model, args)
    if isinstance(model, str):
        model, kwargs["processing_class"] = model_for_trl(model, kwargs.get("processing_class"))
    reward_funcs = guard_reward_funcs(reward_funcs)
    if kwargs.get("peft_config") is not None:
        require_peft("HSDTrainer(peft_config=...)")
    adapter = kwargs.get("peft_config") is not None or is_adapter_model(model)
    reference_beta = None
    if args.beta != 0.0 and not isinstance(model, str) and not adapter:  # same weights: pi_0 is the start
        reference_beta, args.beta = args.beta, 0.0
    return args, model, reward_funcs, reference_beta
