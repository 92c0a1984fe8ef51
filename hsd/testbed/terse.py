"""The terse-answer chain: the same worked chain, but the checked answer is only the final value's parity.

    prompt  "Mod 10, in order: 7 +3 -1 +2 -3\nGive the result's parity in \\boxed{}."
    answer  "7+3=0\n0-1=9\n9+2=1\n1-3=8\nParity: \\boxed{even}"

The gold answer is one bit ("even" or "odd"), so it reveals little of the path, as one AIME integer reveals
little of a long solution: about half of the wrong chains end at the right parity and are rewarded. The
problems are ordinary math rows (the gold answer in \\boxed{}, scored by the math verifier; a word, not a
digit, so a completion cut off after a step line, whose last number is a value, never scores); each row's
meta keeps its chain (start, ops, variant, modulus), so the true error position of a completion stays known
(`first_error_of`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hsd.tasks.chain import Chain, chain_prompt, first_error, load_chain_problems, worked_solution
from hsd.tasks.problem import Problem

ANSWER_FORMS = ("value", "parity")  # "value": the chain task's own "Answer: NN"; "parity": this module's
PARITY_INSTRUCTION = "Give the result's parity in \\boxed{}."  # holds \boxed: no math instruction is added
_ANSWER_LINE_RE = re.compile(r"Answer: ([0-9]+)$")


def parity(value: int) -> str:
    return "odd" if value % 2 else "even"


def parity_line(value: int) -> str:
    return f"Parity: \\boxed{{{parity(value)}}}"


def terse_prompt(chain: Chain) -> str:
    return f"{chain_prompt(chain)}\n{PARITY_INSTRUCTION}"


def terse_solution(solution: str) -> str:
    """A worked solution ending in the chain's "Answer: NN" line, with that line replaced by its parity's."""
    match = _ANSWER_LINE_RE.search(solution)
    if match is None:
        raise ValueError(f"not a worked chain solution ending in its answer line: {solution[-40:]!r}")
    return solution[: match.start()] + parity_line(int(match.group(1)))


def final_value(solution: str) -> int:
    """The value a worked solution (value form) ends at, right or wrong."""
    match = _ANSWER_LINE_RE.search(solution)
    if match is None:
        raise ValueError(f"not a worked chain solution ending in its answer line: {solution[-40:]!r}")
    return int(match.group(1))


def terse_problem(problem: Problem) -> Problem:
    """The parity form of a chain `Problem` (same id prefix, split and chain meta)."""
    chain = Chain.from_meta(problem.meta)
    return Problem(
        id=problem.id.replace("chain-", "chain-parity-", 1),
        prompt=terse_prompt(chain),
        answer=parity(chain.answer),
        kind="math",
        reference=terse_solution(worked_solution(chain)),
        meta={**problem.meta, "answer_form": "parity", "value": chain.number(chain.answer)},
    )


def terse_rows(**options) -> list[dict]:
    """The rows of `load_chain_problems(**options)` (the same draw, so the same problems as the value form's)
    in parity form, as JSONL-ready dicts (question, answer, reference, id, meta)."""
    rows = []
    for problem in map(terse_problem, load_chain_problems(**options)):
        rows.append(
            {
                "id": problem.id,
                "question": problem.prompt,
                "answer": problem.answer,
                "reference": problem.reference,
                "meta": problem.meta,
            }
        )
    return rows


def write_terse_problems(path: str | os.PathLike, **options) -> Path:
    """`terse_rows(**options)` written to `path` as JSONL (made whole, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text("".join(json.dumps(row) + "\n" for row in terse_rows(**options)))
    os.replace(staging, path)
    return path


def first_error_of(completion: str, problem: Problem) -> tuple[int, int] | None:
    """(step, character) of a parity-form completion's first wrong character against its chain (as
    `first_error`: the worked lines, then the parity line); None when the whole completion is right."""
    chain = Chain.from_meta(problem.meta)
    expected = terse_solution(worked_solution(chain))
    error = first_error(completion, chain)
    if error is not None and error[0] < len(chain.ops):
        return error
    start = expected.rindex("\n") + 1
    tail, line = completion[start:], expected[start:]
    matched = next((i for i, (a, b) in enumerate(zip(tail, line)) if a != b), min(len(tail), len(line)))
    if matched == len(line) and not tail[len(line) :].strip():
        return None
    return len(chain.ops), start + matched
