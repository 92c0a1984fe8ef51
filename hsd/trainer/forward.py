"""A model forward that returns hidden states (teacher pass) or the fused per-token distillation terms.

Like TRL's fused LM head, it is installed on the model's `forward`, so calling the (DDP / DeepSpeed / FSDP)
wrapped model runs it with the engine's hooks, and [B, T, V] logits never exist for both sides at once.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from hsd.core.losses import token_divergence


def _distill_chunk(teacher_h, student_h, token_ids, lm_head, temperature, kind, alpha, topk, clip):
    """Divergence and sampled-token log-probs on one chunk of positions (teacher side detached)."""
    student_logits = lm_head(student_h).float() / temperature
    with torch.no_grad():
        teacher_logits = lm_head(teacher_h.detach()).float() / temperature
    div = token_divergence(
        teacher_logits[None],
        student_logits[None],
        kind,
        alpha=alpha,
        topk=topk,
        clip=clip,
        token_ids=token_ids[None],
    )[0]
    ids = token_ids[:, None]
    student_logp = torch.log_softmax(student_logits, dim=-1).gather(-1, ids)[:, 0]
    teacher_logp = torch.log_softmax(teacher_logits, dim=-1).gather(-1, ids)[:, 0]
    return div, student_logp, teacher_logp


def _logp_chunk(hidden, token_ids, lm_head, temperature):
    logits = lm_head(hidden).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, token_ids[:, None])[:, 0]


def fused_distillation(
    teacher_hidden_NH: torch.Tensor,
    student_hidden_NH: torch.Tensor,
    token_ids_N: torch.Tensor,
    lm_head,
    *,
    kind: str = "kl_teacher_student",
    temperature: float = 1.0,
    alpha: float | None = None,
    topk: int | None = None,
    clip: float | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: divergence (Eq. 13 by default), student log pS(o_t) and teacher log pT(o_t).

    Computed chunk by chunk under activation checkpointing: each chunk's logits are rebuilt in the backward
    pass instead of being kept, so memory holds one chunk of [chunk, V] logits per side at a time.
    """
    divs, s_logps, t_logps = [], [], []
    for start in range(0, student_hidden_NH.size(0), chunk_size):
        sl = slice(start, start + chunk_size)
        args = (
            teacher_hidden_NH[sl],
            student_hidden_NH[sl],
            token_ids_N[sl],
            lm_head,
            temperature,
            kind,
            alpha,
            topk,
            clip,
        )
        if torch.is_grad_enabled() and student_hidden_NH.requires_grad:
            d, s, t = checkpoint(_distill_chunk, *args, use_reentrant=False)
        else:
            d, s, t = _distill_chunk(*args)
        divs.append(d)
        s_logps.append(s)
        t_logps.append(t)
    if not divs:
        empty = student_hidden_NH.new_zeros(0, dtype=torch.float32)
        return empty, empty, empty
    return torch.cat(divs), torch.cat(s_logps), torch.cat(t_logps).detach()


def chunked_token_logps(hidden_NH, token_ids_N, lm_head, *, temperature=1.0, chunk_size=1024) -> torch.Tensor:
    """log p(o_t) at each position, chunked (and checkpointed when gradients flow)."""
    out = []
    for start in range(0, hidden_NH.size(0), chunk_size):
        sl = slice(start, start + chunk_size)
        if torch.is_grad_enabled() and hidden_NH.requires_grad:
            out.append(
                checkpoint(
                    _logp_chunk, hidden_NH[sl], token_ids_N[sl], lm_head, temperature, use_reentrant=False
                )
            )
        else:
            out.append(_logp_chunk(hidden_NH[sl], token_ids_N[sl], lm_head, temperature))
    return torch.cat(out) if out else hidden_NH.new_zeros(0, dtype=torch.float32)


def install_hsd_forward(model) -> None:
    """Add two call modes to `model.forward` (the original behaviour is unchanged otherwise):

    - `model(input_ids, attention_mask, hsd_hidden=T)` -> final hidden states at the T positions that predict
      the last T tokens, [B, T, H] (the teacher pass).
    - `model(input_ids, attention_mask, hsd_distill=dict(...))` -> (divergence, student logp, teacher logp) at
      the selected completion positions, from one backbone pass (the student pass).
    """
    if getattr(model, "_hsd_forward_installed", False):
        return
    inner_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, hsd_hidden: int | None = None, hsd_distill: dict | None = None, **kwargs):
        if hsd_hidden is None and hsd_distill is None:
            return inner_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if hsd_hidden is not None:
            return hidden[:, -hsd_hidden - 1 : -1]
        spec = hsd_distill
        T = spec["completion_ids"].size(1)
        student_BTH = hidden[:, -T - 1 : -1]
        lm_head = self.get_output_embeddings()
        positions = spec["positions"]  # bool [B, T]: where the divergence is computed
        token_ids = spec["completion_ids"][positions]
        student_NH = student_BTH[positions].to(lm_head.weight.dtype)
        teacher_NH = spec["teacher_hidden"][positions].to(lm_head.weight.dtype)
        return fused_distillation(
            teacher_NH,
            student_NH,
            token_ids,
            lm_head,
            kind=spec["kind"],
            temperature=spec["temperature"],
            alpha=spec.get("alpha"),
            topk=spec.get("topk"),
            clip=spec.get("clip"),
            chunk_size=spec.get("chunk_size", 1024),
        )

    model.forward = forward.__get__(model)
    model._hsd_forward_installed = True
