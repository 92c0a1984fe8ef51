"""hsd's worked-out KL head and TRL's ChunkedDivergenceFunction (the library head benchmarks/gpu/head.py
times against it) give the same KL(teacher || student) and the same gradients, on the CPU."""

from __future__ import annotations

import pytest
import torch
from trl.kernels.chunked_divergence import VOCAB_CHUNK_SIZE, ChunkedDivergenceFunction

from hsd.core.distill import distill_terms


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_trl_chunked_divergence_with_beta_0_equals_hsds_head(temperature):
    torch.manual_seed(0)
    positions, hidden, vocab = 24, 16, VOCAB_CHUNK_SIZE + 700  # two of TRL's vocabulary tiles
    head = torch.nn.Linear(hidden, vocab, bias=False)
    torch.nn.init.normal_(head.weight, std=0.3)
    student = torch.randn(positions, hidden, requires_grad=True)
    teacher = (student + 0.5 * torch.randn(positions, hidden)).detach()
    ids = torch.randint(0, vocab, (positions,))
    weights = torch.rand(positions)
    results = []
    for name in ("hsd", "trl"):
        head.zero_grad()
        student.grad = None
        if name == "hsd":
            divergence = distill_terms(teacher, student, ids, head, temperature=temperature).divergence
        else:
            divergence, _ = ChunkedDivergenceFunction.apply(
                student, head.weight, None, teacher, head.weight.detach(), None, 0.0, temperature
            )
        (divergence * weights).sum().backward()
        results.append((divergence.detach(), student.grad.clone(), head.weight.grad.clone()))
    (div_hsd, grad_h_hsd, grad_w_hsd), (div_trl, grad_h_trl, grad_w_trl) = results
    assert div_hsd.min() > 0 and div_hsd.max() > 1e-2  # a divergence worth comparing
    torch.testing.assert_close(div_trl, div_hsd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_h_trl, grad_h_hsd, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_w_trl, grad_w_hsd, rtol=1e-4, atol=1e-7)
