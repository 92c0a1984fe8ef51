"""Which successful peer each rollout's teacher sees (method steps 2-3).
A rollout i of a GRPO group gets o+_i from S_i = {j != i : R_j = 1}, its group's other verified successes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hsd.core.checks import is_int

# a rollout succeeds when its total reward R >= SUCCESS_THRESHOLD (R_j = 1 in the equations)
SUCCESS_THRESHOLD = 1.0
PEER_RULES = ("uniform", "first", "shortest", "lowest_ppl", "highest_ppl", "uniform_shared")
# the rules that need nothing but the rewards (and a generator): no lengths, no log-probs
RULES_FROM_REWARDS = ("uniform", "first", "uniform_shared")


def as_float_list(values: Sequence[float] | torch.Tensor, name: str) -> list[float]:
    """A flat list of floats from a sequence or a 1-D tensor; `ValueError` naming `name` otherwise."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D (flat, groups contiguous), got shape {tuple(values.shape)}")
        return [float(v) for v in values.tolist()]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a flat sequence of numbers: {error}") from error


def check_group_size(n_rollouts: int, group_size: int) -> int:
    """The number of groups; `ValueError` naming `group_size` unless it is a positive divisor of the batch."""
    if not is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if n_rollouts % group_size:
        raise ValueError(f"group_size={group_size} does not divide the number of rollouts ({n_rollouts})")
    return n_rollouts // group_size


def successes_by_group(rewards: list[float], group_size: int, threshold: float) -> list[list[int]]:
    """Flat indices of the successful rollouts (reward >= threshold) of each group, in index order."""
    n_groups = check_group_size(len(rewards), group_size)
    return [
        [i for i in range(g * group_size, (g + 1) * group_size) if rewards[i] >= threshold]
        for g in range(n_groups)
    ]


def _uniform_choice(candidates: list[int], generator: torch.Generator | None) -> int:
    return candidates[int(torch.randint(len(candidates), (1,), generator=generator).item())]


def _per_rollout_values(values, n_rollouts: int, name: str, rule: str) -> list[float]:
    if values is None:
        raise ValueError(f"rule {rule!r} needs {name} (one per rollout)")
    flat = as_float_list(values, name)
    if len(flat) != n_rollouts:
        raise ValueError(f"{name} has {len(flat)} entries but there are {n_rollouts} rollouts")
    if any(math.isnan(v) for v in flat):
        raise ValueError(f"{name} contains NaN (row {next(i for i, v in enumerate(flat) if math.isnan(v))})")
    return flat


def select_peers(
    rewards: Sequence[float] | torch.Tensor,
    group_size: int,
    rule: str = "uniform",
    *,
    generator: torch.Generator | None = None,
    lengths: Sequence[float] | torch.Tensor | None = None,
    logps: Sequence[float] | torch.Tensor | None = None,
    threshold: float = SUCCESS_THRESHOLD,
) -> list[int | None]:
    """For each rollout (flat index, group g = i // group_size), the flat index of its peer, or None.

    The peer is a success (reward >= threshold) of the same group and never the rollout itself.
    Rules: `uniform` draws from S_i with `generator` (None: torch's global default generator, so
    `torch.manual_seed` makes it reproducible); `first` takes the lowest index; `shortest` the fewest
    `lengths` (ties: lowest index); `lowest_ppl` / `highest_ppl` the lowest / highest perplexity
    exp(-mean log-prob), from `logps` = per-rollout mean token log-prob (ties: lowest index);
    `uniform_shared` draws one success per group and gives it to every rollout of the group, except that
    the drawn success itself gets another success of its group (uniform), or None if it is the only one.
    """
    rewards_N = as_float_list(rewards, "rewards")
    if rule not in PEER_RULES:
        raise ValueError(f"rule must be one of {PEER_RULES}, got {rule!r}")
    groups = successes_by_group(rewards_N, group_size, threshold)
    n_rollouts = len(rewards_N)
    if rule == "shortest":
        lengths_N = _per_rollout_values(lengths, n_rollouts, "lengths", rule)
        key = lambda j: (lengths_N[j], j)  # noqa: E731
    elif rule in ("lowest_ppl", "highest_ppl"):
        logps_N = _per_rollout_values(logps, n_rollouts, "logps", rule)
        # ppl = exp(-mean logp) is decreasing in mean logp: compare log-probs, never overflow exp
        sign = -1.0 if rule == "lowest_ppl" else 1.0
        key = lambda j: (sign * logps_N[j], j)  # noqa: E731
    else:
        key = None  # `first`: the lowest index

    peers_N: list[int | None] = [None] * n_rollouts
    for g, successes in enumerate(groups):
        members = range(g * group_size, (g + 1) * group_size)
        if rule == "uniform_shared":
            if not successes:
                continue
            shared = _uniform_choice(successes, generator)
            others = [j for j in successes if j != shared]
            for i in members:
                if i != shared:
                    peers_N[i] = shared
            peers_N[shared] = _uniform_choice(others, generator) if others else None
            continue
        for i in members:
            candidates = [j for j in successes if j != i]  # S_i: never the rollout itself
            if not candidates:
                continue
            if rule == "uniform":
                peers_N[i] = _uniform_choice(candidates, generator)
            else:
                peers_N[i] = min(candidates, key=key)
    return peers_N


def group_outcomes(
    rewards: Sequence[float] | torch.Tensor, group_size: int, threshold: float = SUCCESS_THRESHOLD
) -> dict[str, int]:
    """Counts of how the batch's groups turned out, for logging peer availability.

    `rollouts_with_peer`: rollouts whose group has a success other than themselves; `failures_with_peer`:
    failed rollouts whose group has a success (their empirical share estimates the coverage of Eq. 12).
    """
    rewards_N = as_float_list(rewards, "rewards")
    groups = successes_by_group(rewards_N, group_size, threshold)
    n_successes = sum(len(s) for s in groups)
    with_peer = failures_with_peer = 0
    for successes in groups:
        k = len(successes)
        # a failure sees all k successes; a success sees the other k - 1
        failures_with_peer += (group_size - k) if k >= 1 else 0
        with_peer += ((group_size - k) if k >= 1 else 0) + (k if k >= 2 else 0)
    return {
        "rollouts": len(rewards_N),
        "successes": n_successes,
        "groups": len(groups),
        "groups_no_success": sum(1 for s in groups if not s),
        "groups_all_success": sum(1 for s in groups if len(s) == group_size),
        "rollouts_with_peer": with_peer,
        "failures_with_peer": failures_with_peer,
    }
