"""The distillation head: per position, the divergence (Eq. 13 by default), log p(o_t) of the sampled token
under both sides and both entropies, from final hidden states and the LM head, `chunk_size` positions at a
time (never [N, V] logits).

`distill_terms` is the one entry point. It has two routes to the same values and gradients:

- the worked-out gradient (`_TeacherStudentKL`), for Eq. 13 on a plain linear head: the gradient of the
  student logits is written in closed form, so the backward is a few products per chunk and no autograd
  graph over [chunk, V]; the fastest measured (docs/performance.md).
- autograd through checkpointed chunks (`_autograd_chunks`), for everything else: the other divergences
  have other gradients; a soft-capped head (z = c tanh(z / c), Gemma 2) is no linear map; a sharded head
  (ZeRO-3, FSDP2) must be called as its module so that the engine's hooks gather its weight, where a
  product with `weight` would see only the local shard. Autograd through the head's own call serves them
  all, each chunk's logits rebuilt in the backward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hsd.core.checks import is_int
from hsd.core.head import chunks_on_every_rank, logit_softcap, sampled_logps
from hsd.core.losses import check_divergence_options, token_divergence


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


# ---- the worked-out gradient: Eq. 13 on a plain linear head ---------------------------------------------

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


class _KLSettings(NamedTuple):
    """What the worked-out route needs besides the tensors."""

    inv_t: float  # 1 / temperature
    inv_t_teacher: float  # 1 / (temperature * teacher_temperature)
    chunk_size: int
    clip: float | None  # cap of each position's divergence
    keep_grad: bool  # keep the [N, V] logit gradient from the forward


def _student_logit_grad(
    h_student, h_teacher, lse_student, lse_teacher, ids, weight, bias, g_div, g_logp, opts
):
    """dL/dz_S = g_div (pS - pT) + g_logp (onehot(o_t) - pS) on one chunk, [n, V] float32, both
    distributions rebuilt from the hidden states and the forward's log-normalisers."""
    p_student = _logits_fp32(h_student, weight, bias, opts.inv_t).sub_(lse_student[:, None]).exp_()
    p_teacher = _logits_fp32(h_teacher, weight, bias, opts.inv_t_teacher).sub_(lse_teacher[:, None]).exp_()
    coef = g_div if g_logp is None else g_div - g_logp
    grad_logits = p_student.mul_(coef[:, None]).addcmul_(p_teacher, g_div[:, None], value=-1.0)
    if g_logp is not None:
        grad_logits.scatter_add_(1, ids[:, None], g_logp[:, None])
    return grad_logits


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
    def forward(ctx, student_NH, teacher_NH, token_ids_N, weight_VH, bias_V, opts: _KLSettings):
        dtype = _compute_dtype(student_NH)
        inv_t, inv_t_teacher, chunk_size, clip, keep_grad = opts
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
        ctx.keep_N, ctx.opts, ctx.dtype = keep_N, opts, dtype
        ctx.mark_non_differentiable(teacher_logp_N, student_ent_N, teacher_ent_N)
        return divergence_N, student_logp_N, teacher_logp_N, student_ent_N, teacher_ent_N

    @staticmethod
    def backward(ctx, grad_divergence_N, grad_student_logp_N, *_):
        student_NH, teacher_NH, token_ids_N, weight_VH, bias_V, student_lse_N, teacher_lse_N, kept_NV = (
            ctx.saved_tensors
        )
        opts, inv_t, dtype = ctx.opts, ctx.opts.inv_t, ctx.dtype
        need_hidden, _, _, need_weight, need_bias = ctx.needs_input_grad[:5]
        N = student_NH.size(0)
        g_div = student_lse_N.new_zeros(N) if grad_divergence_N is None else grad_divergence_N.float()
        if ctx.keep_N is not None:
            g_div = g_div * ctx.keep_N
        g_logp = None if grad_student_logp_N is None else grad_student_logp_N.float()
        grad_hidden = torch.zeros(student_NH.shape, dtype=torch.float32, device=student_NH.device)
        grad_weight = torch.zeros_like(weight_VH, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias_V, dtype=torch.float32) if need_bias else None
        with torch.autocast(student_NH.device.type, enabled=False):
            weight = weight_VH.to(dtype)
            for start in range(0, N, opts.chunk_size):
                sl = slice(start, start + opts.chunk_size)
                g_div_n = g_div[sl] * inv_t  # 1 / temperature folded into the upstream gradients
                g_logp_n = None if g_logp is None or not g_logp[sl].any() else g_logp[sl] * inv_t
                if g_logp_n is None and not g_div_n.any():
                    continue
                h_student = student_NH[sl].to(dtype)
                if kept_NV is not None and g_logp_n is None:
                    grad_logits = kept_NV[sl].float() * g_div_n[:, None]
                else:
                    chunk = (h_student, teacher_NH[sl].to(dtype), student_lse_N[sl], teacher_lse_N[sl])
                    grad_logits = _student_logit_grad(
                        *chunk, token_ids_N[sl], weight, bias_V, g_div_n, g_logp_n, opts
                    )
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
        )


