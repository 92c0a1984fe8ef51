"""The testbed's pretraining mix: chain solutions with a controlled per-step error rate, and solutions
written with privileged context in the user message, rendered by the shared teacher template.

Student examples (no context) corrupt each step's result with probability `error_rate`; the wrong value is
then carried into the next step, so a corrupted solution stays internally consistent after its error, as a
model's own slip would. The success rate at temperature 1 is then about (1 - error_rate)^steps.

Context examples have a user message `DEFAULT_TEACHER_TEMPLATE.render(question, answer=..., peer=...,
reference=...)` and a target that never errs, so a model conditioned on a correct solution or on the answer
writes a correct solution, as a pretrained LLM uses a hint. A share of them (`slip_rate`) shows a slip in
the target: one step's result is wrong, as in a student's solution, and the steps after it continue
correctly from the wrong value. The slipped characters are left out of the loss (`Example.unscored`), so
the model never learns to slip when it has context; it learns what to do *past* a slip in its own prefix:
carry on from it. Without these, a teacher shown a failed rollout past its divergence tau copies its peer's
values into the rollout's later lines, i.e. it credits wrong arithmetic (5-2=2) after the error, and
distilling that teaches the student to ignore the operands (docs/results.md, "Why HSD collapsed").

Multi-path targets with a peer or reference: the context solution may use another valid order than the
one a rollout takes. A target that always copied the context would teach a teacher that treats every
valid reordering as an error; one that ignored it would make the context useless. The target follows the
context's order for its first k steps, k uniform on 0..n, then applies the remaining operations in a
uniformly random order. So a teacher leans on the peer's order (about n/(n+1) on its next operation while
still on its path) and, once a rollout has left that order, continues correctly from the rollout's own
prefix. The single-path target is the one correct solution, i.e. the context solution itself.

The terse-answer forms (answer_form "parity" or "half", hsd.testbed.terse) write the same examples with their
answer line in place of the value's, except the answer-only one: its target is what the terse answer implies
about the path (`answer_implied`), not an error-free solution, so that teacher stays close to the student.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from hsd.core.contexts import CONTEXT_KINDS
from hsd.tasks.chain import Chain, chain_prompt, chain_split, random_chain, worked_solution
from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE
from hsd.testbed.terse import ANSWER_FORMS, final_value, terse_answer, terse_prompt, terse_solution


class Example(NamedTuple):
    """One (user message, assistant target) pair; `unscored` lists target character spans kept out of the loss."""

    user: str
    target: str
    unscored: tuple[tuple[int, int], ...] = ()


def _slipped(chain: Chain, result: int, rng: random.Random) -> int:
    """A wrong result near `result`: half slips of a plausible size (a digit or a carry), half any other."""
    slips = (-2, -1, 1, 2) if chain.modulus == 10 else (-20, -10, -2, -1, 1, 2, 10, 20)
    delta = rng.choice(slips) if rng.random() < 0.5 else rng.randint(1, chain.modulus - 1)
    return chain.apply(result, delta)


def corrupted_solution(
    chain: Chain, ordered_ops: Sequence[int], rng: random.Random, error_rate: float
) -> str:
    """A worked solution whose every step is wrong with probability `error_rate`; later steps start from the
    value written, so an error propagates consistently to the answer."""
    lines, value = [], chain.start
    for op in ordered_ops:
        result = chain.apply(value, op)
        if rng.random() < error_rate:
            result = _slipped(chain, result, rng)
        lines.append(chain.step_line(value, op, result))
        value = result
    return "".join(lines) + chain.answer_line(value)


def solution_with_slip(chain: Chain, ordered_ops: Sequence[int], rng: random.Random) -> Example:
    """A worked solution (user left empty) with one wrong result at a uniformly drawn step, correct from the
    wrong value on; the wrong result's characters are `unscored`."""
    slip_at = rng.randrange(len(ordered_ops))
    text, value, unscored = "", chain.start, ()
    for step, op in enumerate(ordered_ops):
        result = chain.apply(value, op)
        if step == slip_at:
            result = _slipped(chain, result, rng)
        line = chain.step_line(value, op, result)
        if step == slip_at:
            end = len(text) + len(line) - 1  # the result sits just before the newline
            unscored = ((end - len(chain.number(result)), end),)
        text += line
        value = result
    return Example("", text + chain.answer_line(value), unscored)


def random_order(ops: Sequence[int], rng: random.Random) -> list[int]:
    order = list(ops)
    rng.shuffle(order)
    return order


