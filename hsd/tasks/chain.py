"""The testbed task: a chain of + and - operations on a running value mod 10 (or 100), each step written out.
An exact verifier and the true error position (first wrong character) of any completion, in two variants.

Format (character-exact; every number has the modulus's width, one digit mod 10, two mod 100):

    prompt  "Mod 10, in order: 7 +3 -1 +2 -3"     (variant "single")
            "Mod 10, any order: 7 +3 -1 +2 -3"    (variant "multi")
    answer  "7+3=0\n0-1=9\n9+2=1\n1-3=8\nAnswer: 8"

In the single-path variant the one correct worked solution applies the operations in the given order. In
the multi-path variant each step may apply any operation not yet used (+ and - commute), so every ordering
of the operations is a correct worked solution and all of them end at the same answer.

The true error position is the first character at which the completion stops being a prefix of *any*
correct worked solution (single-path: of the one solution). A completion that stops early has its error at
its own length, where the missing character would have been.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from hsd.core.checks import is_int
from hsd.tasks.problem import Problem, Verdict

MODULI = (10, 100)  # values have one or two digits, always written at full width
VARIANTS = ("single", "multi")
SPLITS = ("train", "test", "validation", "all")
TEST_SHARE = 4  # one problem in TEST_SHARE falls in the "test" split (by a hash of its start and operations)
VALIDATION_SHARE = 8  # one "train" problem in VALIDATION_SHARE is also "validation" (a second hash)
_INSTRUCTION = {"single": "Mod {m}, in order:", "multi": "Mod {m}, any order:"}
_ANSWER_RE = re.compile(r"^Answer:[ \t]*([0-9]+)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Chain:
    """One chain problem: a start value and signed operands (+25 is 25, -48 is -48), applied mod `modulus`."""

    start: int
    ops: tuple[int, ...]
    variant: str = "single"
    modulus: int = 10

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.modulus not in MODULI:
            raise ValueError(f"modulus must be one of {MODULI}, got {self.modulus!r}")
        if not 0 <= self.start < self.modulus:
            raise ValueError(f"start must be in [0, {self.modulus}), got {self.start}")
        if not self.ops or any(not 0 < abs(op) < self.modulus for op in self.ops):
            raise ValueError(
                f"ops must be a non-empty list of operands with 0 < |op| < {self.modulus}, got {self.ops}"
            )

    @property
    def answer(self) -> int:
        return (self.start + sum(self.ops)) % self.modulus

    @property
    def width(self) -> int:
        """Digits of every number written (values and operands): 1 mod 10, 2 mod 100."""
        return len(str(self.modulus - 1))

    def number(self, value: int) -> str:
        return f"{value:0{self.width}d}"

    def op_text(self, op: int) -> str:
        return ("+" if op > 0 else "-") + self.number(abs(op))

    def step_line(self, value: int, op: int, result: int) -> str:
        """One worked line, "62-48=14\n"; `result` is what is written, right or wrong."""
        return f"{self.number(value)}{self.op_text(op)}={self.number(result)}\n"

    def answer_line(self, value: int) -> str:
        return f"Answer: {self.number(value)}"

    def apply(self, value: int, op: int) -> int:
        return (value + op) % self.modulus

    @classmethod
    def from_meta(cls, meta: dict) -> Chain:
        """The chain a `Problem.meta` describes (keys start, ops, variant, modulus)."""
        missing = [key for key in ("start", "ops", "variant") if key not in meta]
        if missing:
            raise ValueError(f"Problem.meta lacks the chain field(s) {missing}; is this a chain problem?")
        ops = tuple(int(op) for op in meta["ops"])
        return cls(int(meta["start"]), ops, str(meta["variant"]), int(meta.get("modulus", 10)))


def chain_prompt(chain: Chain) -> str:
    """The question as the student sees it: the variant's instruction, the start value, the operations."""
    instruction = _INSTRUCTION[chain.variant].format(m=chain.modulus)
    return " ".join([instruction, chain.number(chain.start), *map(chain.op_text, chain.ops)])


def worked_solution(chain: Chain, ordered_ops: list[int] | tuple[int, ...] | None = None) -> str:
    """The correct worked solution applying `ordered_ops` (default: the given order) in that order."""
    lines, value = [], chain.start
    for op in chain.ops if ordered_ops is None else ordered_ops:
        result = chain.apply(value, op)
        lines.append(chain.step_line(value, op, result))
        value = result
    return "".join(lines) + chain.answer_line(value)


