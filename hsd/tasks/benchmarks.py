"""The benchmarks hsd knows by short name: a local copy (a mirror) when a data folder holds one, else the
public hub dataset through `datasets` (and the hub's cache), its columns mapped to the mirror's, so that a
name gives the same problems, ids and prompts from either source.

A mirror folder holds the files named in `BENCHMARKS` (gsm8k/test.jsonl, math/math500.jsonl, ...): plain
JSONL with the columns listed there. Without one, `hub_rows` reads the hub dataset; offline it fails at once
with one line naming the benchmark, the folder looked in and the hub id tried.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsd.errors import MissingInputError, UserError

DATA_DIR_VARIABLE = "HSD_DATA_DIR"
HUB_PROBE_TIMEOUT = 10.0  # seconds to wait for the hub's answer before calling it unreachable


@dataclass(frozen=True)
class Benchmark:
    """Where a short name's problems come from."""

    file: str  # under a mirror folder
    prefix: str  # problem ids are PREFIX-INDEX when the rows carry none
    hub: str  # public hub dataset
    config: str | None
    split: str
    columns: dict[str, str] = field(default_factory=dict)  # mirror column -> hub column


BENCHMARKS = {
    "gsm8k": Benchmark("gsm8k/test.jsonl", "gsm8k-test", "openai/gsm8k", "main", "test",
                       {"question": "question", "answer": "answer"}),
    "gsm8k-train": Benchmark("gsm8k/train.jsonl", "gsm8k-train", "openai/gsm8k", "main", "train",
                             {"question": "question", "answer": "answer"}),
    "math500": Benchmark("math/math500.jsonl", "math500", "HuggingFaceH4/MATH-500", None, "test",
                         {"problem": "problem", "answer": "answer"}),
    "aime24": Benchmark("math/aime24.jsonl", "aime24", "HuggingFaceH4/aime_2024", None, "train",
                        {"problem": "problem", "answer": "answer"}),
    "aime25": Benchmark("math/aime25.jsonl", "aime25", "math-ai/aime25", None, "test",
                        {"problem": "problem", "answer": "answer"}),
    "humaneval": Benchmark("code/humaneval.jsonl", "HumanEval", "openai/openai_humaneval", "openai_humaneval", "test",
                           {k: k for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}),
    # evalplus/mbppplus keeps its tests as Python source; mbpp_row rebuilds the mirror's columns from it
    "mbppplus": Benchmark("code/mbppplus.jsonl", "Mbpp", "evalplus/mbppplus", None, "test"),
}  # fmt: skip


def mirror_folder(given: str | os.PathLike | None = None) -> Path | None:
    """The folder short names are looked up in first: `given` (a --data-dir), else $HSD_DATA_DIR, else none."""
    folder = given or os.environ.get(DATA_DIR_VARIABLE)
    return Path(folder) if folder else None


def mirror_file(name: str, folder: Path | None) -> Path | None:
    """The benchmark's file under `folder`, when it is there."""
    path = folder / BENCHMARKS[name].file if folder else None
    return path if path is not None and path.is_file() else None


def hub_source(name: str) -> str:
    """`hf:ID:CONFIG:SPLIT` (CONFIG empty when there is none), as load_problems spells a hub dataset; bad-row
    messages name it."""
    bench = BENCHMARKS[name]
    return f"hf:{bench.hub}:{bench.config or ''}:{bench.split}"


def hub_rows(name: str, folder: Path | None) -> list[tuple[int, dict | str]]:
    """The benchmark's rows from the hub (or the hub's cache), in the mirror's columns; a row that cannot be
    mapped is its error text. Offline or unreachable without a cached copy: one `MissingInputError` line
    naming the benchmark, `folder` (where no mirror was found) and the hub id."""
    bench = BENCHMARKS[name]
    loaded = _load_hub(name, folder)
    mapped = []
    for number, row in enumerate(loaded.to_list(), start=1):
        try:
            mapped.append((number, mbpp_row(row) if name == "mbppplus" else _columns(row, bench.columns)))
        except _HubRowError as exc:
            mapped.append((number, str(exc)))
    return mapped


