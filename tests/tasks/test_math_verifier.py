"""Math answers: extraction, GSM8K golds, equivalence through math-verify, and a limit that holds anywhere."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hsd.tasks.math import extract_answer, gsm8k_gold, verify_math, warm_workers
from hsd.tasks.rewards import make_reward_func

SLOW_ANSWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate a number with ~10^8 digits


def _rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]


def test_extract_answer_takes_the_last_balanced_boxed():
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert extract_answer("so \\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert extract_answer("\\fbox{7}") == "7"


def test_extract_answer_skips_an_unbalanced_last_boxed():
    assert extract_answer("\\boxed{3} and finally \\boxed{4", fallback="none") == "3"
    assert extract_answer("only \\boxed{4", fallback="none") is None


def test_extract_answer_falls_back_to_the_last_number_or_none():
    assert extract_answer("it costs 1,250 dollars, or 2.5 each") == "2.5"
    assert extract_answer("total: 1,250") == "1,250"
    assert extract_answer("total: 1,250", fallback="none") is None
    assert extract_answer("no digits here") is None
    with pytest.raises(ValueError, match="fallback"):
        extract_answer("1", fallback="first_number")


def test_gsm8k_gold_is_the_number_after_the_marks_without_separators():
    assert gsm8k_gold("She pays 2 * 800 = 1,600\n#### 1,600") == "1600"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker here")


def test_all_gsm8k_test_golds_verify_against_themselves_and_a_wrong_number_fails(full_data):
    rows = _rows(full_data, "gsm8k/test.jsonl")
    assert len(rows) == 1319
    golds = [gsm8k_gold(row["answer"]) for row in rows]
    boxed = [f"{row['answer'].split('####')[0]}The answer is \\boxed{{{g}}}." for row, g in zip(rows, golds)]
    wrong = [f"The answer is \\boxed{{{int(g) + 1}}}." for g in golds]
    raw = [row["answer"] for row in rows]  # the worked solution itself: the last number is the answer
    reward_func = make_reward_func(num_workers=2, math_shortcut=False)  # every check through math-verify
    warm_workers(2)
    completions, answers = boxed + wrong + raw, golds * 3
    rewards = reward_func([""] * len(completions), completions, answer=answers, kind=["math"] * len(answers))
    n = len(rows)
    assert rewards[:n] == [1.0] * n
    assert rewards[n : 2 * n] == [0.0] * n
    assert rewards[2 * n :] == [1.0] * n
    assert reward_func.counts == {"correct": 2 * n, "wrong": n}


def test_math500_golds_verify_as_boxed_through_math_verify(full_data):
    rows = _rows(full_data, "math/math500.jsonl")
    reward_func = make_reward_func(num_workers=2, math_shortcut=False)
    completions = [f"Therefore the answer is $\\boxed{{{row['answer']}}}$." for row in rows]
    rewards = reward_func([""] * len(rows), completions, answer=[r["answer"] for r in rows])
    assert sum(r == 1.0 for r in rewards) >= 0.99 * len(rows)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("\\dfrac{14}{3}", "\\frac{14}{3}"),
        ("0.5", "\\frac12"),
        ("1,600", "1600"),
        ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"),
    ],
)
def test_equivalent_forms_are_correct(answer, gold):
    verdict = verify_math(f"\\boxed{{{answer}}}", gold, shortcut=False)
    assert (verdict.reward, verdict.reason) == (1.0, "correct")


def test_shortcut_gives_the_same_verdicts_as_math_verify():
    cases = [
        ("\\boxed{18}", "18"),
        ("\\boxed{17}", "18"),
        ("the total is 1,600", "1600"),
        ("\\boxed{-3}", "3"),
    ]
    for completion, gold in cases:
        fast, full = verify_math(completion, gold), verify_math(completion, gold, shortcut=False)
        assert (fast.reward, fast.reason) == (full.reward, full.reason)


def test_no_answer_and_wrong_carry_their_reasons():
    assert verify_math("I do not know", "5", fallback="none").reason == "no_answer"
    verdict = verify_math("\\boxed{6}", "5")
    assert (verdict.reward, verdict.reason) == (0.0, "wrong") and "6" in verdict.feedback


def test_bad_gold_or_timeout_raise_value_error():
    with pytest.raises(ValueError, match="gold"):
        verify_math("\\boxed{1}", "  ")
    with pytest.raises(ValueError, match="timeout"):
        verify_math("\\boxed{1}", "1", timeout=0)


def test_slow_check_times_out_from_a_thread_and_the_next_check_works():
    warm_workers(1)
    with ThreadPoolExecutor(1) as executor:  # how soon the 1 s limit stops it: benchmarks/limits.py
        verdict = executor.submit(verify_math, SLOW_ANSWER, "5", timeout=1.0).result(timeout=120)
    assert (verdict.reward, verdict.reason) == (0.0, "timeout")
    assert verify_math("\\boxed{\\frac{1}{2}}", "0.5", shortcut=False).reason == "correct"


def _verify_in_pool_worker(completion: str) -> tuple[float, str]:
    verdict = verify_math(completion, "5", timeout=1.0)
    return verdict.reward, verdict.reason


def test_limit_holds_inside_a_daemonic_worker_process():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_verify_in_pool_worker, ("\\boxed{5}",))  # start-up done
        assert pool.apply_async(_verify_in_pool_worker, (SLOW_ANSWER,)).get(timeout=120) == (0.0, "timeout")
        assert pool.apply(_verify_in_pool_worker, ("\\boxed{5}",)) == (1.0, "correct")
