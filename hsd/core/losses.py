"""Per-token teacher-to-student divergences (Eq. 13 and variants) on logits (`hsd.core.distill` computes
them chunk by chunk from hidden states), and the aggregations (Eq. 10), RLSD token weights and
reference-KL estimator that mix them with RL losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hsd.core.checks import is_int, is_number

# kl_teacher_student: Eq. 13, the default. See `token_divergence` for the others.
DIVERGENCE_KINDS = ("kl_teacher_student", "kl_student_teacher", "jsd", "sampled_token", "topk")
AGGREGATION_MODES = ("sequence_mean", "token_mean", "fixed_length")


def check_divergence_options(kind: str, alpha: float | None, topk: int | None, clip: float | None) -> float:
    """Validate the divergence options; return alpha with its default (0.5) filled in."""
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")
    if alpha is None:
        alpha = 0.5
    elif not is_number(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if kind == "topk" and (not is_int(topk) or topk < 1):
        raise ValueError(f"kind 'topk' needs topk, a positive int, got {topk!r}")
    if clip is not None and (not is_number(clip) or not clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    return float(alpha)


def _check_per_position(tensor: torch.Tensor | None, shape: torch.Size, name: str) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} (one per position), got {tuple(tensor.shape)}"
        )


def _check_token_ids(token_ids: torch.Tensor | None, shape: torch.Size) -> None:
    _check_per_position(token_ids, shape, "token_ids")
    if token_ids is not None and (
        token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool
    ):
        raise ValueError(f"token_ids must be an integer tensor, got {token_ids.dtype}")


def _kl(logp_NV: torch.Tensor, logq_NV: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)) per row; a term with p(v) = 0 counts 0."""
    p_NV = logp_NV.exp()
    terms_NV = p_NV * (logp_NV - logq_NV)
    return torch.where(p_NV > 0, terms_NV, 0.0).sum(-1)


def _topk_kl(teacher_NV: torch.Tensor, student_NV: torch.Tensor, topk: int) -> torch.Tensor:
    """KL(teacher || student) over k + 1 bins: the teacher's top-k tokens plus one bucket for the rest."""
    lse_teacher_N1 = teacher_NV.logsumexp(-1, keepdim=True)
    lse_student_N1 = student_NV.logsumexp(-1, keepdim=True)
    top_teacher_NK, index_NK = teacher_NV.topk(topk, dim=-1)
    logp_NK = top_teacher_NK - lse_teacher_N1
    logq_NK = student_NV.gather(-1, index_NK) - lse_student_N1
    if topk < teacher_NV.shape[-1]:
        # the tail bucket's log-mass: logsumexp over the tokens outside the teacher's top k
        tail_teacher_N1 = teacher_NV.scatter(-1, index_NK, -math.inf).logsumexp(-1, keepdim=True)
        tail_student_N1 = student_NV.scatter(-1, index_NK, -math.inf).logsumexp(-1, keepdim=True)
        logp_NK = torch.cat([logp_NK, tail_teacher_N1 - lse_teacher_N1], dim=-1)
        logq_NK = torch.cat([logq_NK, tail_student_N1 - lse_student_N1], dim=-1)
    return _kl(logp_NK, logq_NK)


