"""The chain task: its verifier and the true error position, on hand-written solutions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsd.tasks.chain import (
    Chain,
    chain_problem,
    chain_split,
    first_error,
    in_validation,
    load_chain_problems,
    verify_chain,
    worked_solution,
)

SINGLE = chain_problem(Chain(7, (3, -1, 2, -3), "single"))  # 7+3=0 0-1=9 9+2=1 1-3=8
MULTI = chain_problem(Chain(7, (3, -1, 2, -3), "multi"))
CORRECT = "7+3=0\n0-1=9\n9+2=1\n1-3=8\nAnswer: 8"


def test_reference_is_the_correct_worked_solution():
    assert SINGLE.reference == CORRECT
    assert SINGLE.answer == "8"
    assert SINGLE.prompt == "Mod 10, in order: 7 +3 -1 +2 -3"
    assert MULTI.prompt == "Mod 10, any order: 7 +3 -1 +2 -3"


def test_correct_solution_is_rewarded_with_no_error():
    verdict = verify_chain(CORRECT, SINGLE)
    assert (verdict.reward, verdict.reason) == (1.0, "correct")
    assert verdict.extra["error_step"] is None and verdict.extra["error_char"] is None
    assert verdict.extra["fully_correct"] is True
    assert first_error(CORRECT, SINGLE) is None


def test_trailing_whitespace_is_allowed():
    assert verify_chain(CORRECT + "\n ", SINGLE).extra["fully_correct"] is True


@pytest.mark.parametrize("step", range(4))
def test_wrong_result_at_step_k_is_located_at_its_character(step):
    # the result of line `step` is off by one and the slip propagates consistently to the answer
    lines, value = [], 7
    for k, op in enumerate((3, -1, 2, -3)):
        result = (value + op + (1 if k == step else 0)) % 10
        lines.append(f"{value}{'+' if op > 0 else '-'}{abs(op)}={result}\n")
        value = result
    completion = "".join(lines) + f"Answer: {value}"
    verdict = verify_chain(completion, SINGLE)
    assert (verdict.reward, verdict.reason) == (0.0, "wrong")
    assert verdict.extra["error_step"] == step
    assert verdict.extra["error_char"] == 6 * step + 4  # "v+o=" then the result digit
    assert completion[: 6 * step + 4] == CORRECT[: 6 * step + 4]
    assert completion[6 * step + 4] != CORRECT[6 * step + 4]


def test_wrong_operand_is_located_at_the_operand():
    completion = "7+3=0\n0-2=8\n8+2=0\n0-3=7\nAnswer: 7"
    assert first_error(completion, SINGLE) == (1, 8)


def test_wrong_answer_line_after_a_correct_path():
    verdict = verify_chain("7+3=0\n0-1=9\n9+2=1\n1-3=8\nAnswer: 5", SINGLE)
    assert verdict.reason == "wrong"
    assert (verdict.extra["error_step"], verdict.extra["error_char"]) == (4, 32)


def test_compensating_errors_earn_the_reward_but_are_not_fully_correct():
    completion = "7+3=1\n1-1=0\n0+2=2\n2-3=9\nAnswer: 8"  # +1 at step 0, -1 at step 1: 8 again
    verdict = verify_chain(completion, SINGLE)
    assert (verdict.reward, verdict.reason) == (1.0, "correct")
    assert verdict.extra["fully_correct"] is False
    assert (verdict.extra["error_step"], verdict.extra["error_char"]) == (0, 4)


def test_a_truncated_completion_has_no_answer_and_its_error_at_its_end():
    verdict = verify_chain(CORRECT[:14], SINGLE)
    assert (verdict.reward, verdict.reason) == (0.0, "no_answer")
    assert verdict.extra["error_char"] == 14


@pytest.mark.parametrize(
    "completion, reason, error_char",
    [
        ("hello", "no_answer", 0),
        ("7+3=0\nthen 0-1=9\n9+2=1\n1-3=8\nAnswer: 8", "malformed", 6),
        (CORRECT + "\nextra", "malformed", len(CORRECT) + 1),
        ("7+3=0\n\n0-1=9\n9+2=1\n1-3=8\nAnswer: 8", "malformed", 6),
    ],
)
def test_malformed_completions_are_not_rewarded(completion, reason, error_char):
    verdict = verify_chain(completion, SINGLE)
    assert (verdict.reward, verdict.reason) == (0.0, reason)
    assert verdict.extra["error_char"] == error_char


def test_multi_path_accepts_another_order_that_single_path_rejects():
    other_order = "7+2=9\n9-3=6\n6+3=9\n9-1=8\nAnswer: 8"
    assert verify_chain(other_order, MULTI).extra["fully_correct"] is True
    assert verify_chain(other_order, MULTI).reward == 1.0
    # in order, the first line must apply +3: the operand character is the first wrong one
    assert first_error(other_order, SINGLE) == (0, 2)
    assert verify_chain(other_order, SINGLE).reward == 1.0  # the answer alone is still right


def test_multi_path_rejects_an_operation_used_twice():
    completion = "7+3=0\n0+3=3\n3-1=2\n2-3=9\nAnswer: 9"
    assert first_error(completion, MULTI) == (1, 8)  # "0+" is a valid prefix (+2 remains), "3" is not


def test_multi_path_error_after_a_valid_reordering():
    completion = "7-3=4\n4+2=6\n6-1=4\n4+3=7\nAnswer: 7"  # 6-1 is 5
    assert first_error(completion, MULTI) == (2, 16)


def test_two_digit_modulus_uses_two_digit_numbers():
    problem = chain_problem(Chain(37, (25, -48), "single", modulus=100))
    assert problem.prompt == "Mod 100, in order: 37 +25 -48"
    assert problem.reference == "37+25=62\n62-48=14\nAnswer: 14"
    assert verify_chain(problem.reference, problem).reward == 1.0
    assert first_error("37+25=62\n62-48=15\nAnswer: 15", problem) == (1, 16)


@given(
    start=st.integers(0, 9),
    ops=st.lists(st.integers(-9, 9).filter(lambda x: x != 0), min_size=1, max_size=6),
    data=st.data(),
)
def test_every_ordering_is_correct_in_multi_path_and_any_slip_is_found(start, ops, data):
    chain = Chain(start, tuple(ops), "multi")
    order = data.draw(st.permutations(ops))
    solution = worked_solution(chain, order)
    assert first_error(solution, chain) is None
    # replace one result digit by another: the first wrong character is exactly there
    step = data.draw(st.integers(0, len(ops) - 1))
    position = 6 * step + 4
    wrong = str((int(solution[position]) + data.draw(st.integers(1, 9))) % 10)
    assert first_error(solution[:position] + wrong + solution[position + 1 :], chain) == (step, position)


def test_problems_are_reproducible_distinct_and_split_disjointly():
    train = load_chain_problems(400, seed=1, split="train")
    test = load_chain_problems(256, seed=1, split="test", variant="multi")
    assert [p.id for p in train] == [p.id for p in load_chain_problems(400, seed=1, split="train")]
    assert len({p.id for p in train}) == 400
    key = lambda p: (p.meta["start"], tuple(sorted(p.meta["ops"])))  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    for problem in train[:50] + test[:50]:
        assert problem.kind == "chain"
        assert verify_chain(problem.reference, problem).reward == 1.0
        assert problem.reference.endswith(f"Answer: {problem.answer}")


def test_validation_split_is_a_hashed_part_of_train_and_never_test():
    validation = load_chain_problems(200, seed=0, split="validation", steps=16)
    test = load_chain_problems(200, seed=0, split="test", steps=16)
    train = load_chain_problems(2048, seed=0, split="train", steps=16)  # the study's draws
    chains = [Chain(p.meta["start"], tuple(p.meta["ops"])) for p in validation]
    assert all(p.meta["split"] == "validation" for p in validation)
    assert all(chain_split(c) == "train" and in_validation(c) for c in chains)
    assert not {p.id for p in validation} & ({p.id for p in test} | {p.id for p in train})
    drawn = [
        Chain(p.meta["start"], tuple(p.meta["ops"])) for p in load_chain_problems(800, seed=3, split="all")
    ]
    share = sum(map(in_validation, drawn)) / len(drawn)
    assert 0.05 < share < 0.14  # 3/4 * 1/8 = 0.094 of all problems


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"variant": "both"}, "variant"),
        ({"split": "dev"}, "split"),
        ({"steps": 0}, "steps"),
        ({"operand_max": 10}, "operand_max"),
        ({"modulus": 7}, "modulus"),
        ({"n": 100_000}, "n = 100000"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_chain_problems(**kwargs)


def test_verifying_a_problem_without_chain_meta_is_a_clear_error():
    problem = chain_problem(Chain(1, (1,)))
    problem.meta = {}
    with pytest.raises(ValueError, match="meta"):
        verify_chain("1+1=2\nAnswer: 2", problem)


def test_an_answer_that_contradicts_the_chain_is_a_clear_error():
    problem = chain_problem(Chain(7, (3, -1, 2, -3)))
    problem.answer = "5"
    with pytest.raises(ValueError, match="answer '5'"):
        verify_chain(CORRECT, problem)


def test_only_ascii_digits_count():
    assert verify_chain(CORRECT.replace("Answer: 8", "Answer: \u0668"), SINGLE).reason == "no_answer"
