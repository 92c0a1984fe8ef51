"""Problems from JSONL/JSON/Parquet/CSV files, `datasets` directories or the hub, reasoning-gym and the testbed.
Fields are mapped to prompt/answer/reference; every bad row is reported by file, row and field, all at once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hsd.core.checks import is_number
from hsd.errors import MissingInputError, UserError
from hsd.tasks.benchmarks import BENCHMARKS, check_split, hub_rows, hub_source, mirror_file, mirror_folder
from hsd.tasks.math import gsm8k_gold, gsm8k_reference, last_boxed
from hsd.tasks.problem import KINDS, Problem, chat_prompt

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = "Write the complete Python function `{entry_point}` in a single ```python code block."
PROMPT_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "solution", "reference")
ID_FIELDS = ("id", "task_id", "problem_id", "unique_id", "idx")
_CODE_TEST_FIELDS = ("test", "inputs", "base_input", "plus_input")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _typed(value: str) -> Any:
    """A query-string value as int or float when it is numeric; true/false as booleans."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _query(spec: str, prefix: str) -> tuple[str, dict[str, Any]]:
    name, _, query = spec[len(prefix) :].partition("?")
    if not name:
        raise UserError(f"spec {spec!r}: missing a name after {prefix!r}")
    return name, {key: _typed(value) for key, value in parse_qsl(query, keep_blank_values=True)}


def load_problems(
    spec: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
    instruction: str | None = None,
    field_map: Mapping[str, str] | None = None,
    seed: int = 0,
    kind: str | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[Problem]:
    """Problems from `spec`, one of:

    a path to .jsonl/.json/.parquet/.csv; a directory saved by `datasets` (`save_to_disk`); `hf:NAME[:CONFIG]
    [:SPLIT]` (the hub); `rg:NAME?size=100&seed=1&key=value` (reasoning-gym; other keys are its config);
    `testbed:chain?variant=multi&steps=4` (the testbed chain task); or a short name (gsm8k, gsm8k-train,
    math500, aime24, aime25, humaneval, mbppplus; hsd.tasks.benchmarks): its file under `data_dir` (default
    $HSD_DATA_DIR) when there, else its public hub dataset (through the hub's cache).

    field_map: our field -> the data's column, for prompt, answer, reference, id (defaults: question/problem/
    prompt, answer/solution/reference). instruction: appended to each prompt; None = the default for the kind
    (math: ask for \\boxed{} unless the prompt already does), "" = none. kind: math/code/gym/chain, else
    inferred per row (code when it has an entry_point and tests). seed: default seed for rg: specs.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise UserError(f"limit must be a non-negative integer, got {limit!r}")
    if kind is not None and kind not in KINDS:
        raise UserError(f"kind must be one of {KINDS}, got {kind!r}")
    spec = str(spec)
    if spec.startswith("rg:"):
        problems = _gym_problems(spec, limit=limit, seed=seed, instruction=instruction)
    elif spec.startswith("testbed:"):
        problems = _testbed_problems(spec, split=split, limit=limit, seed=seed)
    else:
        rows, source, prefix = _spec_rows(spec, split, data_dir)
        return rows_to_problems(rows, source, prefix=prefix, limit=limit, instruction=instruction,
                                field_map=field_map, kind=kind)  # fmt: skip
    return problems[:limit] if limit is not None else problems


def _gym_problems(spec: str, *, limit: int | None, seed: int, instruction: str | None) -> list[Problem]:
    """`rg:NAME?size=100&seed=1&key=value`: reasoning-gym's NAME (size defaults to limit, else 100)."""
    from hsd.tasks.gym import load_gym_problems

    name, options = _query(spec, "rg:")
    size = options.pop("size", limit or 100)
    return load_gym_problems(
        name, size=size, seed=options.pop("seed", seed), config=options, instruction=instruction
    )


def _testbed_problems(spec: str, *, split: str | None, limit: int | None, seed: int) -> list[Problem]:
    """`testbed:chain?variant=multi&steps=4`: the testbed chain task; the spec's own n, seed and split win."""
    name, options = _query(spec, "testbed:")
    if name != "chain":
        raise UserError(f"spec {spec!r}: the testbed task is 'chain', got {name!r}")
    from hsd.tasks.chain import load_chain_problems

    defaults = {k: v for k, v in {"seed": seed, "split": split, "n": limit}.items() if v is not None}
    return load_chain_problems(**{**defaults, **options})


def _spec_rows(spec: str, split: str | None, folder: str | os.PathLike | None) -> tuple[list[Row], str, str]:
    """The rows of a hub dataset (`hf:`), a file, a `datasets` directory or a short name, where they came
    from, and the prefix of their problem ids."""
    if spec.startswith("hf:"):
        return _hub_rows(spec, split), spec, spec
    path = Path(spec)
    if spec in BENCHMARKS and not path.exists():
        check_split(spec, split)
        folder = mirror_folder(folder)
        local = mirror_file(spec, folder)
        if local is not None:
            return _file_rows(local, None), str(local), BENCHMARKS[spec].prefix
        return hub_rows(spec, folder), hub_source(spec), BENCHMARKS[spec].prefix
    return _file_rows(path, split), str(path), path.stem or spec


# ---------------------------------------------------------------- reading rows: (row number, row or error)
Row = tuple[int, "dict[str, Any] | str"]


def _file_rows(path: Path, split: str | None) -> Iterator[Row]:
    if path.is_dir():
        return _disk_rows(path, split)
    if not path.is_file():
        raise MissingInputError(f"no such file or directory: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return enumerate(pq.read_table(path).to_pylist(), start=1)
    raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(_FILE_SUFFIXES)}")


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, f"invalid UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON: {exc.msg} (column {exc.colno})"
                continue
            if not isinstance(row, dict):
                row = f"expected a JSON object, got {type(row).__name__}"
            yield number, row


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON: {exc}") from exc
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        yield number, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _csv_rows(path: Path) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield reader.line_num, {key: value for key, value in row.items() if key is not None}


def _disk_rows(path: Path, split: str | None) -> Iterator[Row]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise UserError(f"{path}: choose a split with split=... from {sorted(loaded)}")
        loaded = loaded[split]
    return enumerate(loaded.to_list(), start=1)


def _hub_rows(spec: str, split: str | None) -> Iterator[Row]:
    import datasets

    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"spec {spec!r}: expected hf:NAME[:CONFIG][:SPLIT]")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    split = (parts[2] if len(parts) > 2 else None) or split or "train"
    return enumerate(datasets.load_dataset(name, config, split=split).to_list(), start=1)


