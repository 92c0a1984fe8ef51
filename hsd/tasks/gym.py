"""reasoning-gym tasks: any of its procedural datasets by name, config and seed, scored by its own scorer.
The scorer runs in a worker process under a wall-clock limit; the entry is regenerated there from its seed.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from hsd.tasks.math import as_text, last_boxed
from hsd.tasks.pool import WorkerError, WorkerTimeout, shared_pool
from hsd.tasks.problem import UNCOMPUTED, Problem, Verdict

GYM_INSTRUCTION = "Give only your final answer between <answer> and </answer> tags at the end."
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_WORKER_MODULES = ("reasoning_gym", "hsd.tasks.gym")


@lru_cache(maxsize=64)
def _dataset(name: str, config_json: str, seed: int, size: int):
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ValueError(f"unknown reasoning-gym dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    config = json.loads(config_json)
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    except TypeError as exc:  # an unknown config key
        raise ValueError(f"reasoning-gym dataset {name!r}: bad config {config}: {exc}") from exc


def load_gym_problems(
    name: str, *, size: int = 100, seed: int = 0, config: dict[str, Any] | None = None,
    instruction: str | None = None,
) -> list[Problem]:  # fmt: skip
    """`size` problems of reasoning-gym dataset `name` (its config keys as `config`), deterministic in `seed`.

    The prompt is the dataset's question plus `instruction` (default: ask for <answer>...</answer> tags);
    meta holds what the scorer needs to regenerate the entry: dataset, config, seed, size, index.
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    config = dict(config or {})
    config_json = json.dumps(config, sort_keys=True)
    dataset = _dataset(name, config_json, int(seed), size)
    instruction = GYM_INSTRUCTION if instruction is None else instruction
    problems = []
    for index in range(size):
        entry = dataset[index]
        prompt = entry["question"] + (f"\n\n{instruction}" if instruction else "")
        answer = "" if entry.get("answer") is None else str(entry["answer"])
        meta = {"dataset": name, "config": config, "seed": int(seed), "size": size, "index": index}
        problems.append(Problem(f"rg-{name}-{seed}-{index}", prompt, answer, kind="gym", meta=meta))
    return problems


def extract_gym_answer(completion: str | bytes) -> str | None:
    """The last <answer>...</answer>; else the last \\boxed{...}; else the last non-empty line."""
    text = as_text(completion)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def score(meta: dict[str, Any], answer: str, gold: str | None = None) -> float:
    """reasoning-gym's own score_answer on the regenerated entry (runs inside a worker)."""
    for key in ("dataset", "seed", "size", "index"):
        if key not in meta:
            raise ValueError(f"gym problem meta lacks {key!r}: {sorted(meta)}")
    dataset = _dataset(meta["dataset"], json.dumps(meta.get("config") or {}, sort_keys=True), meta["seed"],
                       meta["size"])  # fmt: skip
    entry = dataset[meta["index"]]
    regenerated = "" if entry.get("answer") is None else str(entry["answer"])
    if gold is not None and gold != regenerated:
        raise ValueError(
            f"regenerated entry {meta['dataset']}#{meta['index']} has answer {regenerated[:80]!r}, "
            f"not {gold[:80]!r}: a different reasoning-gym version or config?"
        )
    return float(dataset.score_answer(answer, entry))


def warm_workers(count: int = 1) -> None:
    shared_pool(_WORKER_MODULES).warm(count)


def verify_gym(completion: str | bytes, problem: Problem, *, timeout: float = 10.0) -> Verdict:
    """Reward = reasoning-gym's score for the extracted answer (partial credit possible), with a reason.

    Reasons: "correct" (score 1), "wrong" (score below 1; extra["score"]), "no_answer", "timeout",
    "error" (the scorer failed or the entry could not be regenerated: reward unknown).
    """
    answer = extract_gym_answer(completion)
    if answer is None:
        return Verdict(0.0, "no_answer", "no <answer>...</answer> found in the completion")
    extra = {"answer": answer[:200]}
    try:
        value = shared_pool(_WORKER_MODULES).call(
            "hsd.tasks.gym", "score", dict(problem.meta), answer, problem.answer, timeout=timeout
        )
    except WorkerTimeout:
        return Verdict(0.0, "timeout", f"scoring took longer than {timeout:g} s", extra)
    except WorkerError as exc:
        return Verdict(0.0, UNCOMPUTED, f"reasoning-gym scorer failed: {exc}", extra)
    value = min(max(value, 0.0), 1.0)
    extra["score"] = value
    if value >= 1.0:
        return Verdict(1.0, "correct", "", extra)
    return Verdict(value, "wrong", f"answer {answer[:200]} scored {value:g}", extra)
