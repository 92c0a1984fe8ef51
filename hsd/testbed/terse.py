"""The terse-answer chain: the same worked chain, but the checked answer is only the final value's parity
(form "parity"), or only which half of 0-9 it lies in (form "half": "Half: \\boxed{high}").

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

ANSWER_FORMS = (
    "value",
    "parity",
    "half",
)  # "value": the chain task's own "Answer: NN"; the rest: this module's
# terse form -> (answer line label, instruction); each instruction holds \boxed, so no math instruction is added
TERSE_FORMS = {
    "parity": ("Parity", "Give the result's parity in \\boxed{}."),
    "half": ("Half", "Is the result high (5-9) or low (0-4)? Answer in \\boxed{}."),
}
_ANSWER_LINE_RE = re.compile(r"Answer: ([0-9]+)$")


def _form(form: str) -> tuple[str, str]:
    if form not in TERSE_FORMS:
        raise ValueError(f"terse answer form must be one of {tuple(TERSE_FORMS)}, got {form!r}")
    return TERSE_FORMS[form]


def parity(value: int) -> str:
    return "odd" if value % 2 else "even"


def terse_answer(value: int, form: str = "parity") -> str:
    """The checked answer of a chain ending at `value`: its parity, or which half of 0-9 it lies in ("half":
    unlike the parity, a sign flipped in one step, v - a for v + a, can change it)."""
    _form(form)
    return parity(value) if form == "parity" else ("high" if value % 10 >= 5 else "low")


def terse_line(value: int, form: str = "parity") -> str:
    return f"{_form(form)[0]}: \\boxed{{{terse_answer(value, form)}}}"


def terse_prompt(chain: Chain, form: str = "parity") -> str:
    return f"{chain_prompt(chain)}\n{_form(form)[1]}"


def terse_solution(solution: str, form: str = "parity") -> str:
    """A worked solution ending in the chain's "Answer: NN" line, with that line replaced by the form's."""
    match = _ANSWER_LINE_RE.search(solution)
    if match is None:
        raise ValueError(f"not a worked chain solution ending in its answer line: {solution[-40:]!r}")
    return solution[: match.start()] + terse_line(int(match.group(1)), form)


def final_value(solution: str) -> int:
    """The value a worked solution (value form) ends at, right or wrong."""
    match = _ANSWER_LINE_RE.search(solution)
    if match is None:
        raise ValueError(f"not a worked chain solution ending in its answer line: {solution[-40:]!r}")
    return int(match.group(1))


def terse_problem(problem: Problem, form: str = "parity") -> Problem:
    """The terse form of a chain `Problem` (same id prefix, split and chain meta)."""
    chain = Chain.from_meta(problem.meta)
    return Problem(
        id=problem.id.replace("chain-", f"chain-{form}-", 1),
        prompt=terse_prompt(chain, form),
        answer=terse_answer(chain.answer, form),
        kind="math",
        reference=terse_solution(worked_solution(chain), form),
        meta={**problem.meta, "answer_form": form, "value": chain.number(chain.answer)},
    )


def terse_rows(form: str = "parity", **options) -> list[dict]:
    """The rows of `load_chain_problems(**options)` (the same draw, so the same problems as the value form's)
    in the terse `form`, as JSONL-ready dicts (question, answer, reference, id, meta)."""
    rows = []
    for problem in (terse_problem(p, form) for p in load_chain_problems(**options)):
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


def write_terse_problems(path: str | os.PathLike, form: str = "parity", **options) -> Path:
    """`terse_rows(form, **options)` written to `path` as JSONL (made whole, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text("".join(json.dumps(row) + "\n" for row in terse_rows(form, **options)))
    os.replace(staging, path)
    return path


def first_error_of(completion: str, problem: Problem) -> tuple[int, int] | None:
    """(step, character) of a completion's first wrong character against its chain (as `first_error`: the
    worked lines, then the answer line of the problem's form, the chain task's own when its meta names none);
    None when the whole completion is right."""
    chain = Chain.from_meta(problem.meta)
    form = problem.meta.get("answer_form", "value")
    if form == "value":
        return first_error(completion, chain)
    expected = terse_solution(worked_solution(chain), form)
    error = first_error(completion, chain)
    if error is not None and error[0] < len(chain.ops):
        return error
    start = expected.rindex("\n") + 1
    tail, line = completion[start:], expected[start:]
    matched = next((i for i, (a, b) in enumerate(zip(tail, line)) if a != b), min(len(tail), len(line)))
    if matched == len(line) and not tail[len(line) :].strip():
        return None
    return len(chain.ops), start + matched
