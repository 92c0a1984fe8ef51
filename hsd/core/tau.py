"""Where a failed rollout leaves its peer's path (Eq. 11), where the teacher's credit lands, and coverage.
Measurements over per-token signals A_t (Eq. 2) aligned at the first divergence tau, and Eq. 12.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from hsd.core.checks import is_int

TokenIds = Sequence[int] | torch.Tensor
Signal = Sequence[float] | torch.Tensor
# the tau of a rollout that has none (a success, a failure without a peer, one identical to its peer): an int,
# so that the taus of a batch make one tensor (`hsd.core.positions`); every measurement here skips it
NO_TAU = -1


def _token_list(ids: TokenIds, name: str) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return list(ids)


def first_divergence(a: TokenIds, b: TokenIds) -> int:
    """tau = min { t : a_t != b_t } (Eq. 11), 0-indexed; the shorter length when one is a strict prefix of
    the other; NO_TAU only when the sequences are identical."""
    a_list, b_list = _token_list(a, "a"), _token_list(b, "b")
    for t, (x, y) in enumerate(zip(a_list, b_list)):
        if x != y:
            return t
    if len(a_list) != len(b_list):
        return min(len(a_list), len(b_list))
    return NO_TAU


def _abs_signals(credits: Sequence[Signal]) -> list[torch.Tensor]:
    signals = []
    for i, credit in enumerate(credits):
        signal = torch.as_tensor(credit, dtype=torch.float64)
        if signal.dim() != 1:
            raise ValueError(
                f"credits[{i}] must be 1-D (one value per token), got shape {tuple(signal.shape)}"
            )
        signals.append(signal.abs())
    return signals


def _aligned(credits: Sequence[Signal], taus: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
    """(|A|, tau) per rollout that has a tau; rollouts with tau NO_TAU are left out."""
    signals = _abs_signals(credits)
    taus = list(taus)
    if len(taus) != len(signals):
        raise ValueError(f"taus has {len(taus)} entries but credits has {len(signals)}")
    pairs = []
    for i, (signal, tau) in enumerate(zip(signals, taus)):
        try:
            tau = operator.index(tau)
        except TypeError:
            raise ValueError(f"taus[{i}] must be an int (NO_TAU = {NO_TAU}: none), got {tau!r}") from None
        if tau == NO_TAU:
            continue
        if tau < 0:
            raise ValueError(f"taus[{i}] = {tau} is negative (NO_TAU = {NO_TAU} marks none)")
        pairs.append((signal, tau))
    return pairs


def credit_profile(
    credits: Sequence[Signal], taus: Sequence[int], window: int = 32
) -> tuple[list[int], list[float], list[int]]:
    """Mean |A_{tau+d}| for each offset d in [-window, window], over the rollouts where tau+d is a position.

    Returns (offsets, mean_abs, counts); an offset no rollout reaches has mean NaN and count 0. Rollouts
    whose tau is NO_TAU are skipped.
    """
    if not is_int(window) or window < 0:
        raise ValueError(f"window must be a non-negative int, got {window!r}")
    offsets = list(range(-window, window + 1))
    sums = [0.0] * len(offsets)
    counts = [0] * len(offsets)
    for signal, tau in _aligned(credits, taus):
        lo, hi = max(0, tau - window), min(len(signal), tau + window + 1)
        for t in range(lo, hi):
            sums[t - tau + window] += float(signal[t])
            counts[t - tau + window] += 1
    means = [s / c if c else math.nan for s, c in zip(sums, counts)]
    return offsets, means, counts


def mass_within(
    credits: Sequence[Signal], taus: Sequence[int], widths: Sequence[int] = (2, 4, 8, 16, 32)
) -> dict[int, float]:
    """Share of |A| within |t - tau| <= w, for each w in `widths`.

    Pooled over rollouts: (sum over rollouts of |A| inside the window) / (sum over rollouts of all |A|),
    so a rollout weighs by its total credit, not equally. Rollouts with tau NO_TAU are skipped; NaN when
    the pooled mass is zero.
    """
    pairs = _aligned(credits, taus)
    total = sum(float(signal.sum()) for signal, _ in pairs)
    shares = {}
    for w in widths:
        if not is_int(w) or w < 0:
            raise ValueError(f"widths must be non-negative ints, got {w!r}")
        inside = sum(float(signal[max(0, tau - w) : tau + w + 1].sum()) for signal, tau in pairs)
        shares[w] = inside / total if total > 0 else math.nan
    return shares


def silence_curve(credits: Sequence[Signal], bins: int = 20) -> tuple[list[float], list[float]]:
    """Mean |A_t| by relative position: token t of a rollout of length L sits at (t + 0.5) / L in (0, 1).

    Returns (bin centers, mean |A| per bin), pooled over all tokens of all rollouts falling in a bin
    (NaN for an empty bin).
    """
    if not is_int(bins) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    sums = torch.zeros(bins, dtype=torch.float64)
    counts = torch.zeros(bins, dtype=torch.float64)
    for signal in _abs_signals(credits):
        if len(signal) == 0:
            continue
        position = (torch.arange(len(signal), dtype=torch.float64) + 0.5) / len(signal)
        bin_of_token = (position * bins).long().clamp(max=bins - 1)
        sums.index_add_(0, bin_of_token, signal)
        counts.index_add_(0, bin_of_token, torch.ones_like(signal))
    centers = [(k + 0.5) / bins for k in range(bins)]
    means = [float(s / c) if c else math.nan for s, c in zip(sums.tolist(), counts.tolist())]
    return centers, means


def abs_credit_at(credits: Sequence[Signal], taus: Sequence[int]) -> tuple[float, float]:
    """(mean |A| at t = tau, mean |A| at every other position), over rollouts whose tau is a position."""
    at_tau, elsewhere, n_elsewhere = [], 0.0, 0
    for signal, tau in _aligned(credits, taus):
        if tau >= len(signal):
            continue
        at_tau.append(float(signal[tau]))
        elsewhere += float(signal.sum()) - float(signal[tau])
        n_elsewhere += len(signal) - 1
    mean_at = sum(at_tau) / len(at_tau) if at_tau else math.nan
    return mean_at, (elsewhere / n_elsewhere if n_elsewhere else math.nan)


def _check_group(G: int) -> None:
    if not is_int(G) or G < 2:
        raise ValueError(f"G (group size) must be an int >= 2, got {G!r}")


def coverage(p: float, G: int) -> float:
    """f(p, G) = (1 - p) [1 - (1 - p)^(G-1)] (Eq. 12): the chance a rollout fails yet has a successful peer."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p (success rate) must be in [0, 1], got {p!r}")
    _check_group(G)
    return (1.0 - p) * (1.0 - (1.0 - p) ** (G - 1))


def optimal_success_rate(G: int) -> float:
    """p* = 1 - G^(-1/(G-1)), the success rate maximising f(p, G) (Eq. 12); e.g. G=8: 0.257."""
    _check_group(G)
    return 1.0 - G ** (-1.0 / (G - 1))


def optimal_coverage(G: int) -> float:
    """f* = f(p*, G) = (1 - 1/G) G^(-1/(G-1)) (Eq. 12); e.g. G=8: 0.650."""
    _check_group(G)
    return (1.0 - 1.0 / G) * G ** (-1.0 / (G - 1))
