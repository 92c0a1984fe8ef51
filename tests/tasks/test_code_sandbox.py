"""Code verifier: HumanEval and MBPP+ reference solutions pass; wrong code fails with feedback naming the test."""

from __future__ import annotations

import json

import pytest

from hsd.tasks.code import extract_code, mbpp_arguments, run_tests
from hsd.tasks.datasets import load_problems
from hsd.tasks.rewards import make_reward_func
from tests.conftest import FIXTURE_DATA

ADD_ONE = {
    "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n",
    "entry_point": "f",
}


def _verify_all(problems) -> tuple[list, list]:
    reward_func = make_reward_func(num_workers=2)
    completions = [f"Here is my solution.\n```python\n{p.answer}\n```" for p in problems]
    rewards = reward_func(
        [""] * len(problems), completions, answer=[p.answer for p in problems], kind=[p.kind for p in problems],
        meta=[json.dumps(p.meta) for p in problems],
    )  # fmt: skip
    reward_func.close()
    return rewards, reward_func.last_verdicts


def test_all_humaneval_canonical_solutions_pass(full_data):
    problems = load_problems("humaneval", data_dir=full_data)
    assert len(problems) == 164
    rewards, verdicts = _verify_all(problems)
    failed = [(p.id, v.reason, v.feedback) for p, v in zip(problems, verdicts) if v.reason != "correct"]
    assert failed == []
    assert rewards == [1.0] * 164
    assert all(v.extra["pass_fraction"] == 1.0 and v.extra["all_pass"] for v in verdicts)


@pytest.mark.slow
def test_mbppplus_canonical_solutions_pass(full_data):
    problems = load_problems("mbppplus", data_dir=full_data)
    assert len(problems) == 378
    rewards, verdicts = _verify_all(problems)
    passed = sum(r == 1.0 for r in rewards)
    assert passed >= 0.99 * len(problems), [
        (p.id, v.feedback) for p, v in zip(problems, verdicts) if v.reward < 1
    ]


def test_fixture_reference_solutions_pass_in_both_forms():
    problems = load_problems("humaneval", data_dir=FIXTURE_DATA) + load_problems(
        "mbppplus", data_dir=FIXTURE_DATA
    )
    rewards, verdicts = _verify_all(problems)
    assert [(p.id, v.reason) for p, v in zip(problems, verdicts)] == [(p.id, "correct") for p in problems]
    assert rewards == [1.0] * len(problems)


def test_off_by_one_humaneval_solution_fails_with_feedback_naming_the_test():
    problem = next(p for p in load_problems("humaneval", data_dir=FIXTURE_DATA) if p.id == "HsdEval/1")
    code = problem.answer.replace("return sum(", "return 1 + sum(")
    verdict = run_tests(code, problem.meta["tests"])
    assert (verdict.reward, verdict.reason) == (0.0, "wrong")
    assert "assert candidate('') == 0" in verdict.feedback
    assert "count_vowels('') returned 1" in verdict.feedback
    assert verdict.extra["pass_fraction"] == 0.0 and verdict.extra["all_pass"] is False


def test_off_by_one_mbpp_solution_fails_with_feedback_naming_the_call():
    problem = next(p for p in load_problems("mbppplus", data_dir=FIXTURE_DATA) if p.id == "Mbpp/9001")
    tests = problem.meta["tests"]
    code = problem.answer + f"\n_reference = {tests['entry_point']}\n"
    code += f"def {tests['entry_point']}(*args):\n    return _reference(*args) + 1\n"
    verdict = run_tests(code, tests)
    assert (verdict.reward, verdict.reason) == (0.0, "wrong")
    first_args = ", ".join(repr(a) for a in tests["inputs"][0])
    assert (
        f"Test 1 of {len(tests['inputs'])} failed: {tests['entry_point']}({first_args})" in verdict.feedback
    )
    assert "expected" in verdict.feedback and "got" in verdict.feedback


def test_pass_fraction_counts_each_test_and_partial_credit_is_optional():
    code = "def f(x):\n    return 2 if x == 1 else 0\n"
    verdict = run_tests(code, ADD_ONE)
    assert verdict.extra["pass_fraction"] == 0.5 and verdict.reward == 0.0
    assert "Test 2 of 2 failed: assert candidate(5) == 6" in verdict.feedback
    assert run_tests(code, ADD_ONE, partial_credit=True).reward == 0.5


