"""One `verify` for every task kind, the verifiers `hsd eval` and `hsd analyze` choose from, and a TRL reward
function that verifies a batch in parallel. A reward that cannot be computed is a verdict with reason
UNCOMPUTED: logged, counted and returned as None (TRL: NaN), never silently 0.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hsd.tasks.math import as_text
from hsd.tasks.problem import KINDS, UNCOMPUTED, Problem, Verdict

logger = logging.getLogger(__name__)


def _meta(meta: Mapping | str | None) -> dict[str, Any]:
    if meta is None or meta == "":
        return {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a mapping or a JSON object string, got {type(meta).__name__}")
    return dict(meta)


def verify(
    problem_kind: str,
    completion: str | bytes,
    *,
    answer: str,
    meta: Mapping | str | None = None,
    math_timeout: float = 5.0,
    math_fallback: str = "last_number",
    math_shortcut: bool = True,
    code_timeout: float = 10.0,
    code_memory_mb: int = 1024,
    code_partial_credit: bool = False,
    gym_timeout: float = 10.0,
) -> Verdict:
    """Score one completion with the verifier of its kind (math, code, gym, chain)."""
    meta = _meta(meta)
    if problem_kind == "math":
        from hsd.tasks.math import verify_math

        return verify_math(
            completion, answer, timeout=math_timeout, fallback=math_fallback, shortcut=math_shortcut
        )
    if problem_kind == "code":
        from hsd.tasks.code import extract_code, run_tests

        if "tests" not in meta:
            raise ValueError("a code problem needs meta['tests'] (HumanEval or MBPP+ form)")
        tests = meta["tests"]
        code = extract_code(completion, tests.get("entry_point"))
        return run_tests(
            code, tests, timeout=code_timeout, memory_mb=code_memory_mb, partial_credit=code_partial_credit
        )
    if problem_kind == "gym":
        from hsd.tasks.gym import verify_gym

        return verify_gym(completion, Problem("", "", answer, kind="gym", meta=meta), timeout=gym_timeout)
    if problem_kind == "chain":
        from hsd.tasks.chain import verify_chain

        return verify_chain(as_text(completion), Problem("", "", answer, kind="chain", meta=meta))
    raise ValueError(f"unknown problem kind {problem_kind!r}; choose from {KINDS}")


Verifier = Callable[[Problem, str], Verdict]


def verify_problem(problem: Problem, completion: str) -> Verdict:
    """The task's own verifier (math, code, gym, chain) on one completion."""
    return verify(problem.kind, completion, answer=problem.answer, meta=problem.meta)


def verify_last_number(problem: Problem, completion: str) -> Verdict:
    """math-verify on the last \\boxed{} or else the last number of the reply, whatever the task's kind: for
    terse numeric tasks whose own scorer wants a format a small model rarely follows."""
    from hsd.tasks.math import verify_math

    return verify_math(completion, problem.answer, fallback="last_number")


# --verifier NAME: the task's own verifier, or the last number of the reply
VERIFIERS: dict[str, Verifier] = {"task": verify_problem, "last-number": verify_last_number}


def checked_verdict(verifier: Callable[..., Verdict], *args: Any, extra: dict | None = None) -> Verdict:
    """`verifier(*args)`, or an UNCOMPUTED verdict (carrying `extra`) naming the exception it raised."""
    try:
        return verifier(*args)
    except Exception as exc:  # noqa: BLE001 - any verifier failure makes this one reward unknown
        return Verdict(0.0, UNCOMPUTED, f"verifier failed: {type(exc).__name__}: {exc}", dict(extra or {}))


def verify_all(
    problems: Sequence[Problem], completions: Sequence[Sequence[str]], verifier: Verifier, workers: int = 2
) -> list[list[Verdict]]:
    """Verdicts for each problem's completions, verified `workers` at a time, in order."""
    jobs = [(p, text) for p, texts in zip(problems, completions) for text in texts]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="verifier") as pool:
        verdicts = list(pool.map(lambda job: checked_verdict(verifier, *job), jobs))
    out, start = [], 0
    for texts in completions:
        out.append(verdicts[start : start + len(texts)])
        start += len(texts)
    return out


def completion_text(completion: Any) -> str | bytes:
    """A TRL completion as text: a string, or the assistant messages of a conversational completion."""
    if isinstance(completion, str | bytes):
        return completion
    if isinstance(completion, Mapping):
        return completion.get("content") or ""
    if isinstance(completion, list | tuple):
        parts = [
            m.get("content") or "" for m in completion if isinstance(m, Mapping) and m.get("role") != "user"
        ]
        return "\n".join(p if isinstance(p, str) else str(p) for p in parts)
    raise ValueError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class VerifierReward:
    """TRL reward function `f(prompts, completions, completion_ids=None, **columns) -> list[float | None]`.

    Uses the dataset columns `answer`, `kind` (default "math") and `meta` (JSON string or dict). Rows are
    verified in parallel: `num_workers` dispatch threads, each driving its own worker processes (math-verify
    and reasoning-gym workers, one sandbox process per code run), results in row order. After each call,
    `last_verdicts` holds the batch's verdicts and `counts` the running count of each reason.
    """

    __name__ = "verifier_reward"

    def __init__(self, num_workers: int = 2, **verify_options: Any):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.verify_options = verify_options
        self.last_verdicts: list[Verdict] = []
        self.counts: Counter[str] = Counter()
        self._executor: ThreadPoolExecutor | None = None

    def _score_row(self, row: int, completion: Any, answer: str, kind: str, meta: Any) -> Verdict:
        def score() -> Verdict:
            return verify(kind, completion_text(completion), answer=answer, meta=meta, **self.verify_options)

        return checked_verdict(score, extra={"row": row})

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        rows = len(completions)
        answers = _column(columns, "answer", rows, None)
        kinds = _column(columns, "kind", rows, "math")
        metas = _column(columns, "meta", rows, None)
        if any(a is None for a in answers):
            raise ValueError("verifier_reward needs an 'answer' column in the dataset")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="verifier")
        futures = [
            self._executor.submit(self._score_row, i, completions[i], str(answers[i]), kinds[i], metas[i])
            for i in range(rows)
        ]
        verdicts = [future.result() for future in futures]
        rewards: list[float | None] = []
        for row, verdict in enumerate(verdicts):
            self.counts[verdict.reason] += 1
            if verdict.reason == UNCOMPUTED:
                logger.warning(
                    "verifier_reward: row %d (kind %s): reward not computed: %s", row, kinds[row],
                    verdict.feedback[:1000],
                )  # fmt: skip
                rewards.append(None)
            else:
                rewards.append(float(verdict.reward))
        self.last_verdicts = verdicts
        return rewards

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _column(columns: Mapping, name: str, rows: int, default: Any) -> list:
    values = columns.get(name)
    if values is None:
        return [default] * rows
    if len(values) != rows:
        raise ValueError(f"column {name!r} has {len(values)} values for {rows} completions")
    return list(values)


def make_reward_func(
    num_workers: int = 2,
    math_timeout: float = 5.0,
    code_timeout: float = 10.0,
    gym_timeout: float = 10.0,
    **verify_options: Any,
) -> VerifierReward:
    """A TRL reward function over the verifiers (see VerifierReward); extra options go to `verify`."""
    return VerifierReward(
        num_workers,
        math_timeout=math_timeout,
        code_timeout=code_timeout,
        gym_timeout=gym_timeout,
        **verify_options,
    )
