"""Paired statistics of `hsd compare` against textbook values and a hand computation."""

from __future__ import annotations

import math

import pytest

from hsd.compare import paired_statistics, statistics_lines
from hsd.stats import curve_auc, mean_std, paired_difference, student_t_cdf, student_t_quantile

# Student (1908) / Cushny & Peebles sleep data: extra hours of sleep, drug 2 minus drug 1, per patient.
# R: t.test(extra ~ group, data = sleep, paired = TRUE) gives t = -4.0621, df = 9, p-value = 0.002833,
# 95 percent confidence interval -2.4598858 -0.7001142, mean difference -1.58 (group 1 - group 2).
SLEEP_DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_difference_reproduces_the_textbook_sleep_example():
    d = paired_difference(SLEEP_DRUG2, SLEEP_DRUG1)
    assert d.n == 10 and d.mean == pytest.approx(1.58)
    assert d.t == pytest.approx(4.0621, abs=1e-4)
    assert d.p_value == pytest.approx(0.002833, abs=1e-6)
    assert (d.low, d.high) == (pytest.approx(0.7001142, abs=1e-7), pytest.approx(2.4598858, abs=1e-7))


def test_student_t_against_closed_forms_and_table_values():
    for t in (-3.0, -0.4, 0.0, 1.0, 2.5):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    # two-sided 95% critical values from any t table
    for df, critical in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert student_t_quantile(0.975, df) == pytest.approx(critical, abs=5e-4)
    with pytest.raises(ValueError, match="df"):
        student_t_cdf(1.0, 0)


def test_auc_mean_std_and_degenerate_pairs():
    assert curve_auc([(0, 0.2), (10, 0.6), (30, 0.8)]) == pytest.approx((10 * 0.4 + 20 * 0.7) / 30)
    assert mean_std([0.5, None, 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    same = paired_difference([0.6, 0.7], [0.5, 0.6])
    assert same.mean == pytest.approx(0.1) and same.p_value == 0.0 and same.low == same.high
    assert math.isnan(paired_difference([0.5], [0.4]).p_value)


def test_paired_statistics_on_a_constructed_comparison():
    # 3 seeds; hsd - grpo final accuracy: +0.10, +0.20, +0.30 -> mean 0.2, s_d 0.1, t = 0.2 / (0.1 / sqrt 3)
    # = 3.4641 on 2 df; t_{0.975, 2} = 4.302653: CI 0.2 -/+ 4.302653 * 0.057735 = [-0.04841, 0.44841];
    # p = 2 (1 - F(3.4641; 2)) with F(t; 2) = 1/2 + t / (2 sqrt(2 + t^2)): 0.074180.
    def run(method, seed, final):
        return {
            "method": method,
            "seed": seed,
            "accuracy_curve": [(0, 0.4), (10, final)],
            "final_accuracy": final,
        }

    results = [run("grpo", s, 0.5) for s in range(3)] + [run("hsd", s, 0.6 + 0.1 * s) for s in range(3)]
    stats = paired_statistics(results, "grpo")
    d = stats["hsd"]["final_vs_grpo"]
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["mean"] == pytest.approx(0.2) and d["t"] == pytest.approx(3.4641016, abs=1e-6)
    assert (d["low"], d["high"]) == (pytest.approx(-0.04841, abs=1e-5), pytest.approx(0.44841, abs=1e-5))
    assert d["p_value"] == pytest.approx(0.074180, abs=1e-6)
    assert stats["hsd"]["auc"]["mean"] == pytest.approx((0.4 + 0.7) / 2)  # seed 1: (0.4 + 0.7) / 2 = 0.55
    # the baseline's own row has no difference to itself: null in comparison.json, empty cells in the table
    assert stats["grpo"]["final_vs_grpo"] is None and stats["grpo"]["auc_vs_grpo"] is None
    rows = {line.split(" | ")[0]: line for line in statistics_lines(stats, "grpo", "test")}
    assert rows["| grpo"].endswith("(n=3) |  |  |  |  |  |"), rows["| grpo"]
    assert rows["| hsd"].count("[") == 2 and rows["| hsd"].endswith("| 3 |")

    # only seed 0 of grpo was evaluated on the validation split: hsd has no validation row, not a NaN one
    results[0] |= {"validation_final_accuracy": 0.5, "validation_curve": [(0, 0.4), (10, 0.5)]}
    validation = paired_statistics(results, "grpo", "validation")
    assert list(validation) == ["grpo"] and validation["grpo"]["final"]["n"] == 1
