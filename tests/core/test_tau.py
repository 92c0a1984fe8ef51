"""First divergence (Eq. 11), credit measurements aligned at tau, and coverage (Eq. 12)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsd.core.tau import (
    NO_TAU,
    abs_credit_at,
    coverage,
    credit_profile,
    first_divergence,
    mass_within,
    optimal_coverage,
    optimal_success_rate,
    silence_curve,
)

# (G, p*, f*) as worked out from Eq. 12 in the method document (three decimals)
METHOD_DOC_OPTIMA = [
    (4, 0.370, 0.473),
    (8, 0.257, 0.650),
    (16, 0.169, 0.779),
    (32, 0.106, 0.866),
    (64, 0.064, 0.922),
]


def test_first_divergence_is_the_first_differing_index():
    assert first_divergence([5, 6, 7, 8], [5, 6, 9, 8]) == 2
    assert first_divergence([1, 2], [3, 2]) == 0


def test_first_divergence_of_a_strict_prefix_is_its_length():
    assert first_divergence([5, 6], [5, 6, 7]) == 2
    assert first_divergence([5, 6, 7], [5, 6]) == 2
    assert first_divergence([], [4]) == 0


def test_first_divergence_is_no_tau_only_for_identical_sequences():
    assert first_divergence([5, 6, 7], [5, 6, 7]) == NO_TAU == -1
    assert first_divergence([], []) == NO_TAU


def test_first_divergence_accepts_tensors():
    assert first_divergence(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])) == 2
    assert first_divergence(torch.tensor([1, 2, 3]), [1, 2, 3]) == NO_TAU


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_first_divergence_matches_its_definition(a, b):
    tau = first_divergence(a, b)
    if tau == NO_TAU:
        assert a == b
    else:
        assert a[:tau] == b[:tau]
        assert tau == min(len(a), len(b)) or a[tau] != b[tau]
        assert tau == first_divergence(b, a)


def test_credit_profile_aligns_rollouts_at_tau():
    credits = [[0.0, 1.0, -2.0, 3.0], [4.0, -6.0, 8.0]]
    offsets, means, counts = credit_profile(credits, [2, 0], window=2)
    assert offsets == [-2, -1, 0, 1, 2]
    # rollout 0 (tau 2): |A| at offsets -2..1 = 0, 1, 2, 3; rollout 1 (tau 0): offsets 0..2 = 4, 6, 8
    assert counts == [1, 1, 2, 2, 1]
    assert means == [0.0, 1.0, 3.0, 4.5, 8.0]


def test_credit_profile_skips_rollouts_without_tau_and_marks_unreached_offsets():
    offsets, means, counts = credit_profile([torch.tensor([1.0, 2.0]), [9.0]], [0, NO_TAU], window=3)
    assert counts == [0, 0, 0, 1, 1, 0, 0]
    assert means[3:5] == [1.0, 2.0]
    assert all(math.isnan(m) for m in means[:3] + means[5:])


def test_mass_within_is_the_pooled_share_inside_the_window():
    credits = [[1.0, 1.0, 1.0, 1.0, 1.0], [0.0, -3.0]]
    shares = mass_within(credits, [2, 1], widths=(0, 1, 2))
    # pooled: window 0 holds 1 + 3 of 8; window 1 holds 3 + 3; window 2 holds 5 + 3
    assert shares == {0: 4 / 8, 1: 6 / 8, 2: 8 / 8}


def test_mass_within_default_widths_grow_monotonically():
    generator = torch.Generator().manual_seed(0)
    credits = [
        torch.randn(int(n), generator=generator) for n in torch.randint(1, 200, (20,), generator=generator)
    ]
    taus = [int(torch.randint(len(c), (1,), generator=generator)) for c in credits]
    shares = mass_within(credits, taus)
    assert list(shares) == [2, 4, 8, 16, 32]
    values = list(shares.values())
    assert all(0 <= x <= y <= 1 for x, y in zip(values, values[1:]))


def test_silence_curve_bins_by_relative_position():
    # length 4: positions (t + 0.5) / 4 = .125 .375 .625 .875; length 2: .25 .75
    centers, means = silence_curve([[1.0, -2.0, 3.0, 4.0], [10.0, 20.0]], bins=2)
    assert centers == [0.25, 0.75]
    assert means == [(1 + 2 + 10) / 3, (3 + 4 + 20) / 3]


def test_silence_curve_marks_empty_bins_nan():
    centers, means = silence_curve([[2.0]], bins=4)
    assert centers == [0.125, 0.375, 0.625, 0.875]
    assert means[2] == 2.0 and all(math.isnan(means[k]) for k in (0, 1, 3))


def test_abs_credit_at_splits_tau_from_the_rest():
    at_tau, elsewhere = abs_credit_at([[1.0, -5.0, 1.0], [3.0, 3.0], [7.0]], [1, 0, 1])
    # the third rollout's tau is past its end: left out
    assert at_tau == (5.0 + 3.0) / 2
    assert elsewhere == (1.0 + 1.0 + 3.0) / 3


def test_coverage_follows_eq_12():
    assert coverage(0.5, 4) == pytest.approx(0.5 * (1 - 0.5**3))
    assert coverage(0.25, 8) == pytest.approx(0.75 * (1 - 0.75**7))
    assert coverage(0.0, 8) == 0.0 and coverage(1.0, 8) == 0.0


@pytest.mark.parametrize(("G", "p_star", "f_star"), METHOD_DOC_OPTIMA)
def test_optimum_matches_the_method_document(G, p_star, f_star):
    assert round(optimal_success_rate(G), 3) == p_star
    # the document's f* is within one unit of its last decimal (.473 and .922 are .4725 and .9215 rounded up)
    assert abs(optimal_coverage(G) - f_star) <= 1e-3


@pytest.mark.parametrize("G", [4, 8, 16, 32, 64])
def test_optimum_is_the_maximum_of_coverage(G):
    grid = [k / 100_000 for k in range(100_001)]
    best = max(grid, key=lambda p: coverage(p, G))
    assert best == pytest.approx(optimal_success_rate(G), abs=2e-5)
    assert coverage(optimal_success_rate(G), G) == pytest.approx(optimal_coverage(G), rel=1e-12)
    assert optimal_coverage(G) >= max(coverage(p, G) for p in grid[::97])


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: coverage(1.5, 8), "p"),
        (lambda: coverage(-0.1, 8), "p"),
        (lambda: coverage(0.5, 1), "G"),
        (lambda: optimal_success_rate(1), "G"),
        (lambda: optimal_coverage(2.0), "G"),
        (lambda: credit_profile([[1.0]], [0, 1]), "taus"),
        (lambda: credit_profile([[1.0]], [-2]), "taus"),
        (lambda: credit_profile([[1.0]], [None]), "taus"),  # NO_TAU marks a rollout without tau
        (lambda: credit_profile([[1.0]], [0], window=-1), "window"),
        (lambda: credit_profile([[[1.0]]], [0]), "credits"),
        (lambda: mass_within([[1.0]], [0], widths=(-2,)), "widths"),
        (lambda: silence_curve([[1.0]], bins=0), "bins"),
        (lambda: abs_credit_at([[1.0]], []), "taus"),
        (lambda: first_divergence(torch.zeros(2, 2), [0]), "a"),
        (lambda: first_divergence([0], torch.zeros(2, 2)), "b"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=rf"\b{named}\b"):
        call()
