"""A model forward that returns hidden states (teacher pass) or the fused per-token distillation terms.

Like TRL's fused LM head, it is installed on the model's `forward`, so calling the (DDP / DeepSpeed / FSDP)
wrapped model runs it with the engine's hooks, and [B, T, V] logits never exist for both sides at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from hsd.core.head import chunks_on_every_rank, logit_softcap, output_head
from hsd.core.losses import token_divergence
from hsd.teacher.prefix import prefix_shared_hidden


class DistillTerms(NamedTuple):
    """Per-position terms of the student pass, each [N] (or [B, T] once scattered back): the divergence
    (differentiable), log pS(o_t) (differentiable), and, without gradient, log pT(o_t) and both entropies
    H = -sum_v p(v) log p(v). The teacher is the sharpened pT^(1/teacher_temperature), renormalised."""

    divergence: torch.Tensor
    student_logp: torch.Tensor
    teacher_logp: torch.Tensor
    student_entropy: torch.Tensor
    teacher_entropy: torch.Tensor


def _entropy_rows(logits_NV: torch.Tensor, lse_N: torch.Tensor, block: int = 64) -> torch.Tensor:
    """H = lse - sum_v softmax(z)(v) z(v) per row, `block` rows at a time (no [N, V] temporary)."""
    out = logits_NV.new_empty(logits_NV.size(0))
    for start in range(0, logits_NV.size(0), block):
        z = logits_NV[start : start + block]
        lse = lse_N[start : start + block]
        out[start : start + block] = lse - torch.linalg.vecdot((z - lse[:, None]).exp(), z)
    return out


def _distill_chunk(
    teacher_h, student_h, token_ids, lm_head, temperature, kind, alpha, topk, clip, teacher_temperature=1.0
):
    """Divergence, sampled-token log-probs and entropies on one chunk of positions (teacher detached)."""
    student_logits = lm_head(student_h).float() / temperature
    with torch.no_grad():
        teacher_logits = lm_head(teacher_h.detach()).float() / (temperature * teacher_temperature)
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
    with torch.no_grad():
        student_ent = _entropy_rows(student_logits.detach(), student_logits.detach().logsumexp(-1))
        teacher_ent = _entropy_rows(teacher_logits, teacher_logits.logsumexp(-1))
    return div, student_logp, teacher_logp, student_ent, teacher_ent


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
    teacher_temperature: float = 1.0,
) -> DistillTerms:
    """Per position: divergence (Eq. 13 by default), log pS(o_t), log pT(o_t) and both entropies.

    Computed chunk by chunk under activation checkpointing: each chunk's logits are rebuilt in the backward
    pass instead of being kept, so memory holds one chunk of [chunk, V] logits per side at a time. The
    teacher's logits are divided by `teacher_temperature` too (pT^(1/teacher_temperature), renormalised).
    """
    parts = []
    for chunk in range(chunks_on_every_rank(student_hidden_NH.size(0), chunk_size)):
        sl = slice(chunk * chunk_size, (chunk + 1) * chunk_size)  # may be empty on this process
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
            teacher_temperature,
        )
        if torch.is_grad_enabled() and student_hidden_NH.requires_grad:
            parts.append(checkpoint(_distill_chunk, *args, use_reentrant=False))
        else:
            parts.append(_distill_chunk(*args))
    if not parts:  # nothing to distil here: empty results still tied to the graph, so backward runs
        empty = student_hidden_NH.float().sum(-1)
        return DistillTerms(empty, empty, *(empty.detach(),) * 3)
    div, s_logp, t_logp, s_ent, t_ent = (torch.cat(column) for column in zip(*parts, strict=True))
    return DistillTerms(div, s_logp, t_logp.detach(), s_ent.detach(), t_ent.detach())


# torch >= 2.8 on CUDA multiplies bf16 / fp16 matrices straight into a float32 result
_MM_OUT_DTYPE = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 8)


def _fp32_product(tensor: torch.Tensor) -> bool:
    return _MM_OUT_DTYPE and tensor.is_cuda and tensor.dtype in (torch.bfloat16, torch.float16)


def _logits_fp32(hidden_nH, weight_VH, bias_V, inv_temperature: float) -> torch.Tensor:
    """[n, V] float32 logits / temperature; bf16 / fp16 products are accumulated in fp32 on CUDA."""
    if _fp32_product(hidden_nH):
        logits = torch.mm(hidden_nH, weight_VH.t(), out_dtype=torch.float32)
    else:
        logits = torch.mm(hidden_nH, weight_VH.t()).float()
    if bias_V is not None:
        logits.add_(bias_V.float())
    if inv_temperature != 1.0:
        logits.mul_(inv_temperature)
    return logits


def _mm_fp32(a, b, out=None, accumulate=False) -> torch.Tensor:
    """a @ b in float32 (added to `out` when `accumulate`), without rounding a bf16 / fp16 product first."""
    if _fp32_product(a):
        if accumulate:
            return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a, b, out_dtype=torch.float32)
    product = torch.mm(a.float(), b.float()) if a.dtype != torch.float32 else torch.mm(a, b)
    if accumulate:
        return out.add_(product)
    return product


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class _TeacherStudentKL(torch.autograd.Function):
    """KL(pT || pS) (Eq. 13), log pS(o_t), log pT(o_t) and both entropies from hidden states, with the
    gradient worked out.

    Forward: per chunk, both logits z (divided by the temperature; the teacher's also by the teacher
    temperature, pT ∝ pT^(1/T_teacher)), their log-normalisers, and
        KL = sum_v pT(v) (z_T(v) - z_S(v)) - log Z_T + log Z_S,
        H = log Z - sum_v p(v) z(v) for each side (diagnostics, no gradient).
    Backward: the gradient of the student logits is written directly,
        dL/dz_S = g_KL (pS - pT) + g_logp (onehot(o_t) - pS),
    then one matmul each for the hidden states and the head's weight; no autograd graph over [chunk, V].
    pS - pT is either kept from the forward (`keep_grad`: N x V values, two matmuls fewer) or recomputed
    from both logits in the backward.
    """

    @staticmethod
    def forward(
        ctx,
        student_NH,
        teacher_NH,
        token_ids_N,
        weight_VH,
        bias_V,
        temperature,
        chunk_size,
        clip,
        keep_grad,
        teacher_temperature=1.0,
    ):
        dtype = _compute_dtype(student_NH)
        inv_t, inv_t_teacher = 1.0 / temperature, 1.0 / (temperature * teacher_temperature)
        N = student_NH.size(0)
        divergence_N = student_NH.new_empty(N, dtype=torch.float32)
        student_logp_N, teacher_logp_N = torch.empty_like(divergence_N), torch.empty_like(divergence_N)
        student_lse_N, teacher_lse_N = torch.empty_like(divergence_N), torch.empty_like(divergence_N)
        student_ent_N, teacher_ent_N = torch.empty_like(divergence_N), torch.empty_like(divergence_N)
        kept_NV = student_NH.new_empty((N, weight_VH.size(0)), dtype=dtype) if keep_grad else None
        with torch.autocast(student_NH.device.type, enabled=False):
            weight = weight_VH.to(dtype)
            for start in range(0, N, chunk_size):
                sl = slice(start, start + chunk_size)
                ids = token_ids_N[sl, None]
                z_student = _logits_fp32(student_NH[sl].to(dtype), weight, bias_V, inv_t)
                z_teacher = _logits_fp32(teacher_NH[sl].to(dtype), weight, bias_V, inv_t_teacher)
                lse_student, lse_teacher = z_student.logsumexp(-1), z_teacher.logsumexp(-1)
                student_logp_N[sl] = z_student.gather(-1, ids)[:, 0] - lse_student
                teacher_logp_N[sl] = z_teacher.gather(-1, ids)[:, 0] - lse_teacher
                student_ent_N[sl] = _entropy_rows(z_student, lse_student)
                teacher_ent_N[sl] = _entropy_rows(z_teacher, lse_teacher)
                p_student = (z_student - lse_student[:, None]).exp_() if keep_grad else None
                gap = torch.sub(z_teacher, z_student, out=z_student)  # z_T - z_S, in place
                p_teacher = z_teacher.sub_(lse_teacher[:, None]).exp_()
                # Eq. 13: sum_v pT (log pT - log pS) = sum_v pT (z_T - z_S) - log Z_T + log Z_S
                divergence_N[sl] = torch.linalg.vecdot(p_teacher, gap) - lse_teacher + lse_student
                student_lse_N[sl], teacher_lse_N[sl] = lse_student, lse_teacher
                if keep_grad:
                    kept_NV[sl] = p_student.sub_(p_teacher)  # dKL/dz_S
        keep_N = None
        if clip is not None:
            keep_N = divergence_N <= clip  # clamp(max=clip): no gradient above the cap
            divergence_N = divergence_N.clamp(max=clip)
        ctx.save_for_backward(
            student_NH, teacher_NH, token_ids_N, weight_VH, bias_V, student_lse_N, teacher_lse_N, kept_NV
        )
        ctx.keep_N, ctx.inv_t, ctx.chunk_size, ctx.dtype = keep_N, inv_t, chunk_size, dtype
        ctx.inv_t_teacher = inv_t_teacher
        ctx.mark_non_differentiable(teacher_logp_N, student_ent_N, teacher_ent_N)
        return divergence_N, student_logp_N, teacher_logp_N, student_ent_N, teacher_ent_N

    @staticmethod
    def backward(ctx, grad_divergence_N, grad_student_logp_N, *_):
        student_NH, teacher_NH, token_ids_N, weight_VH, bias_V, student_lse_N, teacher_lse_N, kept_NV = (
            ctx.saved_tensors
        )
        inv_t, dtype = ctx.inv_t, ctx.dtype
        need_hidden, _, _, need_weight, need_bias = ctx.needs_input_grad[:5]
        N = student_NH.size(0)
        zeros = student_lse_N.new_zeros(N)
        g_div = zeros if grad_divergence_N is None else grad_divergence_N.float()
        if ctx.keep_N is not None:
            g_div = g_div * ctx.keep_N
        g_logp = None if grad_student_logp_N is None else grad_student_logp_N.float()
        grad_hidden = torch.zeros(student_NH.shape, dtype=torch.float32, device=student_NH.device)
        grad_weight = (
            torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
            if need_weight
            else None
        )
        grad_bias = (
            torch.zeros(bias_V.shape, dtype=torch.float32, device=bias_V.device) if need_bias else None
        )
        with torch.autocast(student_NH.device.type, enabled=False):
            weight = weight_VH.to(dtype)
            for start in range(0, N, ctx.chunk_size):
                sl = slice(start, start + ctx.chunk_size)
                g_div_n = g_div[sl] * inv_t  # 1 / temperature folded into the upstream gradients
                g_logp_n = None if g_logp is None or not g_logp[sl].any() else g_logp[sl] * inv_t
                if g_logp_n is None and not g_div_n.any():
                    continue
                h_student = student_NH[sl].to(dtype)
                if kept_NV is not None and g_logp_n is None:
                    grad_logits = kept_NV[sl].float() * g_div_n[:, None]
                else:
                    p_student = _logits_fp32(h_student, weight, bias_V, inv_t)
                    p_student.sub_(student_lse_N[sl, None]).exp_()
                    p_teacher = _logits_fp32(teacher_NH[sl].to(dtype), weight, bias_V, ctx.inv_t_teacher)
                    p_teacher.sub_(teacher_lse_N[sl, None]).exp_()
                    # dL/dz_S = g_div (pS - pT) + g_logp (onehot - pS)
                    coef = g_div_n if g_logp_n is None else g_div_n - g_logp_n
                    grad_logits = p_student.mul_(coef[:, None]).addcmul_(
                        p_teacher, g_div_n[:, None], value=-1.0
                    )
                    del p_teacher
                    if g_logp_n is not None:
                        grad_logits.scatter_add_(1, token_ids_N[sl, None], g_logp_n[:, None])
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                grad_low = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden[sl] = _mm_fp32(grad_low, weight)
                if need_weight:
                    _mm_fp32(grad_low.t(), h_student, out=grad_weight, accumulate=True)
        return (
            grad_hidden.to(student_NH.dtype) if need_hidden else None,
            None,
            None,
            grad_weight.to(weight_VH.dtype) if need_weight else None,
            grad_bias.to(bias_V.dtype) if need_bias else None,
            None,
            None,
            None,
            None,
            None,
        )


def analytic_head_refusal(config) -> str | None:
    """Why the worked-out gradient cannot serve this model family (None when it can); its `output_head` then
    is no plain linear head, so `analytic_head_supported` refuses it too."""
    if (cap := logit_softcap(config)) is not None:
        return f"final_logit_softcapping={cap} caps the logits, which its gradient does not model"
    return None


def analytic_head_supported(lm_head, kind: str) -> bool:
    """Whether `teacher_student_kl` can serve this call: Eq. 13, a plain (unsharded, unpatched) linear head."""
    weight = getattr(lm_head, "weight", None)
    if kind != "kl_teacher_student" or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return False
    if weight.numel() == 0 or hasattr(weight, "ds_id") or type(weight.data) is not torch.Tensor:
        return False  # a ZeRO-3 shard or an FSDP2 DTensor: the head's own module gathers it
    if "forward" in vars(lm_head):  # a patched head (e.g. TRL's fp32 cast) computes something else
        return False
    return type(lm_head).forward is torch.nn.Linear.forward


def teacher_student_kl(
    teacher_hidden_NH,
    student_hidden_NH,
    token_ids_N,
    lm_head,
    *,
    temperature=1.0,
    clip=None,
    chunk_size=1024,
    keep_grad_bytes: float = 0,
    teacher_temperature: float = 1.0,
) -> DistillTerms:
    """`fused_distillation` for Eq. 13 with a worked-out gradient (same values and gradients, fewer passes).

    The [N, V] student-logit gradient is kept from the forward when it fits in `keep_grad_bytes` (and
    gradients flow); otherwise the backward recomputes both logits chunk by chunk.
    """
    dtype = _compute_dtype(student_hidden_NH)
    size = student_hidden_NH.size(0) * lm_head.weight.size(0) * torch.empty((), dtype=dtype).element_size()
    keep = torch.is_grad_enabled() and student_hidden_NH.requires_grad and size <= keep_grad_bytes
    return DistillTerms(
        *_TeacherStudentKL.apply(
            student_hidden_NH,
            teacher_hidden_NH.detach(),
            token_ids_N,
            lm_head.weight,
            lm_head.bias,
            float(temperature),
            int(chunk_size),
            clip,
            keep,
            float(teacher_temperature),
        )
    )


@dataclass(frozen=True)
class DistillSpec:
    """What the student pass distils (`model(..., hsd_distill=DistillSpec(...))`): the tensors, the
    divergence settings (Eq. 13 by default) and the head that computes it."""

    completion_ids: torch.Tensor  # [B, T] the sampled tokens o_t
    positions: torch.Tensor  # bool [B, T]: where the divergence is computed
    teacher_hidden: torch.Tensor  # [B, T, H] the teacher pass's final hidden states (stop-gradient)
    kind: str = "kl_teacher_student"  # the divergence (`hsd.core.losses.token_divergence`)
    temperature: float = 1.0  # both sides' logits are divided by it
    alpha: float | None = None  # the divergence's mixing weight, where it has one
    topk: int | None = None  # restrict the divergence to the teacher's top-k tokens
    clip: float | None = None  # clip each token's divergence at this value
    chunk_size: int = 1024  # positions per chunk of [chunk, V] logits
    teacher_temperature: float = 1.0  # the teacher is pT^(1/teacher_temperature), renormalised
    analytic_head: bool = True  # the worked-out gradient (`teacher_student_kl`) where it applies
    keep_grad_bytes: float = 0  # keep the [N, V] logit gradient from the forward up to this many bytes


def install_hsd_forward(model) -> None:
    """Add three call modes to `model.forward` (the original behaviour is unchanged otherwise):

    - `model(input_ids, attention_mask, hsd_hidden=T)` -> final hidden states at the T positions that predict
      the last T tokens, [B, T, H] (the teacher pass).
    - `model(input_ids=prefix_ids, attention_mask=prefix_mask, hsd_prefix=dict(prefix_of_row, completion_ids,
      completion_mask))` -> the same hidden states for [prefix ; completion] rows, each distinct prefix run
      once and its KV cache shared (`hsd.teacher.prefix`).
    - `model(input_ids, attention_mask, hsd_distill=DistillSpec(...))` -> `DistillTerms` (divergence,
      student and teacher log p(o_t), student and teacher entropies) at the selected completion positions,
      from one backbone pass (the student pass).
    """
    if getattr(model, "_hsd_forward_installed", False):
        return
    inner_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self,
        *args,
        hsd_hidden: int | None = None,
        hsd_prefix: dict | None = None,
        hsd_distill: DistillSpec | None = None,
        **kwargs,
    ):
        if hsd_hidden is None and hsd_distill is None and hsd_prefix is None:
            return inner_forward(*args, **kwargs)
        if hsd_prefix is not None:
            return prefix_shared_hidden(
                self.base_model, kwargs["input_ids"], kwargs["attention_mask"], **hsd_prefix
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if hsd_hidden is not None:
            return hidden[:, -hsd_hidden - 1 : -1]
        spec = hsd_distill
        T = spec.completion_ids.size(1)
        student_BTH = hidden[:, -T - 1 : -1]
        lm_head = self.get_output_embeddings()
        head = output_head(self)  # soft-capped logits: no plain linear head, autograd on chunks serves it
        token_ids = spec.completion_ids[spec.positions]
        student_NH = student_BTH[spec.positions].to(lm_head.weight.dtype)
        teacher_NH = spec.teacher_hidden[spec.positions].to(lm_head.weight.dtype)
        if spec.analytic_head and token_ids.numel() and analytic_head_supported(head, spec.kind):
            return teacher_student_kl(
                teacher_NH,
                student_NH,
                token_ids,
                lm_head,
                temperature=spec.temperature,
                clip=spec.clip,
                chunk_size=spec.chunk_size,
                keep_grad_bytes=spec.keep_grad_bytes,
                teacher_temperature=spec.teacher_temperature,
            )
        return fused_distillation(
            teacher_NH,
            student_NH,
            token_ids,
            head,
            kind=spec.kind,
            temperature=spec.temperature,
            alpha=spec.alpha,
            topk=spec.topk,
            clip=spec.clip,
            chunk_size=spec.chunk_size,
            teacher_temperature=spec.teacher_temperature,
        )

    model.forward = forward.__get__(model)
    model._hsd_forward_installed = True