def order_near(context_order: Sequence[int], rng: random.Random) -> list[int]:
    """The context's first k operations (k uniform on 0..n), then the rest in a random order."""
    k = rng.randint(0, len(context_order))
    return list(context_order[:k]) + random_order(context_order[k:], rng)


def example(
    rng: random.Random,
    *,
    context: str,
    variant: str,
    steps: int,
    operand_max: int,
    error_rate: float,
    modulus: int,
    slip_rate: float = 0.0,
    answer_form: str = "value",
) -> Example:
    """One (user message, assistant target) pair of the mix; a context example slips with `slip_rate`.
    answer_form "parity" / "half": a terse-answer form (hsd.testbed.terse), answer-only target `answer_implied`."""
    if context not in CONTEXT_KINDS:
        raise ValueError(f"context must be one of {CONTEXT_KINDS}, got {context!r}")
    if answer_form not in ANSWER_FORMS:
        raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {answer_form!r}")
    chain = random_chain(rng, variant, steps, operand_max, modulus=modulus)
    while chain_split(chain) != "train":  # held-out problems never appear in pretraining
        chain = random_chain(rng, variant, steps, operand_max, modulus=modulus)
    terse = answer_form != "value"
    question = terse_prompt(chain, answer_form) if terse else chain_prompt(chain)

    def finish(solution: str) -> str:  # the form's last line
        return terse_solution(solution, answer_form) if terse else solution

    single = variant == "single"
    if context == "none":
        order = list(chain.ops) if single else random_order(chain.ops, rng)
        return Example(question, finish(corrupted_solution(chain, order, rng, error_rate)))
    if terse and context == "answer":
        user = DEFAULT_TEACHER_TEMPLATE.render(question, answer=terse_answer(chain.answer, answer_form))
        return Example(user, finish(answer_implied(chain, rng, error_rate, answer_form)))
    gold = terse_answer(chain.answer, answer_form) if terse else chain.number(chain.answer)
    answer = gold if context.startswith("answer") else None
    slip = rng.random() < slip_rate

    def target(order: Sequence[int]) -> Example:
        made = solution_with_slip(chain, order, rng) if slip else Example("", worked_solution(chain, order))
        return made._replace(target=finish(made.target))  # a slip sits in the worked lines, before the end

    if context == "answer":
        order = list(chain.ops) if single else random_order(chain.ops, rng)
        return target(order)._replace(user=DEFAULT_TEACHER_TEMPLATE.render(question, answer=answer))
    # peer: a successful rollout, in any valid order; reference: the given-order solution (Problem.reference)
    context_order = list(chain.ops) if single or context == "reference" else random_order(chain.ops, rng)
    context_text = finish(worked_solution(chain, context_order))
    target_order = context_order if single else order_near(context_order, rng)
    if context == "reference":
        user = DEFAULT_TEACHER_TEMPLATE.render(question, reference=context_text)
    else:
        user = DEFAULT_TEACHER_TEMPLATE.render(question, answer=answer, peer=context_text)
    return target(target_order)._replace(user=user)


def answer_implied(chain: Chain, rng: random.Random, error_rate: float, form: str = "parity") -> str:
    """What a terse answer implies about the path: a context-free solution with the student's error rate, drawn
    until it ends at the gold terse answer (rejection sampling from the student's own mix). About half of the
    wrong chains stay, so an answer-only teacher trained on these writes nearly as the student does before the
    end: it "falls silent" where a peer, a whole correct path, still pins the error."""
    gold = terse_answer(chain.answer, form)
    while True:
        order = list(chain.ops) if chain.variant == "single" else random_order(chain.ops, rng)
        solution = corrupted_solution(chain, order, rng, error_rate)
        if terse_answer(final_value(solution), form) == gold:
            return solution


def sample_example(
    rng: random.Random,
    *,
    context_weights: Sequence[tuple[str, float]],
    multi_share: float,
    steps_range: tuple[int, int],
    operand_max: int,
    error_rate: float,
    modulus: int,
    slip_rate: float = 0.0,
    answer_form: str = "value",
) -> Example:
    """One example with its context kind, variant and length drawn from the mix's proportions."""
    names, weights = zip(*context_weights)
    context = rng.choices(names, weights)[0]
    variant = "multi" if rng.random() < multi_share else "single"
    steps = rng.randint(*steps_range)
    return example(
        rng,
        context=context,
        variant=variant,
        steps=steps,
        operand_max=operand_max,
        error_rate=error_rate,
        modulus=modulus,
        slip_rate=slip_rate,
        answer_form=answer_form,
    )


__all__ = [
    "Chain",
    "Example",
    "corrupted_solution",
    "example",
    "order_near",
    "answer_implied",
    "sample_example",
    "solution_with_slip",
]