# ---------------------------------------------------------------- rows -> problems, with validation
def rows_to_problems(
    rows, source: str, *, prefix: str, limit: int | None = None, instruction: str | None = None,
    field_map: Mapping[str, str] | None = None, kind: str | None = None,
) -> list[Problem]:  # fmt: skip
    """Map rows to Problems; raise one UserError listing every bad row (source, row, field, what is wrong)."""
    field_map = dict(field_map or {})
    unknown = set(field_map) - {"prompt", "answer", "reference", "id"}
    if unknown:
        raise UserError(f"field_map keys must be prompt/answer/reference/id, got {sorted(unknown)}")
    problems, errors = [], []
    for index, (number, row) in enumerate(rows):
        if limit is not None and len(problems) + len(errors) >= limit:
            break
        where = f"{source}: row {number}"
        if isinstance(row, str):
            errors.append(f"{where}: {row}")
            continue
        try:
            problems.append(replace(_problem(row, index, prefix, instruction, field_map, kind), origin=where))
        except _RowError as exc:
            errors.append(f"{where}: field {exc.field!r}: {exc.message}")
    if len(errors) == 1:
        raise UserError(errors[0])
    if errors:
        raise UserError(f"{len(errors)} bad row(s) in {source}:\n" + "\n".join(errors))
    if not problems:
        raise UserError(f"{source}: no problems found")
    return problems


class _RowError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _pick(row: dict, our_name: str, candidates: tuple[str, ...], field_map: dict) -> str:
    if our_name in field_map:
        if field_map[our_name] not in row:
            raise _RowError(field_map[our_name], "missing")
        return field_map[our_name]
    for name in candidates:
        if name in row and row[name] is not None:
            return name
    raise _RowError(" or ".join(candidates), "missing")


def _text(row: dict, field: str, allow_numbers: bool = False) -> str:
    value = row[field]
    if allow_numbers and is_number(value):
        value = str(value)
    if not isinstance(value, str):
        wanted = "a string or number" if allow_numbers else "a string"
        raise _RowError(field, f"expected {wanted}, got {type(value).__name__}")
    if not value.strip():
        raise _RowError(field, "empty")
    return value


def _is_code_row(row: dict) -> bool:
    return "entry_point" in row and any(key in row for key in _CODE_TEST_FIELDS)


