"""The two records every task shares: a `Problem` to pose and a `Verdict` on one completion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("math", "code", "gym", "chain")
UNCOMPUTED = "error"  # the reason of a verdict whose reward is unknown (the check itself failed)


@dataclass
class Problem:
    """One problem, whatever its source (a JSONL row, a reasoning-gym entry, a testbed chain)."""

    id: str  # stable identifier, e.g. "gsm8k-test-17" or "HumanEval/3"
    prompt: str  # the question as the student sees it (instruction already appended)
    answer: str  # gold final answer: what the verifier checks and what the teacher context shows
    kind: str = "math"  # which verifier scores it: one of KINDS
    reference: str | None = None  # a worked reference solution, when the data has one (SDFT context)
    meta: dict[str, Any] = field(default_factory=dict)  # verifier extras: code tests, gym entry, chain spec
    origin: str = field(default="", compare=False)  # where it was read: "FILE: row N" ("" if generated)


@dataclass
class Verdict:
    """A verifier's judgement of one completion."""

    reward: float  # in [0, 1]; 1.0 = verified correct
    reason: str  # short machine-readable cause: "correct", "wrong", "no_answer", "timeout", "error", ...
    feedback: str = ""  # human-readable detail a teacher context can use (first failing test, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # verifier-specific (pass fraction, error position)


def chat_prompt(question: str) -> list[dict]:
    """The student's conversation: one user message holding the question (TRL's conversational `prompt`).
    The one builder of the student prompt: the training dataset, sampling for eval and analysis, and the
    prompt-length check all call it."""
    return [{"role": "user", "content": question}]
