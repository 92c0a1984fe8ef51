"""The testbed measurements: tau against the true error on hand-made groups, and the default model's p."""

from __future__ import annotations

import pytest

from hsd.core.tau import coverage
from hsd.models import load_model, load_tokenizer
from hsd.tasks.chain import Chain, chain_problem
from hsd.testbed.measure import completion_text, divergence_stats, measure_testbed, task_defaults
from hsd.testbed.model import build_testbed_model, build_tokenizer

CORRECT = "7+3=0\n0-1=9\n9+2=1\n1-3=8\nAnswer: 8"


def _ids(tokenizer, texts):
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def test_single_path_failures_diverge_from_their_peer_at_the_error():
    tokenizer = build_tokenizer()
    problem = chain_problem(Chain(7, (3, -1, 2, -3), "single"))
    group = [CORRECT, CORRECT, "7+3=0\n0-1=9\n9+2=2\n2-3=9\nAnswer: 9", "7+3=0\n0-1"]
    stats = divergence_stats([problem], [_ids(tokenizer, group)], tokenizer)
    assert stats["p"] == 0.5
    assert stats["failed_with_peer"] == 2
    assert stats["tau_equals_error"] == 1.0 and stats["tau_equals_error_all_pairs"] == 1.0
    assert stats["peers_fully_correct"] == 1.0
    assert stats["reasons"] == {"correct": 2, "no_answer": 1, "wrong": 1}
    assert stats["rollouts_with_special_tokens"] == 0


def test_a_special_token_mid_completion_keeps_characters_aligned_with_tokens():
    tokenizer = build_tokenizer()
    ids = tokenizer.encode("7+3=0\n0", add_special_tokens=False) + [tokenizer.pad_token_id]
    ids += tokenizer.encode("-1=9", add_special_tokens=False)
    text = completion_text(ids, tokenizer)
    assert len(text) == len(ids) and text[7] == "\ufffd"
    problem = chain_problem(Chain(7, (3, -1, 2, -3), "single"))
    stats = divergence_stats(
        [problem], [[ids, tokenizer.encode(CORRECT, add_special_tokens=False)]], tokenizer
    )
    assert stats["rollouts_with_special_tokens"] == 1 and stats["tau_equals_error"] == 1.0


def test_multi_path_failure_in_another_order_diverges_before_its_error():
    tokenizer = build_tokenizer()
    problem = chain_problem(Chain(7, (3, -1, 2, -3), "multi"))
    failed = "7+2=9\n9-3=6\n6+3=0\n0-1=9\nAnswer: 9"  # valid order, slip at 6+3 (=9)
    stats = divergence_stats([problem], [_ids(tokenizer, [CORRECT, failed])], tokenizer)
    assert stats["failed_with_peer"] == 1
    assert stats["tau_equals_error"] == 0.0 and stats["tau_before_error"] == 1.0
    assert stats["median_tau"] == 2 and stats["median_error_char"] == 16


def test_a_peer_right_only_in_its_answer_is_counted_as_not_fully_correct():
    tokenizer = build_tokenizer()
    problem = chain_problem(Chain(7, (3, -1, 2, -3), "single"))
    lucky = "7+3=1\n1-1=0\n0+2=2\n2-3=9\nAnswer: 8"
    stats = divergence_stats([problem], [_ids(tokenizer, [CORRECT, lucky, "x"])], tokenizer)
    assert stats["peers"] == 2 and stats["peers_fully_correct"] == 0.5


def test_coverage_formula_peaks_near_the_documented_optimum():
    # Eq. 12 at G = 8: p* = 1 - 8^(-1/7) ~ .257, f* ~ .650
    assert coverage(0.257, 8) == pytest.approx(0.650, abs=1e-3)
    assert coverage(0.257, 8) > max(coverage(0.2, 8), coverage(0.32, 8))


@pytest.mark.slow
def test_default_model_success_rate_is_in_the_documented_band():
    """Builds the default model into the default cache (once; later runs reuse it), samples 256 fresh
    problems x 8 at temperature 1. The band is the one docs/results.md documents."""
    model_dir = build_testbed_model()
    model, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    result = measure_testbed(model, tokenizer, task=task_defaults(model_dir), problems=256, group_size=8)
    assert 0.2 <= result["p"] <= 0.55, result
    assert result["tau_equals_error"] >= 0.9, result