def chain_split(chain: Chain) -> str:
    """ "test" for one problem in TEST_SHARE, by a hash of its start and operation multiset (order-free, so a
    problem and its reordering, in either variant, always fall in the same split)."""
    key = f"{chain.modulus}:{chain.start}:{sorted(chain.ops)}".encode()
    return "test" if int(hashlib.sha256(key).hexdigest()[:8], 16) % TEST_SHARE == 0 else "train"


def in_validation(chain: Chain) -> bool:
    """Whether a "train" problem is in the "validation" split: one in VALIDATION_SHARE, by a second hash of
    the same key. Never a "test" problem. The "train" split is left as it was, so a train draw can hold
    validation problems where the problem space is small (4-step chains); on long chains (16 steps:
    2.8e13 problems) two draws of a few thousand share none in practice."""
    key = f"validation:{chain.modulus}:{chain.start}:{sorted(chain.ops)}".encode()
    return (
        chain_split(chain) == "train" and int(hashlib.sha256(key).hexdigest()[:8], 16) % VALIDATION_SHARE == 0
    )


def _in_split(chain: Chain, split: str) -> bool:
    if split == "all":
        return True
    if split == "validation":
        return in_validation(chain)
    return chain_split(chain) == split


def random_chain(
    rng: random.Random, variant: str, steps: int, operand_max: int, signs: str = "+-", modulus: int = 10
) -> Chain:
    """A uniformly drawn chain: start in [0, modulus), each operand in [1, operand_max] with a sign from `signs`."""
    ops = tuple(rng.randint(1, operand_max) * (1 if rng.choice(signs) == "+" else -1) for _ in range(steps))
    return Chain(rng.randrange(modulus), ops, variant, modulus)


def chain_problem(chain: Chain, split: str | None = None) -> Problem:
    """The `Problem` record of one chain; reference = the solution in the given order."""
    digest = hashlib.sha256(
        f"{chain.variant}:{chain.modulus}:{chain.start}:{chain.ops}".encode()
    ).hexdigest()[:12]
    return Problem(
        id=f"chain-{chain.variant}-{len(chain.ops)}-{digest}",
        prompt=chain_prompt(chain),
        answer=chain.number(chain.answer),
        kind="chain",
        reference=worked_solution(chain),
        meta={
            "start": chain.start,
            "ops": list(chain.ops),
            "variant": chain.variant,
            "modulus": chain.modulus,
            "split": split or chain_split(chain),
        },
    )