def _load_hub(name: str, folder: Path | None):
    import datasets
    from huggingface_hub import constants

    bench = BENCHMARKS[name]
    reason = None if constants.HF_HUB_OFFLINE else _unreachable(bench.hub)
    if reason is None:
        try:
            return datasets.load_dataset(bench.hub, bench.config, split=bench.split)
        except (ConnectionError, FileNotFoundError) as exc:  # offline without a cached copy; no such dataset
            reason = str(exc)
    where = (
        f"{folder} has no {bench.file}"
        if folder
        else f"${DATA_DIR_VARIABLE} is unset and no --data-dir was given"
    )
    raise MissingInputError(
        f"{name!r}: no local copy ({where}) and the hub dataset {bench.hub!r} could not be loaded "
        f"({' '.join(reason.split())}); go online (once: HF_HUB_OFFLINE=1 then reads the hub's cache) or set "
        f"${DATA_DIR_VARIABLE} (or --data-dir) to a folder holding {bench.file}"
    )


def _unreachable(hub_id: str) -> str | None:
    """Why the hub cannot serve `hub_id` now (None when it can): asked once with a short timeout, so that no
    connection means one error at once instead of minutes of download retries."""
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(hub_id, timeout=HUB_PROBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the HTTP client's errors differ across huggingface_hub versions
        return f"{type(exc).__name__}: {exc}"
    return None


class _HubRowError(Exception):
    pass


def _columns(row: dict, columns: dict[str, str]) -> dict:
    missing = [hub for hub in columns.values() if hub not in row]
    if missing:
        raise _HubRowError(f"missing column(s) {missing} (the row has {sorted(row)})")
    return {ours: row[hub] for ours, hub in columns.items()}


def mbpp_row(row: dict) -> dict:
    """An evalplus/mbppplus row (task_id, code, prompt, test_list, test: Python source holding `inputs = [...]`
    and `assertion(ENTRY(*inp), exp, ATOL)`) in the mirror's columns: task_id Mbpp/N, prompt (the task and its
    first assert in a docstring, as EvalPlus shows it), canonical_solution, entry_point, inputs, atol."""
    missing = [key for key in ("task_id", "code", "prompt", "test_list", "test") if key not in row]
    if missing:
        raise _HubRowError(f"missing column(s) {missing} (the row has {sorted(row)})")
    try:
        module = ast.parse(row["test"])
    except SyntaxError as exc:
        raise _HubRowError(f"field 'test': not Python ({exc.msg}, line {exc.lineno})") from None
    inputs = next((node.value for node in module.body if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "inputs" for t in node.targets)), None)  # fmt: skip
    call = next((node for node in ast.walk(module) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id == "assertion"), None)  # fmt: skip
    if inputs is None or call is None or len(call.args) != 3 or not isinstance(call.args[0], ast.Call):
        raise _HubRowError("field 'test': expected `inputs = [...]` and `assertion(ENTRY(*inp), exp, atol)`")
    entry = call.args[0].func
    if not isinstance(entry, ast.Name):
        raise _HubRowError("field 'test': the tested function is not called by its name")
    try:
        arguments, atol = ast.literal_eval(inputs), ast.literal_eval(call.args[2])
    except ValueError:
        raise _HubRowError("field 'test': the inputs or atol are not Python literals") from None
    first = row["test_list"][0] if row["test_list"] else ""
    return {
        "task_id": f"Mbpp/{row['task_id']}",
        "prompt": f'"""\n{row["prompt"]}\n{first}\n"""\n',
        "canonical_solution": row["code"],
        "entry_point": entry.id,
        "inputs": [_as_json(args) for args in arguments],
        "atol": atol,
    }


def _as_json(value: Any) -> Any:
    """A Python literal as the mirror's JSON holds it: tuples and sets as lists, complex numbers as text
    (hsd.tasks.code.mbpp_arguments rebuilds the types each task expects)."""
    if isinstance(value, list | tuple | set | frozenset):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, complex):
        return str(value)
    return value


def check_split(name: str, split: str | None) -> None:
    """A short name stands for one split; another one asked for is an error (gsm8k-train is GSM8K's train)."""
    if split is not None and split != BENCHMARKS[name].split:
        others = [n for n, b in BENCHMARKS.items() if b.hub == BENCHMARKS[name].hub and b.split == split]
        hint = f"; use {others[0]!r}" if others else ""
        raise UserError(f"{name!r} is the {BENCHMARKS[name].split!r} split of {BENCHMARKS[name].hub}, "
                        f"got split={split!r}{hint}")  # fmt: skip
