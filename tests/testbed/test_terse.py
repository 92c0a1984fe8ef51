"""The terse-answer (parity) testbed: its knob leaves every earlier build's key alone, its mix's answer-only
target is what a parity bit implies, and its problems load and verify as ordinary math rows."""

from __future__ import annotations

import json
import random

import pytest

from hsd.tasks.chain import Chain, first_error, worked_solution
from hsd.tasks.datasets import load_problems
from hsd.tasks.rewards import verify_problem
from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE
from hsd.testbed.mix import example
from hsd.testbed.model import DEFAULT_TESTBED, config_from_knobs
from hsd.testbed.terse import final_value, first_error_of, parity, terse_answer, terse_prompt

MIX = dict(variant="single", steps=4, operand_max=3, error_rate=0.2, modulus=10, answer_form="parity")


def _right(line: str) -> bool:
    """Whether a worked line "7+3=0" is right."""
    value, op, operand, result = int(line[0]), line[1], int(line[2]), int(line[4])
    return result == (value + (operand if op == "+" else -operand)) % 10


def test_the_knob_at_its_default_keeps_every_earlier_key():
    # the default build's key before the knob existed; a CODE_VERSION bump changes it on purpose
    assert DEFAULT_TESTBED.key() == "22fad96e1ca35c8c"
    assert config_from_knobs(0, answer_form="value").key() == DEFAULT_TESTBED.key()
    assert "answer_form" not in DEFAULT_TESTBED.fields()
    parity_config = config_from_knobs(0, answer_form="parity")
    assert parity_config.key() != DEFAULT_TESTBED.key() and parity_config.fields()["answer_form"] == "parity"
    with pytest.raises(ValueError, match="answer_form must be one of"):
        config_from_knobs(0, answer_form="digit")


def test_answer_only_targets_keep_wrong_chains_that_end_at_the_gold_parity():
    rng = random.Random(0)
    wrong = 0
    for _ in range(400):
        user, target, unscored = example(rng, context="answer", **MIX)
        *lines, last = target.split("\n")
        question = user.split("\n\n")[0]
        gold = user.split("The correct final answer is: ")[1].split("\n")[0]
        assert user == DEFAULT_TEACHER_TEMPLATE.render(question, answer=gold) and unscored == ()
        assert last == f"Parity: \\boxed{{{gold}}}" and parity(int(lines[-1][4])) == gold
        wrong += not all(map(_right, lines))
    # the student's 4-step error share is 1 - 0.8^4 = 0.59; conditioning on one bit keeps about half of those
    assert 0.25 < wrong / 400 < 0.55


def test_student_and_peer_examples_end_at_their_own_parity():
    rng = random.Random(1)
    peer_wrong = 0
    for _ in range(200):
        user, target, _ = example(rng, context="none", **MIX)
        assert user.endswith("Give the result's parity in \\boxed{}.")
        *lines, last = target.split("\n")
        assert last == f"Parity: \\boxed{{{parity(int(lines[-1][4]))}}}"
        user, target, _ = example(rng, context="answer+peer", slip_rate=0.0, **MIX)
        peer = user.split("<solution>\n")[1].split("\n</solution>")[0]
        assert peer == target  # single path, no slip: the target is the correct solution the peer shows
        peer_wrong += not all(map(_right, target.split("\n")[:-1]))
    assert peer_wrong == 0


def test_problems_load_as_math_rows_whose_verifier_checks_only_the_parity(tmp_path, capsys):
    from hsd.cli import main

    path = tmp_path / "terse.jsonl"
    command = ["testbed", "problems", "--n", "16", "--split", "test"]
    assert main([*command, "--out", str(path)]) == 0
    problems = load_problems(str(path))
    assert len(problems) == 16 and all(p.kind == "math" and p.meta["split"] == "test" for p in problems)
    problem = problems[0]
    chain = Chain.from_meta(problem.meta)
    assert problem.prompt == terse_prompt(chain)  # no math instruction appended: the prompt asks for \boxed
    assert (
        verify_problem(problem, problem.reference).reward == 1.0
        and first_error_of(problem.reference, problem) is None
    )
    lines = worked_solution(chain).split("\n")[:-1]
    value = final_value(worked_solution(chain))
    for shift in (1, 2):  # a wrong last result: rewarded exactly when its parity is still right
        wrong = (value + shift) % 10
        text = "\n".join([*lines[:-1], lines[-1][:4] + str(wrong)]) + f"\nParity: \\boxed{{{parity(wrong)}}}"
        assert verify_problem(problem, text).reward == float(parity(wrong) == problem.answer)
        assert first_error_of(text, problem) == first_error(text, chain) == (3, 22)
    cut = "\n".join(lines)  # cut off after the last step: its last number is a value, never a parity
    assert verify_problem(problem, cut).reward == 0.0
    wrong_bit = problem.reference.replace(problem.answer, "odd" if problem.answer == "even" else "even")
    assert first_error_of(wrong_bit, problem) == (4, len(cut) + len("\nParity: \\boxed{"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["meta"]["value"] for r in rows] == [str(Chain.from_meta(r["meta"]).answer) for r in rows]
    assert main([*command, "--steps", "0", "--out", str(path)]) == 2
    assert "steps must be an int" in capsys.readouterr().err


def test_measure_refuses_a_model_of_the_parity_form(tmp_path):
    from hsd.testbed.measure import task_defaults

    record = {"config": config_from_knobs(0, answer_form="parity").fields()}
    (tmp_path / "testbed.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="parity answer form"):
        task_defaults(tmp_path)
    (tmp_path / "testbed.json").write_text(json.dumps({"config": DEFAULT_TESTBED.fields()}))
    assert task_defaults(tmp_path) == {"steps": 4, "operand_max": 3, "modulus": 10}


def test_the_half_form_checks_which_half_the_value_is_in_and_a_sign_flip_can_change_it(tmp_path):
    from hsd.testbed.terse import write_terse_problems

    assert [terse_answer(v, "half") for v in (0, 4, 5, 9)] == ["low", "low", "high", "high"]
    assert terse_answer(3 + 2, "half") != terse_answer(3 - 2, "half")  # a flip the parity cannot see
    rng = random.Random(2)
    for _ in range(100):
        user, target, _ = example(rng, context="answer", **{**MIX, "answer_form": "half"})
        gold = user.split("The correct final answer is: ")[1].split("\n")[0]
        *lines, last = target.split("\n")
        assert (
            last
            == f"Half: \\boxed{{{gold}}}"
            == f"Half: \\boxed{{{terse_answer(int(lines[-1][4]), 'half')}}}"
        )
    problem = load_problems(str(write_terse_problems(tmp_path / "half.jsonl", "half", n=4, split="test")))[0]
    assert problem.meta["answer_form"] == "half" and problem.answer in ("high", "low")
    assert (
        verify_problem(problem, problem.reference).reward == 1.0
        and first_error_of(problem.reference, problem) is None
    )


def test_first_error_of_a_value_form_problem_is_the_chain_tasks_own():
    from hsd.tasks.chain import chain_problem

    chain = Chain(7, (3, -1, 2, -3))
    problem, solution = chain_problem(chain), worked_solution(chain)
    wrong = solution.replace("0-1=9", "0-1=8")
    assert first_error_of(solution, problem) is None
    assert first_error_of(wrong, problem) == first_error(wrong, chain) == (1, 10)