def load_chain_problems(
    n: int = 256,
    seed: int = 0,
    variant: str = "single",
    steps: int = 4,
    operand_max: int = 3,
    split: str = "train",
    modulus: int = 10,
    signs: str = "+-",
) -> list[Problem]:
    """`n` distinct chain problems drawn with `seed`; `split` "train" or "test" keeps only problems whose hash
    puts them there (the two never share a problem, whatever the seeds), "validation" a hashed eighth of the
    train problems (`in_validation`: never a test problem), "all" keeps every draw.
    Operands are drawn from [1, operand_max] with a sign from `signs`; the defaults are the testbed model's."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if modulus not in MODULI:
        raise ValueError(f"modulus must be one of {MODULI}, got {modulus!r}")
    checks = (("n", n, 0, None), ("steps", steps, 1, 64), ("operand_max", operand_max, 1, modulus - 1))
    for name, value, low, high in checks:
        if not is_int(value) or value < low or (high and value > high):
            raise ValueError(f"{name} must be an int in [{low}, {high or 'inf'}], got {value!r}")
    if not signs or set(signs) - {"+", "-"}:
        raise ValueError(f"signs must be a non-empty string of '+' and '-', got {signs!r}")
    space = modulus * (operand_max * len(set(signs))) ** steps  # distinct (start, ordered operations)
    share = {
        "test": 1 / TEST_SHARE,
        "train": 1 - 1 / TEST_SHARE,
        "validation": (1 - 1 / TEST_SHARE) / VALIDATION_SHARE,
        "all": 1.0,
    }[split]
    if n > space * share / 2:  # drawing without replacement stays quick up to half of what exists
        raise ValueError(
            f"n = {n} is more than half the {split} problems with steps={steps}, operand_max={operand_max}"
        )
    key = f"chain:{seed}:{variant}:{steps}:{operand_max}:{signs}:{modulus}"
    # validation draws from its own stream: with the train stream it would repeat the train draw's problems
    rng = random.Random(key + ":validation" if split == "validation" else key)
    problems, seen = [], set()
    for _ in range(100 * n + 10_000):
        if len(problems) == n:
            break
        chain = random_chain(rng, variant, steps, operand_max, signs, modulus)
        if (chain.start, chain.ops) in seen or not _in_split(chain, split):
            continue
        seen.add((chain.start, chain.ops))
        problems.append(chain_problem(chain, "validation" if split == "validation" else chain_split(chain)))
    if len(problems) < n:
        raise ValueError(f"could not draw {n} distinct {split} problems; lower n or widen the operands")
    return problems


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def first_error(completion: str, problem: Problem | Chain) -> tuple[int, int] | None:
    """(step index, character offset) of the first wrong character, None for a correct worked solution.

    Steps are the worked lines 0..n-1; step n is the answer line. Trailing whitespace is allowed.
    """
    chain = problem if isinstance(problem, Chain) else Chain.from_meta(problem.meta)
    value, remaining, offset = chain.start, list(chain.ops), 0
    for step in range(len(chain.ops) + 1):
        rest = completion[offset:]
        if step == len(chain.ops):
            line = chain.answer_line(value)
            matched = _common_prefix(rest, line)
            if matched < len(line):
                return step, offset + matched
            tail = rest[len(line) :]
            junk = len(tail) - len(tail.lstrip())
            return None if junk == len(tail) else (step, offset + len(line) + junk)
        allowed = remaining[:1] if chain.variant == "single" else sorted(set(remaining))
        lines = {op: chain.step_line(value, op, chain.apply(value, op)) for op in allowed}
        full = [op for op, line in lines.items() if rest.startswith(line)]
        if not full:
            return step, offset + max(_common_prefix(rest, line) for line in lines.values())
        op = full[0]
        remaining.remove(op)
        offset += len(lines[op])
        value = chain.apply(value, op)
    raise AssertionError("unreachable")


def verify_chain(completion: str, problem: Problem) -> Verdict:
    """Reward 1 when the completion is in the worked format and its answer line holds the gold answer.

    reason: "correct" (reward 1), "wrong" (well formed, wrong answer), "no_answer" (no "Answer: NN" line,
    e.g. cut off), "malformed" (an answer line, but other text out of format). extra: error_step and
    error_char (the first wrong character, None when the whole worked solution is right), fully_correct
    (every intermediate right, not only the answer), answer (the answer as written, or None).
    """
    if problem.kind != "chain":
        raise ValueError(f"verify_chain needs a problem of kind 'chain', got {problem.kind!r} ({problem.id})")
    chain = Chain.from_meta(problem.meta)
    if str(problem.answer).strip() not in ("", chain.number(chain.answer), str(chain.answer)):
        raise ValueError(
            f"problem {problem.id!r}: answer {problem.answer!r} is not its chain's {chain.answer}"
        )
    error = first_error(completion, chain)
    extra = {
        "error_step": None if error is None else error[0],
        "error_char": None if error is None else error[1],
        "fully_correct": error is None,
        "answer": None,
    }
    feedback = "" if error is None else f"first wrong character at offset {error[1]} (step {error[0]})"
    match = _ANSWER_RE.search(completion)
    if match is None:
        return Verdict(0.0, "no_answer", feedback or "no 'Answer: NN' line", extra)
    extra["answer"] = match.group(1)
    body, tail = completion[: match.start()], completion[match.end() :]
    digits = f"[0-9]{{{chain.width}}}"
    step_re = re.compile(f"{digits}[+-]{digits}={digits}")
    if tail.strip() or any(not step_re.fullmatch(line) for line in body.splitlines()):
        return Verdict(0.0, "malformed", feedback, extra)
    if int(match.group(1)) != chain.answer:
        return Verdict(0.0, "wrong", feedback, extra)
    return Verdict(1.0, "correct", feedback, extra)