def _worked_out(
    teacher_NH, student_NH, token_ids_N, weight_VH, bias_V, opts, keep_grad_bytes
) -> DistillTerms:
    """The [N, V] student-logit gradient is kept from the forward when it fits in `keep_grad_bytes` (and
    gradients flow); otherwise the backward recomputes both logits chunk by chunk."""
    dtype = _compute_dtype(student_NH)
    size = student_NH.size(0) * weight_VH.size(0) * torch.empty((), dtype=dtype).element_size()
    keep = torch.is_grad_enabled() and student_NH.requires_grad and size <= keep_grad_bytes
    opts = opts._replace(keep_grad=keep)
    return DistillTerms(
        *_TeacherStudentKL.apply(student_NH, teacher_NH.detach(), token_ids_N, weight_VH, bias_V, opts)
    )


# ---- autograd through checkpointed chunks: any divergence, any head -------------------------------------


def _autograd_chunk(teacher_nH, student_nH, token_ids_n, head, temperatures, options):
    """Divergence, sampled-token log-probs and entropies on one chunk of positions (teacher detached)."""
    temperature, teacher_temperature = temperatures
    student_logits = head(student_nH).float() / temperature
    with torch.no_grad():
        teacher_logits = head(teacher_nH.detach()).float() / (temperature * teacher_temperature)
    div = token_divergence(teacher_logits[None], student_logits[None], token_ids=token_ids_n[None], **options)
    student_logp = sampled_logps(student_logits, token_ids_n)
    teacher_logp = sampled_logps(teacher_logits, token_ids_n)
    with torch.no_grad():
        student_ent = _entropy_rows(student_logits.detach(), student_logits.detach().logsumexp(-1))
        teacher_ent = _entropy_rows(teacher_logits, teacher_logits.logsumexp(-1))
    return div[0], student_logp, teacher_logp, student_ent, teacher_ent


def _autograd_chunks(
    teacher_NH, student_NH, token_ids_N, head, temperatures, chunk_size, options
) -> DistillTerms:
    """Each chunk under activation checkpointing: its [chunk, V] logits are rebuilt in the backward pass
    instead of being kept. Every process runs as many chunks (`chunks_on_every_rank`): a sharded head
    gathers its weight collectively on each call."""
    parts = []
    for chunk in range(chunks_on_every_rank(student_NH.size(0), chunk_size)):
        sl = slice(chunk * chunk_size, (chunk + 1) * chunk_size)  # may be empty on this process
        args = (teacher_NH[sl], student_NH[sl], token_ids_N[sl], head, temperatures, options)
        if torch.is_grad_enabled() and student_NH.requires_grad:
            parts.append(checkpoint(_autograd_chunk, *args, use_reentrant=False))
        else:
            parts.append(_autograd_chunk(*args))
    if not parts:  # nothing to distil here: empty results still tied to the graph, so backward runs
        empty = student_NH.float().sum(-1)
        return DistillTerms(empty, empty, *(empty.detach(),) * 3)
    div, s_logp, t_logp, s_ent, t_ent = (torch.cat(column) for column in zip(*parts, strict=True))
    return DistillTerms(div, s_logp, t_logp.detach(), s_ent.detach(), t_ent.detach())


# ---- the entry point ------------------------------------------------------------------------------------


def analytic_head_refusal(config) -> str | None:
    """Why the worked-out gradient cannot serve this model family (None when it can); its `output_head` then
    is no plain linear head, and `distill_terms` takes the autograd route for it."""
    if (cap := logit_softcap(config)) is not None:
        return f"final_logit_softcapping={cap} caps the logits, which its gradient does not model"
    return None


def _plain_weight(weight) -> bool:
    """A whole [V, H] tensor: not a ZeRO-3 shard nor an FSDP2 DTensor (the head's own module gathers those)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.numel() == 0:
        return False
    return not hasattr(weight, "ds_id") and type(weight.data) is torch.Tensor


def _linear_head(head, bias) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) when `head` is a plain linear map: a whole weight tensor, or an unsharded, unpatched
    `torch.nn.Linear` (a patched forward, e.g. TRL's fp32 cast, computes something else); else None."""
    if isinstance(head, torch.Tensor):
        return (head, bias) if _plain_weight(head) else None
    if not isinstance(head, torch.nn.Linear) or "forward" in vars(head):
        return None
    if type(head).forward is not torch.nn.Linear.forward or not _plain_weight(head.weight):
        return None
    return head.weight, head.bias