def _row_divergence(
    teacher_logits_NV: torch.Tensor,
    student_logits_NV: torch.Tensor,
    kind: str,
    alpha: float,
    topk: int | None,
    token_ids_N: torch.Tensor | None,
) -> torch.Tensor:
    """The divergence of each row, in float32 (or float64 for float64 logits); the teacher is detached."""
    # float32 math at least (float64 stays float64)
    dtype = torch.promote_types(student_logits_NV.dtype, torch.float32)
    teacher_NV = teacher_logits_NV.detach().to(dtype)
    student_NV = student_logits_NV.to(dtype)
    vocab_size = teacher_NV.shape[-1]
    if kind == "sampled_token":
        if token_ids_N.numel() and (int(token_ids_N.min()) < 0 or int(token_ids_N.max()) >= vocab_size):
            raise ValueError(f"token_ids must lie in [0, {vocab_size}) (the vocabulary size)")
        ids_N1 = token_ids_N.long().unsqueeze(-1)
        # Eq. 2: log pT(o_t) - log pS(o_t), the single-sample estimate of the divergence
        logp_N1 = teacher_NV.gather(-1, ids_N1) - teacher_NV.logsumexp(-1, keepdim=True)
        logq_N1 = student_NV.gather(-1, ids_N1) - student_NV.logsumexp(-1, keepdim=True)
        return (logp_N1 - logq_N1).squeeze(-1)
    if kind == "topk":
        if topk > vocab_size:
            raise ValueError(f"topk={topk} exceeds the vocabulary size {vocab_size}")
        return _topk_kl(teacher_NV, student_NV, topk)
    logp_teacher_NV = F.log_softmax(teacher_NV, dim=-1)
    logp_student_NV = F.log_softmax(student_NV, dim=-1)
    if kind == "kl_teacher_student" or (kind == "jsd" and alpha == 0.0):
        # Eq. 13: sum_v pT(v) (log pT(v) - log pS(v))
        return _kl(logp_teacher_NV, logp_student_NV)
    if kind == "kl_student_teacher" or (kind == "jsd" and alpha == 1.0):
        return _kl(logp_student_NV, logp_teacher_NV)
    # generalised JSD: alpha KL(T || M) + (1 - alpha) KL(S || M), M = alpha T + (1 - alpha) S
    logm_NV = torch.logaddexp(logp_teacher_NV + math.log(alpha), logp_student_NV + math.log1p(-alpha))
    return alpha * _kl(logp_teacher_NV, logm_NV) + (1.0 - alpha) * _kl(logp_student_NV, logm_NV)


