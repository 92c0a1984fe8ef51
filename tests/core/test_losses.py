"""Per-token divergences (Eq. 13 and variants) on logits, aggregation (Eq. 10), RLSD, k3 KL."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hsd.core.losses import (
    AGGREGATION_MODES,
    DIVERGENCE_KINDS,
    aggregate,
    masked_mean_per_sequence,
    reference_kl,
    rlsd_advantages,
    rlsd_token_weights,
    token_divergence,
)


def logits_of(*probabilities) -> torch.Tensor:
    """[1, T, V] logits whose softmax is each given distribution."""
    return torch.tensor(probabilities, dtype=torch.float32).log().unsqueeze(0)


def kl(p, q) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


P, Q = [0.5, 0.5], [0.25, 0.75]


# ---- hand-computed values -------------------------------------------------------------------------------


def test_kl_teacher_student_is_eq_13():
    value = token_divergence(logits_of(P), logits_of(Q))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert value.shape == (1, 1)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_kl_student_teacher_swaps_the_roles():
    value = token_divergence(logits_of(P), logits_of(Q), "kl_student_teacher")
    assert value.item() == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5), abs=1e-6)


def test_jsd_mixes_both_sides_against_the_mixture():
    alpha = 0.3
    mixture = [alpha * p + (1 - alpha) * q for p, q in zip(P, Q)]
    expected = alpha * kl(P, mixture) + (1 - alpha) * kl(Q, mixture)
    value = token_divergence(logits_of(P), logits_of(Q), "jsd", alpha=alpha)
    assert value.item() == pytest.approx(expected, abs=1e-6)
    half = [0.375, 0.625]
    assert token_divergence(logits_of(P), logits_of(Q), "jsd").item() == pytest.approx(
        0.5 * kl(P, half) + 0.5 * kl(Q, half), abs=1e-6
    )


def test_jsd_endpoints_are_the_two_kls():
    teacher, student = logits_of(P), logits_of(Q)
    assert torch.equal(
        token_divergence(teacher, student, "jsd", alpha=0.0), token_divergence(teacher, student)
    )
    assert torch.equal(
        token_divergence(teacher, student, "jsd", alpha=1),
        token_divergence(teacher, student, "kl_student_teacher"),
    )


def test_sampled_token_is_the_log_ratio_at_the_sampled_token():
    value = token_divergence(logits_of(P), logits_of(Q), "sampled_token", token_ids=torch.tensor([[1]]))
    assert value.item() == pytest.approx(math.log(0.5) - math.log(0.75), abs=1e-6)  # negative: allowed


def test_topk_keeps_the_teachers_top_tokens_and_one_tail_bucket():
    teacher, student = [0.4, 0.1, 0.3, 0.2], [0.1, 0.4, 0.2, 0.3]
    # teacher top-2: tokens 0 and 2; tails 0.3 (teacher) and 0.7 (student)
    expected = kl([0.4, 0.3, 0.3], [0.1, 0.2, 0.7])
    value = token_divergence(logits_of(teacher), logits_of(student), "topk", topk=2)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_topk_over_the_whole_vocabulary_is_the_full_kl():
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 7, generator=generator)
    full = token_divergence(teacher, student)
    assert torch.allclose(token_divergence(teacher, student, "topk", topk=7), full, atol=1e-6)


def test_kl_gradient_is_student_minus_teacher_probabilities():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 3, 11, generator=generator)
    student = torch.randn(2, 3, 11, generator=generator).requires_grad_()
    token_divergence(teacher, student).sum().backward()
    # d/dz_S sum_v pT (log pT - log softmax(z_S)) = pS - pT
    assert torch.allclose(student.grad, student.softmax(-1) - teacher.softmax(-1), atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_teacher_side_gets_no_gradient(kind):
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(1, 4, 9, generator=generator).requires_grad_()
    student = torch.randn(1, 4, 9, generator=generator).requires_grad_()
    ids = torch.randint(9, (1, 4), generator=generator)
    value = token_divergence(teacher, student, kind, topk=3, token_ids=ids)
    teacher_grad, student_grad = torch.autograd.grad(value.sum(), (teacher, student), allow_unused=True)
    assert teacher_grad is None
    assert student_grad is not None and student_grad.abs().sum() > 0


def test_mask_zeroes_positions_and_their_gradient():
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 3, 5, generator=generator)
    student = torch.randn(2, 3, 5, generator=generator).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    value = token_divergence(teacher, student, mask=mask)
    unmasked = token_divergence(teacher, student)
    assert torch.equal(value, torch.where(mask.bool(), unmasked, 0.0))
    value.sum().backward()
    assert student.grad[0, 2].abs().sum() == 0 and student.grad[1, 0].abs().sum() == 0
    assert student.grad[0, 0].abs().sum() > 0


def test_clip_caps_each_position():
    teacher = logits_of([0.98, 0.01, 0.01], [0.4, 0.3, 0.3])
    student = logits_of([0.01, 0.01, 0.98], [0.3, 0.3, 0.4])
    unclipped = token_divergence(teacher, student)
    assert unclipped[0, 0] > 1.0 > unclipped[0, 1]
    clipped = token_divergence(teacher, student, clip=1.0)
    assert clipped[0, 0].item() == 1.0 and clipped[0, 1] == unclipped[0, 1]


def test_math_is_float32_for_low_precision_logits():
    generator = torch.Generator().manual_seed(4)
    teacher, student = (torch.randn(1, 2, 300, generator=generator).bfloat16() for _ in range(2))
    value = token_divergence(teacher, student)
    assert value.dtype == torch.float32
    assert torch.equal(value, token_divergence(teacher.float(), student.float()))
    reference = token_divergence(teacher.double(), student.double())
    assert torch.allclose(value.double(), reference, rtol=1e-5)


# ---- properties -----------------------------------------------------------------------------------------


@st.composite
def logit_rows(draw) -> list[list[float]]:
    """A few rows of logits over a small vocabulary, from flat to very peaked."""
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(2, 40))
    seed, scale = draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.1, 1.0, 3.0, 8.0]))
    return (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale).tolist()


NONNEGATIVE_KINDS = [kind for kind in DIVERGENCE_KINDS if kind != "sampled_token"]


@settings(max_examples=150, deadline=None)
@given(
    rows=logit_rows(),
    kind=st.sampled_from(NONNEGATIVE_KINDS),
    alpha=st.floats(0, 1),
    shift=st.floats(-5, 5),
    topk=st.integers(1, 40),
)
def test_divergence_is_nonnegative_and_zero_for_matching_distributions(rows, kind, alpha, shift, topk):
    teacher = torch.tensor(rows).unsqueeze(0)
    topk = min(topk, teacher.shape[-1])
    student = teacher + shift  # the same distributions
    assert torch.allclose(
        token_divergence(teacher, student, kind, alpha=alpha, topk=topk), torch.zeros(1, len(rows)), atol=1e-5
    )
    other = torch.flip(teacher, dims=[-1]) * 0.7 - 1.0
    assert (token_divergence(teacher, other, kind, alpha=alpha, topk=topk) >= -1e-6).all()


# JSD scales like alpha * KL near alpha = 0 (and (1 - alpha) * KL near 1): strictly positive, but below
# float32 resolution for alpha within ~1e-7 of an endpoint, so those alphas are left out of this check
jsd_alphas = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.05, 0.95))


@settings(max_examples=150, deadline=None)
@given(rows=logit_rows(), kind=st.sampled_from(NONNEGATIVE_KINDS), alpha=jsd_alphas, data=st.data())
def test_divergence_is_positive_for_different_distributions(rows, kind, alpha, data):
    teacher = torch.tensor(rows).unsqueeze(0)
    vocab = teacher.shape[-1]
    token = data.draw(st.integers(0, vocab - 1))
    bump = data.draw(st.floats(0.5, 4.0))
    student = teacher.clone()
    student[..., token] += bump  # moves probability onto one token: a different distribution
    probability = teacher.softmax(-1)[..., token]
    assume(bool((probability > 1e-3).all() and (probability < 1 - 1e-3).all()))
    # topk over the whole vocabulary, so every difference is visible in its bins
    value = token_divergence(teacher, student, kind, alpha=alpha, topk=vocab)
    assert (value > 1e-7).all(), value


def sampled_token_at_every_token(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """[1, T, V]: the sampled-token value if token v had been sampled, for every v."""
    length, vocab = teacher.shape[1:]
    return torch.stack(
        [
            token_divergence(teacher, student, "sampled_token", token_ids=torch.full((1, length), v))
            for v in range(vocab)
        ],
        dim=-1,
    )


@settings(max_examples=100, deadline=None)
@given(rows=logit_rows(), shift=st.floats(-3, 3), scale=st.floats(0.2, 2.0))
def test_sampled_token_averages_to_minus_reverse_kl_under_the_student(rows, shift, scale):
    # not a divergence: a single-sample estimate that can be negative. Its property:
    # E_{o ~ pS}[log pT(o) - log pS(o)] = -KL(pS || pT) <= 0, and it is 0 at every token iff pT = pS
    teacher = torch.tensor(rows).unsqueeze(0)
    student = teacher * scale + shift
    values = sampled_token_at_every_token(teacher, student).double()
    expectation = (student.double().softmax(-1) * values).sum(-1)
    reverse = token_divergence(teacher, student, "kl_student_teacher").double()
    assert torch.allclose(expectation, -reverse, atol=1e-4)
    matching = sampled_token_at_every_token(teacher, teacher + shift)
    assert torch.allclose(matching, torch.zeros_like(matching), atol=1e-5)


# ---- aggregation ----------------------------------------------------------------------------------------

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_masked_mean_per_sequence():
    assert torch.equal(masked_mean_per_sequence(VALUES, MASK), torch.tensor([2.0, 4.0]))
    assert torch.equal(masked_mean_per_sequence(VALUES, torch.zeros(2, 3)), torch.zeros(2))


def test_aggregation_modes():
    assert aggregate(VALUES, MASK, "sequence_mean").item() == 3.0  # Eq. 10: (2 + 4) / 2
    assert aggregate(VALUES, MASK, "token_mean").item() == 2.5  # 10 / 4 tokens
    assert aggregate(VALUES, MASK, "token_mean", num_tokens=8).item() == 1.25
    assert aggregate(VALUES, MASK, "fixed_length", max_length=5).item() == 1.0  # 10 / (2 * 5)
    assert set(AGGREGATION_MODES) == {"sequence_mean", "token_mean", "fixed_length"}


def test_aggregation_ignores_non_finite_values_at_masked_positions():
    values = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 0]])
    for mode in AGGREGATION_MODES:
        total = aggregate(values, mask, mode, max_length=2)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(values.grad).all()
        values.grad = None


# ---- RLSD and reference KL -------------------------------------------------------------------------------


def test_rlsd_token_weights_clip_the_signed_ratio():
    advantages = torch.tensor([1.0, -1.0, 0.0])
    teacher = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.4], [0.9, 0.1]]))
    student = torch.log(torch.tensor([[0.25, 0.48], [0.25, 0.5], [0.1, 0.9]]))
    weights = rlsd_token_weights(advantages, teacher, student, eps=0.2)
    # row 0: ratios 2 -> 1.2, 0.5/0.48 -> 1.0417; row 1: 1/2 -> 0.8, 0.5/0.4 = 1.25 -> 1.2; row 2: A = 0 -> 1
    expected = torch.tensor([[1.2, 0.5 / 0.48], [0.8, 1.2], [1.0, 1.0]])
    assert torch.allclose(weights, expected, atol=1e-6)


def test_rlsd_token_weights_carry_no_gradient():
    student = torch.zeros(1, 3, requires_grad=True)
    assert not rlsd_token_weights(torch.ones(1), torch.zeros(1, 3), student, eps=0.1).requires_grad


def test_rlsd_advantages_interpolate_towards_the_weights():
    advantages = torch.tensor([2.0, -1.0])
    weights = torch.tensor([[1.2, 0.8], [1.0, 1.1]])
    assert torch.allclose(
        rlsd_advantages(advantages, weights, lam=0.5), torch.tensor([[2.2, 1.8], [-1.0, -1.05]]), atol=1e-6
    )
    assert torch.equal(rlsd_advantages(advantages, weights, lam=0.0), advantages[:, None].expand(2, 2))


def test_reference_kl_is_the_k3_estimator():
    logps = torch.log(torch.tensor([[0.5, 0.3]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.3]])).requires_grad_()
    value = reference_kl(logps, ref)
    assert torch.allclose(value, torch.tensor([[0.5 + math.log(2) - 1.0, 0.0]]), atol=1e-6)
    grads = torch.autograd.grad(value.sum(), (logps, ref), allow_unused=True)
    assert grads[1] is None and grads[0][0, 0] != 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-20, 0), min_size=1, max_size=8), st.lists(st.floats(-20, 0), min_size=8, max_size=8)
)
def test_reference_kl_is_nonnegative(logps, refs):
    logps_BT = torch.tensor([logps])
    value = reference_kl(logps_BT, torch.tensor([refs[: len(logps)]]))
    assert (value >= 0).all()


# ---- bad arguments --------------------------------------------------------------------------------------

T3 = torch.zeros(1, 2, 5)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: token_divergence(T3, torch.zeros(1, 3, 5)), "student_logits"),
        (lambda: token_divergence(torch.zeros(5), torch.zeros(5)), "teacher_logits"),
        (lambda: token_divergence(T3, T3, "reverse_kl"), "kind"),
        (lambda: token_divergence(T3, T3, "jsd", alpha=1.5), "alpha"),
        (lambda: token_divergence(T3, T3, "jsd", alpha=-0.1), "alpha"),
        (lambda: token_divergence(T3, T3, "topk"), "topk"),
        (lambda: token_divergence(T3, T3, "topk", topk=0), "topk"),
        (lambda: token_divergence(T3, T3, "topk", topk=6), "topk"),
        (lambda: token_divergence(T3, T3, "sampled_token"), "token_ids"),
        (
            lambda: token_divergence(T3, T3, "sampled_token", token_ids=torch.zeros(1, 3, dtype=torch.long)),
            "token_ids",
        ),
        (lambda: token_divergence(T3, T3, "sampled_token", token_ids=torch.full((1, 2), 5)), "token_ids"),
        (lambda: token_divergence(T3, T3, "sampled_token", token_ids=torch.zeros(1, 2)), "token_ids"),
        (lambda: token_divergence(T3, T3, mask=torch.ones(2, 2)), "mask"),
        (lambda: token_divergence(T3, T3, clip=0), "clip"),
        (lambda: aggregate(VALUES, MASK, "mean"), "aggregation"),
        (lambda: aggregate(VALUES, MASK, "fixed_length"), "max_length"),
        (lambda: aggregate(VALUES, MASK[:, :2]), "mask_BT"),
        (lambda: masked_mean_per_sequence(VALUES[0], MASK[0]), "values_BT"),
        (lambda: rlsd_token_weights(torch.ones(3), VALUES, VALUES, 0.2), "advantages_B"),
        (lambda: rlsd_token_weights(torch.ones(2), VALUES[:, :2], VALUES, 0.2), "teacher_logps_BT"),
        (lambda: rlsd_token_weights(torch.ones(2), VALUES, VALUES, -0.2), "eps"),
        (lambda: rlsd_advantages(torch.ones(2), VALUES, 1.5), "lam"),
        (lambda: rlsd_advantages(torch.ones(2, 1), VALUES, 0.5), "advantages_B"),
        (lambda: reference_kl(VALUES, VALUES[:1]), "ref_logps_BT"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=rf"\b{named}\b"):
        call()