def test_exception_raised_by_the_program_is_in_the_feedback():
    verdict = run_tests("def f(x):\n    raise KeyError('missing')\n", ADD_ONE)
    assert verdict.reason == "wrong" and "raised KeyError: 'missing'" in verdict.feedback


def test_syntax_error_missing_function_and_empty_code_have_their_reasons():
    assert run_tests("def f(x) return x", ADD_ONE).reason == "syntax_error"
    missing = run_tests(
        "def g(x):\n    return x + 1\n", {"entry_point": "f", "inputs": [[1]], "expected": [2]}
    )
    assert missing.reason == "wrong" and "does not define a function 'f'" in missing.feedback
    assert run_tests("   ", ADD_ONE).reason == "no_code"


def test_an_object_equal_to_everything_cannot_pass():
    code = "class Anything:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Anything()\n"
    assert run_tests(code, ADD_ONE).reason == "wrong"
    assert run_tests(code, {"entry_point": "f", "inputs": [[1]], "expected": [2]}).reason == "wrong"


def test_exiting_early_is_not_a_pass():
    assert run_tests("import sys\nsys.exit(0)\ndef f(x):\n    return x + 1\n", ADD_ONE).reward == 0.0
    verdict = run_tests("import os\ndef f(x):\n    os._exit(0)\n", ADD_ONE)
    assert (verdict.reward, verdict.reason) == (0.0, "crash")


def test_huge_return_values_are_compared_by_digest():
    reference = "def f(n):\n    return [(str(i), {i: [i]}) for i in range(n)]\n"
    tests = {"entry_point": "f", "inputs": [[50_000]], "canonical_solution": reference}  # > MAX_VALUES parts
    same = "def f(n):\n    return [(f'{i}', {i: [float(i)]}) for i in range(n)]\n"
    assert run_tests(same, tests).reason == "correct"
    differs = "def f(n):\n    return [(str(i), {i: [i + (i == 7)]}) for i in range(n)]\n"
    assert run_tests(differs, tests).reason == "wrong"


def test_float_outputs_are_compared_with_tolerance():
    tests = {"entry_point": "f", "inputs": [[3]], "expected": [1.0], "atol": 1e-3}
    assert run_tests("def f(n):\n    return 1.0004\n", tests).reason == "correct"
    assert run_tests("def f(n):\n    return 1.01\n", tests).reason == "wrong"


def test_mbpp_arguments_are_rebuilt_as_the_tuples_the_task_expects():
    assert mbpp_arguments("Mbpp/2", [[3, 4], [5, 4]]) == [(3, 4), (5, 4)]
    tests = {"task_id": "Mbpp/2", "entry_point": "f", "inputs": [[[1, 2], [2, 3]]], "expected": [True]}
    assert (
        run_tests("def f(a, b):\n    return isinstance(a, tuple) and isinstance(b, tuple)\n", tests).reason
        == "correct"
    )


def test_extract_code_prefers_the_block_defining_the_entry_point():
    text = "```python\ndef f(x):\n    return x\n```\nusage:\n```python\nprint(f(1))\n```"
    assert extract_code(text, "f").startswith("def f")
    assert extract_code(text) == "print(f(1))\n"
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"
    assert extract_code("```python\ndef f(x):\n    return x") == "def f(x):\n    return x"
    assert extract_code("  \n") is None


def test_malformed_tests_raise_value_error_naming_the_key():
    with pytest.raises(ValueError, match="entry_point"):
        run_tests("x = 1", {"test": "def check(candidate): pass"})
    with pytest.raises(ValueError, match="'test'.*'inputs'"):
        run_tests("x = 1", {"entry_point": "f"})


MEMORY_THIEF = """
import gc, re


def f(*args):
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            for key in ("expected", "test"):
                value = obj.get(key)
                if isinstance(value, list) and value and isinstance(value[0], dict) and "ok" in value[0]:
                    return value[0]["ok"]
                if isinstance(value, str) and "SECRET-" in value:
                    return re.search(r"SECRET-\\d+", value).group(0)
    return None
"""


def test_the_program_cannot_find_the_tests_or_expected_outputs_in_its_memory():
    secret_check = {
        "test": "def check(candidate):\n    assert candidate() == 'SECRET-7781'\n",
        "entry_point": "f",
    }
    assert run_tests(MEMORY_THIEF, secret_check).reason == "wrong"
    secret_outputs = {"entry_point": "f", "inputs": [[1]], "expected": [918273]}
    verdict = run_tests(MEMORY_THIEF, secret_outputs)
    assert verdict.reason == "wrong" and "got None" in verdict.feedback