def _problem(row: dict, index: int, prefix: str, instruction: str | None, field_map: dict, kind: str | None):
    prompt_field = _pick(row, "prompt", PROMPT_FIELDS, field_map)
    prompt = _text(row, prompt_field)
    id_field = field_map.get("id") or next((f for f in ID_FIELDS if row.get(f) is not None), None)
    problem_id = str(row[id_field]) if id_field else f"{prefix}-{index}"
    meta = _row_meta(row)
    row_kind = kind or ("code" if _is_code_row(row) else "math")
    if row_kind == "code":
        answer, meta["tests"] = _code_fields(row)
        default = CODE_INSTRUCTION.replace("{entry_point}", row.get("entry_point", "the function"))
        prompt = _with_instruction(prompt.rstrip(), default if instruction is None else instruction, "\n\n")
        return Problem(problem_id, prompt, answer, kind="code", meta=meta)
    answer_field = _pick(row, "answer", ANSWER_FIELDS, field_map)
    answer, reference = _math_answer(_text(row, answer_field, allow_numbers=True), answer_field)
    reference_field = field_map.get("reference") or ("reference" if answer_field != "reference" else None)
    if reference_field and row.get(reference_field) is not None:
        reference = _text(row, reference_field)
    if instruction is None:
        instruction = "" if "\\boxed" in prompt or row_kind != "math" else MATH_INSTRUCTION
    prompt = _with_instruction(prompt, instruction, "\n")
    return Problem(problem_id, prompt, answer, kind=row_kind, reference=reference, meta=meta)


def _with_instruction(prompt: str, instruction: str, separator: str) -> str:
    return f"{prompt}{separator}{instruction}" if instruction else prompt


def _math_answer(text: str, field: str) -> tuple[str, str | None]:
    """(gold answer, worked reference or None): GSM8K `#### n` and worked solutions ending in \\boxed{}."""
    if "####" in text:
        try:
            return gsm8k_gold(text), gsm8k_reference(text) or None
        except ValueError as exc:
            raise _RowError(field, str(exc)) from None
    if "\\boxed" in text:
        boxed = last_boxed(text)
        if not boxed:
            raise _RowError(field, "has \\boxed but no balanced, non-empty \\boxed{...}")
        return boxed, (text if text.strip() != f"\\boxed{{{boxed}}}" else None)
    return text.strip(), None


def _row_meta(row: dict) -> dict[str, Any]:
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            raise _RowError("meta", "not valid JSON") from None
    if meta is not None and not isinstance(meta, dict):
        raise _RowError("meta", f"expected an object, got {type(meta).__name__}")
    return dict(meta or {})


def _code_fields(row: dict) -> tuple[str, dict]:
    """(canonical program or "", tests) for HumanEval- and MBPP+-style rows."""
    entry_point = row.get("entry_point")
    if not isinstance(entry_point, str) or not entry_point.strip():
        raise _RowError("entry_point", "missing or not a string")
    canonical = row.get("canonical_solution") or ""
    if not isinstance(canonical, str):
        raise _RowError("canonical_solution", f"expected a string, got {type(canonical).__name__}")
    if "test" in row:
        if not isinstance(row["test"], str) or "def check" not in row["test"]:
            raise _RowError("test", "expected test source defining check(candidate)")
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else ""
        tests = {"test": row["test"], "entry_point": entry_point, "prompt": prompt}
        program = prompt + canonical if canonical and f"def {entry_point}" not in canonical else canonical
        return program, tests
    inputs = row.get("inputs")
    if inputs is None:
        inputs = list(row.get("base_input") or []) + list(row.get("plus_input") or [])
    if not isinstance(inputs, list) or not inputs:
        raise _RowError("inputs", "expected a non-empty list of argument lists (or base_input/plus_input)")
    for position, args in enumerate(inputs, start=1):
        if not isinstance(args, list):
            raise _RowError("inputs", f"item {position} is not a list of arguments")
    if not canonical and "expected" not in row:
        raise _RowError("canonical_solution", "needed to compute the expected outputs (or give 'expected')")
    given = {k: row[k] for k in ("canonical_solution", "expected", "task_id") if row.get(k) is not None}
    return canonical, {"entry_point": entry_point, "inputs": inputs, "atol": row.get("atol") or 0, **given}


def to_hf_dataset(problems: list[Problem]):
    """A `datasets.Dataset` for TRL: conversational `prompt`, plus answer, reference, kind, problem_id, meta
    (JSON) columns, which TRL hands to reward functions as keyword lists."""
    import datasets

    if not problems:
        raise UserError("to_hf_dataset: no problems")
    return datasets.Dataset.from_dict(
        {
            "prompt": [chat_prompt(p.prompt) for p in problems],
            "answer": [p.answer for p in problems],
            "reference": [p.reference or "" for p in problems],
            "kind": [p.kind for p in problems],
            "problem_id": [p.id for p in problems],
            "meta": [json.dumps(p.meta) for p in problems],
        }
    )