def _check_arguments(teacher_NH, student_NH, token_ids_N, head, bias, chunk_size) -> None:
    if not isinstance(student_NH, torch.Tensor) or student_NH.dim() != 2:
        raise ValueError("student_hidden_NH must be a tensor [N, H]")
    if not isinstance(teacher_NH, torch.Tensor) or teacher_NH.shape != student_NH.shape:
        raise ValueError(
            f"teacher_hidden_NH must have the shape of student_hidden_NH {tuple(student_NH.shape)}, "
            f"got {tuple(getattr(teacher_NH, 'shape', ()))}"
        )
    if not isinstance(token_ids_N, torch.Tensor) or tuple(token_ids_N.shape) != (student_NH.size(0),):
        raise ValueError(f"token_ids_N must be a tensor of shape ({student_NH.size(0)},) (one per position)")
    if token_ids_N.is_floating_point() or token_ids_N.is_complex() or token_ids_N.dtype == torch.bool:
        raise ValueError(f"token_ids_N must be an integer tensor, got {token_ids_N.dtype}")
    if isinstance(head, torch.Tensor):
        if head.dim() != 2 or head.size(1) != student_NH.size(1):
            raise ValueError(f"head must be a weight [V, {student_NH.size(1)}], got {tuple(head.shape)}")
        if bias is not None and tuple(bias.shape) != (head.size(0),):
            raise ValueError(f"bias must have shape ({head.size(0)},), got {tuple(bias.shape)}")
    elif not callable(head):
        raise ValueError("head must be a weight tensor [V, H] or a module mapping [n, H] to [n, V] logits")
    elif bias is not None:
        raise ValueError("bias goes with a weight tensor head; a module head applies its own")
    if not is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def distill_terms(
    teacher_hidden_NH: torch.Tensor,
    student_hidden_NH: torch.Tensor,
    token_ids_N: torch.Tensor,
    head: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    *,
    bias: torch.Tensor | None = None,
    kind: str = "kl_teacher_student",
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    alpha: float | None = None,
    topk: int | None = None,
    clip: float | None = None,
    chunk_size: int = 1024,
    keep_grad_bytes: float = 0,
    analytic: bool = True,
) -> DistillTerms:
    """`DistillTerms` at N positions: the divergence `kind` (`hsd.core.losses.token_divergence`; Eq. 13 by
    default) between pT and pS, log p(o_t) of the sampled tokens `token_ids_N` and both entropies, where
    z = head(h) / temperature for each side's hidden states [N, H] and the teacher is further divided by
    `teacher_temperature` (pT^(1/teacher_temperature), renormalised). The teacher gets no gradient.

    `head` is the LM head: a weight [V, H] (with `bias` [V]) or a module / function giving [n, V] logits
    (the model's `output_head`, so that a soft cap applies and a sharded head gathers its weight). Eq. 13
    on a plain linear head takes the worked-out gradient (unless `analytic` is False), keeping the [N, V]
    logit gradient from the forward when it fits in `keep_grad_bytes`; every other case takes autograd
    through checkpointed chunks (see the module docstring for why both routes exist). `clip` caps each
    position's divergence (no gradient above it); `alpha` and `topk` as in `token_divergence`.
    """
    _check_arguments(teacher_hidden_NH, student_hidden_NH, token_ids_N, head, bias, chunk_size)
    check_divergence_options(kind, alpha, topk, clip)
    hidden = (teacher_hidden_NH, student_hidden_NH, token_ids_N)
    linear = _linear_head(head, bias) if analytic and kind == "kl_teacher_student" else None
    if linear is not None and token_ids_N.numel():  # none here: the autograd route keeps the graph
        inv_t, inv_t_teacher = 1.0 / temperature, 1.0 / (temperature * teacher_temperature)
        opts = _KLSettings(inv_t, inv_t_teacher, chunk_size, clip, keep_grad=False)
        return _worked_out(*hidden, *linear, opts, keep_grad_bytes)
    if isinstance(head, torch.Tensor):
        head = functools.partial(F.linear, weight=head, bias=bias)
    options = {"kind": kind, "alpha": alpha, "topk": topk, "clip": clip}  # `token_divergence`'s
    return _autograd_chunks(*hidden, head, (temperature, teacher_temperature), chunk_size, options)
