"""The distillation engine (`hsd.core.distill.distill_terms`) gives the values and gradients of the full
[B, T, V] logit computation (`token_divergence`), on both of its routes, a chunk of logits at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hsd.core.distill import distill_terms
from hsd.core.losses import DIVERGENCE_KINDS, token_divergence

QWEN3_VOCAB = 151_936
# (kind, analytic): Eq. 13 takes the worked-out gradient by default; `analytic=False` forces autograd
ROUTES = [(kind, True) for kind in DIVERGENCE_KINDS] + [("kl_teacher_student", False)]


def sampled_logps(logits_BTV: torch.Tensor, token_ids_BT: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits_BTV.float(), -1).gather(-1, token_ids_BT[..., None])[..., 0]


def reference_and_engine(shape, kind, *, chunk_size, with_mask, with_bias, analytic=True, seed=0, clip=None):
    """(values, gradients) of the full-logit reference and of the engine at the kept positions, scattered
    back to [B, T] (0 elsewhere): divergence, then log pS(o_t) and log pT(o_t) (compared without gradient)."""
    batch, length, hidden, vocab = shape
    generator = torch.Generator().manual_seed(seed)
    teacher_hidden = torch.randn(batch, length, hidden, generator=generator)
    student_hidden = torch.randn(batch, length, hidden, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).requires_grad_()
    bias = torch.randn(vocab, generator=generator).requires_grad_() if with_bias else None
    mask = (torch.rand(batch, length, generator=generator) > 0.3) if with_mask else torch.ones(batch, length)
    token_ids = torch.randint(vocab, (batch, length), generator=generator)
    options = {"alpha": 0.3, "topk": 13, "clip": clip}
    leaves = [student_hidden, weight] + ([bias] if with_bias else [])
    teacher_logits, student_logits = (F.linear(h, weight, bias) for h in (teacher_hidden, student_hidden))
    reference = token_divergence(
        teacher_logits, student_logits, kind, mask=mask, token_ids=token_ids, **options
    )
    upstream = torch.randn(batch, length, generator=generator)  # a non-uniform upstream gradient
    reference_grads = torch.autograd.grad((reference * upstream).sum(), leaves)
    keep = mask != 0
    terms = distill_terms(
        teacher_hidden[keep],
        student_hidden[keep],
        token_ids[keep],
        weight,
        bias=bias,
        kind=kind,
        chunk_size=chunk_size,
        analytic=analytic,
        **options,
    )
    engine = torch.zeros(batch, length)
    engine[keep] = terms.divergence
    engine_grads = torch.autograd.grad((engine * upstream).sum(), leaves)
    logps = [sampled_logps(z, token_ids).detach()[keep] for z in (student_logits, teacher_logits)]
    return (reference, reference_grads, logps), (
        engine,
        engine_grads,
        [terms.student_logp, terms.teacher_logp],
    )


def assert_same(reference, engine, atol=1e-5):
    (ref_value, ref_grads, ref_logps), (value, grads, logps) = reference, engine
    assert value.shape == ref_value.shape
    assert torch.allclose(value, ref_value, atol=atol, rtol=1e-5)
    for a, b in zip(ref_grads, grads, strict=True):
        assert torch.allclose(a, b, atol=atol, rtol=1e-5)
    for a, b in zip(ref_logps, logps, strict=True):
        assert torch.allclose(a, b.detach(), atol=atol, rtol=1e-5)


@pytest.mark.parametrize(("kind", "analytic"), ROUTES)
@pytest.mark.parametrize(
    ("shape", "chunk_size", "with_mask", "with_bias"),
    [((2, 7, 16, 50), 3, False, False), ((3, 5, 8, 97), 4, True, True), ((1, 9, 24, 64), 1024, True, False)],
)
def test_engine_equals_full_logits_in_value_and_gradient(
    kind, analytic, shape, chunk_size, with_mask, with_bias
):
    reference, engine = reference_and_engine(
        shape, kind, chunk_size=chunk_size, with_mask=with_mask, with_bias=with_bias, analytic=analytic
    )
    assert_same(reference, engine)


@pytest.mark.parametrize(("kind", "analytic"), ROUTES)
def test_engine_equals_full_logits_at_qwen3_vocabulary(kind, analytic):
    reference, engine = reference_and_engine(
        (1, 3, 8, QWEN3_VOCAB),
        kind,
        chunk_size=2,
        with_mask=False,
        with_bias=False,
        analytic=analytic,
        seed=5,
    )
    assert_same(reference, engine)


@pytest.mark.parametrize("analytic", [True, False])
def test_engine_equals_full_logits_with_clip(analytic):
    reference, engine = reference_and_engine(
        (2, 6, 16, 40),
        "kl_teacher_student",
        chunk_size=5,
        with_mask=True,
        with_bias=True,
        analytic=analytic,
        clip=0.05,
    )
    assert (reference[0] == 0.05).any()  # the clip is active somewhere
    assert_same(reference, engine)


@pytest.mark.parametrize("analytic", [True, False])
def test_an_lm_head_module_equals_its_weight_and_bias(analytic):
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 33)
    teacher_hidden, student_hidden = torch.randn(10, 12), torch.randn(10, 12, requires_grad=True)
    ids = torch.randint(0, 33, (10,))
    results = []
    for as_module in (True, False):
        args = (head,) if as_module else (head.weight,)
        bias = {} if as_module else {"bias": head.bias}
        value = distill_terms(
            teacher_hidden, student_hidden, ids, *args, chunk_size=3, analytic=analytic, **bias
        )
        grads = torch.autograd.grad(value.divergence.sum(), (student_hidden, head.weight, head.bias))
        results.append((value.divergence, grads))
    (by_module, module_grads), (by_weight, weight_grads) = results
    assert torch.equal(by_module, by_weight)
    for a, b in zip(module_grads, weight_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("analytic", [True, False])
def test_teacher_hidden_gets_no_gradient(analytic):
    teacher_hidden = torch.randn(4, 6, requires_grad=True)
    student_hidden = torch.randn(4, 6, requires_grad=True)
    weight = torch.randn(10, 6, requires_grad=True)
    ids = torch.randint(0, 10, (4,))
    terms = distill_terms(teacher_hidden, student_hidden, ids, weight, chunk_size=3, analytic=analytic)
    value = terms.divergence.sum() + terms.student_logp.sum()
    grads = torch.autograd.grad(value, (teacher_hidden, student_hidden), allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0
    assert not any(t.requires_grad for t in terms[2:])  # log pT(o_t) and the entropies: diagnostics


def test_engine_works_without_autograd_and_with_no_position():
    teacher_hidden, student_hidden = torch.randn(6, 4), torch.randn(6, 4, requires_grad=True)
    weight, ids = torch.randn(9, 4), torch.randint(0, 9, (6,))
    with torch.no_grad():
        for analytic in (True, False):
            free = distill_terms(teacher_hidden, student_hidden, ids, weight, chunk_size=2, analytic=analytic)
            reference = token_divergence(teacher_hidden @ weight.T, student_hidden @ weight.T)
            assert torch.allclose(free.divergence, reference, atol=1e-6)
    empty = distill_terms(teacher_hidden[:0], student_hidden[:0], ids[:0], weight)
    assert all(term.shape == (0,) for term in empty)
    empty.divergence.sum().backward()  # still part of the graph


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces while active (forward or backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


def test_engine_never_builds_logits_for_more_than_one_chunk():
    positions, hidden, vocab, chunk = 64, 4, 5000, 8
    teacher_hidden, student_hidden = torch.randn(positions, hidden), torch.randn(positions, hidden)
    student_hidden.requires_grad_()
    weight = torch.randn(vocab, hidden, requires_grad=True)
    ids = torch.randint(0, vocab, (positions,))
    sizes = {}
    for variant in ("full logits", "worked-out gradient", "autograd"):
        forward, backward = LargestTensor(), LargestTensor()
        with forward:
            if variant == "full logits":
                value = token_divergence((teacher_hidden @ weight.T)[None], (student_hidden @ weight.T)[None])
            else:
                analytic = variant == "worked-out gradient"
                terms = distill_terms(
                    teacher_hidden, student_hidden, ids, weight, chunk_size=chunk, analytic=analytic
                )
                value = terms.divergence
        with backward:
            value.sum().backward()
        sizes[variant] = (forward.numel, backward.numel)
    assert sizes["full logits"] == (positions * vocab, positions * vocab)  # the instrument sees both passes
    assert sizes["worked-out gradient"] == (chunk * vocab, chunk * vocab)
    assert sizes["autograd"] == (chunk * vocab, chunk * vocab)


H2 = torch.zeros(2, 4)
W = torch.zeros(5, 4)
IDS = torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: distill_terms(H2, torch.zeros(3, 4), IDS, W), "teacher_hidden_NH"),
        (lambda: distill_terms(H2[None], H2[None], IDS, W), "student_hidden_NH"),
        (lambda: distill_terms(H2, H2, IDS, torch.zeros(5, 3)), "head"),
        (lambda: distill_terms(H2, H2, IDS, "lm_head"), "head"),
        (lambda: distill_terms(H2, H2, IDS, W, bias=torch.zeros(4)), "bias"),
        (lambda: distill_terms(H2, H2, IDS, torch.nn.Linear(4, 5), bias=torch.zeros(5)), "bias"),
        (lambda: distill_terms(H2, H2, IDS, W, chunk_size=0), "chunk_size"),
        (lambda: distill_terms(H2, H2, IDS, W, kind="jsd", alpha=2), "alpha"),
        (lambda: distill_terms(H2, H2, IDS, W, kind="topk", topk=9), "topk"),
        (lambda: distill_terms(H2, H2, IDS, W, clip=0), "clip"),
        (lambda: distill_terms(H2, H2, torch.zeros(3, dtype=torch.long), W), "token_ids_N"),
        (lambda: distill_terms(H2, H2, torch.zeros(2), W), "token_ids_N"),
        (lambda: distill_terms(H2, H2, IDS, W, kind="kl"), "kind"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=rf"\b{named}\b"):
        call()