def token_divergence(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    kind: str = "kl_teacher_student",
    *,
    alpha: float | None = None,
    topk: int | None = None,
    mask: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Per-position divergence [B, T] between teacher and student logits [B, T, V] (float32 math or wider).

    Kinds: `kl_teacher_student` = KL(pT || pS), Eq. 13, the default; `kl_student_teacher` = KL(pS || pT);
    `jsd` = alpha KL(pT || M) + (1 - alpha) KL(pS || M) with M = alpha pT + (1 - alpha) pS, alpha in
    [0, 1] (default 0.5), the convention of TRL's GKD `beta`: the endpoints are taken to be the KLs the
    mixture tilts towards, alpha = 0 -> KL(pT || pS) and alpha = 1 -> KL(pS || pT) (the formula itself
    would give 0 there); `sampled_token` = log pT(o_t) - log pS(o_t) at `token_ids` [B, T] (Eq. 2; it can
    be negative: under o_t ~ pS its expectation is -KL(pS || pT)); `topk` = KL(pT || pS) over the
    teacher's `topk` most likely tokens plus one bucket holding the remaining mass of each side.

    The teacher is detached. `clip` caps each position's value (clamp, no gradient above it); `mask`
    [B, T] (nonzero = keep) sets the other positions to 0.
    """
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() < 2:
        raise ValueError("teacher_logits must be a tensor [B, T, V]")
    if not isinstance(student_logits, torch.Tensor) or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits must have the shape of teacher_logits {tuple(teacher_logits.shape)}, "
            f"got {tuple(getattr(student_logits, 'shape', ()))}"
        )
    alpha = check_divergence_options(kind, alpha, topk, clip)
    positions = teacher_logits.shape[:-1]
    _check_per_position(mask, positions, "mask")
    _check_token_ids(token_ids, positions)
    if kind == "sampled_token" and token_ids is None:
        raise ValueError("kind 'sampled_token' needs token_ids (the sampled tokens, [B, T])")
    vocab_size = teacher_logits.shape[-1]
    values_N = _row_divergence(
        teacher_logits.reshape(-1, vocab_size),
        student_logits.reshape(-1, vocab_size),
        kind,
        alpha,
        topk,
        None if token_ids is None else token_ids.reshape(-1),
    )
    values = values_N.reshape(positions)
    if clip is not None:
        values = values.clamp(max=clip)
    if mask is not None:
        values = torch.where(mask != 0, values, 0.0)
    return values


def _check_values_and_mask(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> None:
    if not isinstance(values_BT, torch.Tensor) or values_BT.dim() != 2:
        raise ValueError("values_BT must be a tensor [B, T]")
    if not isinstance(mask_BT, torch.Tensor) or mask_BT.shape != values_BT.shape:
        raise ValueError(f"mask_BT must have the shape of values_BT {tuple(values_BT.shape)}")


def masked_mean_per_sequence(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """(1/|o_i|) sum_t values_{i,t} over each row's kept tokens (mask nonzero); 0 for a row with none."""
    _check_values_and_mask(values_BT, mask_BT)
    keep_BT = mask_BT != 0
    return torch.where(keep_BT, values_BT, 0.0).sum(-1) / keep_BT.sum(-1).clamp(min=1)


def aggregate(
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    aggregation: str = "sequence_mean",
    *,
    max_length: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """One scalar from per-token values, normalised like the RL loss it is mixed with.

    `sequence_mean`: mean over rows of each row's token mean (Eq. 10; TRL `grpo`). `token_mean`: sum over
    kept tokens / their number, or / `num_tokens` when given (e.g. the count across devices and
    accumulation steps; TRL `bnpo`, `dapo`). `fixed_length`: sum / (B * max_length) (TRL `dr_grpo`).
    """
    _check_values_and_mask(values_BT, mask_BT)
    if aggregation not in AGGREGATION_MODES:
        raise ValueError(f"aggregation must be one of {AGGREGATION_MODES}, got {aggregation!r}")
    keep_BT = mask_BT != 0
    if aggregation == "sequence_mean":  # Eq. 10
        return masked_mean_per_sequence(values_BT, mask_BT).mean()
    total = torch.where(keep_BT, values_BT, 0.0).sum()
    if aggregation == "token_mean":
        return total / (keep_BT.sum().clamp(min=1) if num_tokens is None else num_tokens)
    if not is_int(max_length) or max_length < 1:
        raise ValueError(f"aggregation 'fixed_length' needs max_length, a positive int, got {max_length!r}")
    return total / (values_BT.shape[0] * max_length)


def _check_advantages(advantages_B: torch.Tensor, per_token_BT: torch.Tensor, name: str) -> None:
    if not isinstance(per_token_BT, torch.Tensor) or per_token_BT.dim() != 2:
        raise ValueError(f"{name} must be a tensor [B, T]")
    if not isinstance(advantages_B, torch.Tensor) or tuple(advantages_B.shape) != (per_token_BT.shape[0],):
        raise ValueError(f"advantages_B must have shape ({per_token_BT.shape[0]},) (one per row of {name})")


def rlsd_token_weights(
    advantages_B: torch.Tensor, teacher_logps_BT: torch.Tensor, student_logps_BT: torch.Tensor, eps: float
) -> torch.Tensor:
    """RLSD: w_t = clip(exp(sign(A) (log pT(o_t) - log pS(o_t))), 1 - eps, 1 + eps), without gradient."""
    _check_advantages(advantages_B, student_logps_BT, "student_logps_BT")
    if not isinstance(teacher_logps_BT, torch.Tensor) or teacher_logps_BT.shape != student_logps_BT.shape:
        raise ValueError(
            f"teacher_logps_BT must have the shape of student_logps_BT {tuple(student_logps_BT.shape)}"
        )
    if not is_number(eps) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    with torch.no_grad():
        sign_B1 = torch.sign(advantages_B.float()).unsqueeze(-1)
        log_ratio_BT = teacher_logps_BT.float() - student_logps_BT.float()
        return torch.exp(sign_B1 * log_ratio_BT).clamp(1.0 - eps, 1.0 + eps)


def rlsd_advantages(advantages_B: torch.Tensor, weights_BT: torch.Tensor, lam: float) -> torch.Tensor:
    """RLSD per-token advantage A_t = A ((1 - lam) + lam w_t)."""
    _check_advantages(advantages_B, weights_BT, "weights_BT")
    if not is_number(lam) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    return advantages_B.unsqueeze(-1) * ((1.0 - lam) + lam * weights_BT)


def reference_kl(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_0): exp(r - l) - (r - l) - 1 with l = log pi_theta(o_t),
    r = log pi_0(o_t) (detached); >= 0, unbiased under o_t ~ pi_theta, the estimator TRL uses for beta."""
    if not isinstance(logps_BT, torch.Tensor):
        raise ValueError("logps_BT must be a tensor [B, T]")
    if not isinstance(ref_logps_BT, torch.Tensor) or ref_logps_BT.shape != logps_BT.shape:
        raise ValueError(f"ref_logps_BT must have the shape of logps_BT {tuple(logps_BT.shape)}")
    delta_BT = ref_logps_BT.detach() - logps_BT
    # exp(d) - d - 1 written as expm1(d) - d: the same value without cancellation for small d
    return torch.expm1(delta_BT) - delta_BT
