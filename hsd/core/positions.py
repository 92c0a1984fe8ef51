"""Token positions relative to tau, the first divergence of a failed rollout from its peer (Eq. 11):
which positions the distillation loss keeps (`distill_position_mask`) and the regions the diagnostics
are reported on (`rollout_regions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hsd.core.checks import is_int
from hsd.core.tau import NO_TAU

# all: every position of a distilled rollout (Eq. 10); from_tau: t >= tau; tau_window: |t - tau| <= w
DISTILL_POSITIONS = ("all", "from_tau", "tau_window")
# the regions a diagnostic is split into, in the order they are logged
REGIONS = ("success", "failed_before_tau", "failed_at_tau", "failed_after_tau", "failed_no_peer")


def _check_taus(taus_B: torch.Tensor, T: int) -> torch.Tensor:
    if not isinstance(taus_B, torch.Tensor) or taus_B.dim() != 1:
        raise ValueError(f"taus_B must be a 1-d tensor (one tau per rollout, NO_TAU = {NO_TAU} where none)")
    if not is_int(T) or T < 0:
        raise ValueError(f"T must be a non-negative int (completion length), got {T!r}")
    return torch.arange(T, device=taus_B.device)[None, :]


def distill_position_mask(
    taus_B: torch.Tensor, T: int, positions: str = "all", window: int = 0
) -> torch.Tensor:
    """Which positions t of each rollout the distillation loss keeps, bool [B, T]:

        all:        every t
        from_tau:   t >= tau_i                      (rollouts with a tau only)
        tau_window: tau_i - w <= t <= tau_i + w     (rollouts with a tau only)

    tau_i = NO_TAU (-1, `hsd.core.tau`) marks a rollout without one (a success, or a failure without a peer):
    with `from_tau` or `tau_window` none of its positions is kept.
    """
    t_1T = _check_taus(taus_B, T)
    if positions not in DISTILL_POSITIONS:
        raise ValueError(f"positions must be one of {DISTILL_POSITIONS}, got {positions!r}")
    if not is_int(window) or window < 0:
        raise ValueError(f"window must be a non-negative int, got {window!r}")
    if positions == "all":
        return torch.ones(taus_B.size(0), T, dtype=torch.bool, device=taus_B.device)
    tau_B1 = taus_B[:, None]
    has_tau_B1 = tau_B1 >= 0
    if positions == "from_tau":
        return has_tau_B1 & (t_1T >= tau_B1)
    return has_tau_B1 & ((t_1T - tau_B1).abs() <= window)


@dataclass(frozen=True)
class RolloutRegions:
    """Bool [B, T] masks, disjoint, covering every position of every rollout (see `REGIONS`)."""

    success: torch.Tensor
    failed_before_tau: torch.Tensor
    failed_at_tau: torch.Tensor
    failed_after_tau: torch.Tensor
    failed_no_peer: torch.Tensor

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """(name, mask) in `REGIONS` order."""
        return [(name, getattr(self, name)) for name in REGIONS]


def rollout_regions(taus_B: torch.Tensor, success_B: torch.Tensor, T: int) -> RolloutRegions:
    """Split positions by outcome and by t against tau: successes; failures with a peer before, at and after
    tau (t < tau, t = tau, t > tau); failures without one (tau_i = NO_TAU: answer-only fallback, or none)."""
    t_1T = _check_taus(taus_B, T)
    if not isinstance(success_B, torch.Tensor) or tuple(success_B.shape) != tuple(taus_B.shape):
        raise ValueError(f"success_B must be a tensor of shape {tuple(taus_B.shape)} (one per rollout)")
    success_B1 = success_B.bool()[:, None]
    tau_B1 = taus_B[:, None]
    failed_B1 = ~success_B1
    with_tau_B1 = failed_B1 & (tau_B1 >= 0)
    full_BT = torch.ones(taus_B.size(0), T, dtype=torch.bool, device=taus_B.device)
    return RolloutRegions(
        success=success_B1 & full_BT,
        failed_before_tau=with_tau_B1 & (t_1T < tau_B1),
        failed_at_tau=with_tau_B1 & (t_1T == tau_B1),
        failed_after_tau=with_tau_B1 & (t_1T > tau_B1),
        failed_no_peer=(failed_B1 & (tau_B1 < 0)) & full_BT,
    )
