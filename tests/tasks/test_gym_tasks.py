"""reasoning-gym: datasets by name, config and seed as Problems, scored by reasoning-gym's own scorer."""

from __future__ import annotations

import pytest

from hsd.tasks.datasets import load_problems
from hsd.tasks.gym import extract_gym_answer, load_gym_problems, verify_gym


def test_problems_are_deterministic_in_the_seed():
    first = load_gym_problems("basic_arithmetic", size=5, seed=3)
    again = load_gym_problems("basic_arithmetic", size=5, seed=3)
    other = load_gym_problems("basic_arithmetic", size=5, seed=4)
    assert [p.prompt for p in first] == [p.prompt for p in again]
    assert [p.prompt for p in first] != [p.prompt for p in other]
    assert all(p.kind == "gym" and "<answer>" in p.prompt for p in first)
    assert first[2].meta == {"dataset": "basic_arithmetic", "config": {}, "seed": 3, "size": 5, "index": 2}


@pytest.mark.parametrize("name", ["basic_arithmetic", "spell_backward", "leg_counting"])
def test_gold_answer_scores_one_and_a_wrong_answer_scores_below(name):
    problems = load_gym_problems(name, size=3, seed=1)
    for problem in problems:
        right = verify_gym(f"Thinking...\n<answer>{problem.answer}</answer>", problem)
        assert (right.reward, right.reason) == (1.0, "correct")
        wrong = verify_gym("<answer>definitely not it 12345</answer>", problem)
        assert wrong.reward < 1.0 and wrong.reason == "wrong"


def test_missing_answer_is_no_answer():
    problem = load_gym_problems("basic_arithmetic", size=1)[0]
    assert verify_gym("   ", problem).reason == "no_answer"


def test_answer_is_taken_from_the_tag_then_boxed_then_last_line():
    assert extract_gym_answer("<answer>a</answer> text <answer> b </answer>") == "b"
    assert extract_gym_answer("so \\boxed{42} it is") == "42"
    assert extract_gym_answer("reasoning\nfinal: 7\n\n") == "final: 7"


def test_config_keys_pass_through_an_rg_spec():
    problems = load_problems("rg:basic_arithmetic?size=4&seed=2&min_terms=2&max_terms=2&max_digits=1")
    assert len(problems) == 4
    assert problems[0].meta["config"] == {"min_terms": 2, "max_terms": 2, "max_digits": 1}
    assert all(
        p.prompt.count("+") + p.prompt.count("-") + p.prompt.count("*") + p.prompt.count("/") >= 1
        for p in problems
    )
    assert verify_gym(f"<answer>{problems[0].answer}</answer>", problems[0]).reason == "correct"


def test_unknown_dataset_or_config_key_is_a_value_error():
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset"):
        load_gym_problems("no_such_dataset", size=1)
    with pytest.raises(ValueError, match="bad config"):
        load_gym_problems("basic_arithmetic", size=1, config={"no_such_key": 1})


def test_an_entry_that_regenerates_differently_is_an_error_not_a_zero():
    problem = load_gym_problems("basic_arithmetic", size=2, seed=5)[0]
    problem.answer = "not the regenerated answer"
    verdict = verify_gym("<answer>1</answer>", problem)
    assert verdict.reason == "error" and "regenerated" in verdict.feedback
