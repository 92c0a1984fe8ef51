"""The TRL reward function: order, parallelism, conversational completions, and uncomputed rewards as None."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from hsd.tasks import rewards as rewards_module
from hsd.tasks.gym import load_gym_problems
from hsd.tasks.problem import Verdict
from hsd.tasks.rewards import completion_text, make_reward_func, verify

CODE_TESTS = {"test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"}


@pytest.fixture
def reward_func():
    func = make_reward_func(num_workers=2, code_timeout=2.0)
    yield func
    func.close()


def test_it_has_the_name_and_signature_trl_expects(reward_func):
    assert reward_func.__name__ == "verifier_reward"
    rewards = reward_func(prompts=["q"], completions=["\\boxed{3}"], completion_ids=[[1, 2]], answer=["3"],
                          trainer_state=object())  # fmt: skip
    assert rewards == [1.0]


def test_mixed_kinds_are_scored_in_row_order(reward_func):
    gym = load_gym_problems("basic_arithmetic", size=1, seed=0)[0]
    completions = [
        [{"role": "assistant", "content": "so \\boxed{4}"}],
        "```python\ndef f(x):\n    return x + 1\n```",
        "\\boxed{5}",
        f"<answer>{gym.answer}</answer>",
        "```python\ndef f(x):\n    return x\n```",
    ]
    rewards = reward_func(
        [""] * 5, completions, answer=["4", "", "4", gym.answer, ""], kind=["math", "code", "math", "gym", "code"],
        meta=[None, json.dumps({"tests": CODE_TESTS}), "", json.dumps(gym.meta), {"tests": CODE_TESTS}],
    )  # fmt: skip
    assert rewards == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert [v.reason for v in reward_func.last_verdicts] == [
        "correct",
        "correct",
        "wrong",
        "correct",
        "wrong",
    ]
    assert reward_func.counts == {"correct": 3, "wrong": 2}
    assert "Test 1 of 1 failed" in reward_func.last_verdicts[4].feedback


def test_rows_are_verified_in_parallel(reward_func, monkeypatch):
    both_running = threading.Barrier(2, timeout=60)  # rows verified one after the other would break it

    def verify_together(kind, completion, **options) -> Verdict:
        both_running.wait()
        return Verdict(1.0, "correct")

    monkeypatch.setattr(rewards_module, "verify", verify_together)
    rewards = reward_func([""] * 2, ["a", "b"], answer=["1", "2"])
    assert rewards == [1.0, 1.0] and reward_func.counts == {"correct": 2}


def test_a_reward_that_cannot_be_computed_is_none_logged_and_counted(reward_func, caplog):
    gym = load_gym_problems("basic_arithmetic", size=1, seed=0)[0]
    broken_meta = dict(gym.meta, dataset="no_such_dataset")
    with caplog.at_level(logging.WARNING, logger="hsd.tasks.rewards"):
        rewards = reward_func(
            [""] * 4, ["\\boxed{1}", "```python\nx = 1\n```", "<answer>1</answer>", "\\boxed{2}"],
            answer=["1", "", gym.answer, "2"], kind=["math", "code", "gym", "poetry"],
            meta=[None, {}, broken_meta, None],
        )  # fmt: skip
    assert rewards == [1.0, None, None, None]
    assert reward_func.counts["error"] == 3 and reward_func.counts["correct"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("row 1 (kind code)" in m and "meta['tests']" in m for m in messages)
    assert any("row 2 (kind gym)" in m and "no_such_dataset" in m for m in messages)
    assert any("row 3 (kind poetry)" in m and "unknown problem kind" in m for m in messages)


def test_a_failing_candidate_is_a_computed_zero_not_none(reward_func):
    rewards = reward_func([""], ["```python\ndef f(x):\n    while True:\n        pass\n```"], answer=[""],
                          kind=["code"], meta=[{"tests": CODE_TESTS}])  # fmt: skip
    assert rewards == [0.0] and reward_func.last_verdicts[0].reason == "timeout"


def test_completion_text_joins_assistant_messages_and_rejects_other_types():
    messages = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert completion_text(messages) == "a\nb"
    assert completion_text("x") == "x"
    with pytest.raises(ValueError, match="completion"):
        completion_text(3)


def test_verify_dispatches_on_kind():
    from hsd.tasks.datasets import load_problems

    chain = load_problems("testbed:chain?n=1&steps=3")[0]
    assert verify("chain", chain.reference, answer=chain.answer, meta=chain.meta).reason == "correct"
    assert verify("math", "\\boxed{2}", answer="2").reason == "correct"
    assert verify("code", "def f(x): return x + 1", answer="", meta={"tests": CODE_TESTS}).reason == "correct"
    with pytest.raises(ValueError, match="unknown problem kind"):
        verify("poetry", "x", answer="")


def test_column_length_mismatch_is_a_value_error(reward_func):
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        reward_func(["", ""], ["a", "b"], answer=["1"])
