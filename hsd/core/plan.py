"""Each rollout's teacher, planned from its group's rewards (method steps 1-4, Eq. 9 and 11): its outcome,
its successful peer, its teacher context and its first divergence tau, with the group statistics of the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from hsd.core.contexts import TeacherContext, build_contexts
from hsd.core.peers import SUCCESS_THRESHOLD, as_float_list, group_outcomes, select_peers
from hsd.core.tau import NO_TAU, first_divergence


@dataclass(frozen=True)
class GroupStatistics:
    """How the batch's groups turned out, logged each step as `hsd/<field>` in this order; None: not logged
    (the fields after `coverage` exist only with a teacher, `tau_median` only when some tau exists)."""

    groups_no_success_frac: float  # groups without a success: none of their rollouts has a peer
    groups_all_success_frac: float
    success_rate: float  # share of rollouts with R_i >= threshold
    coverage: float  # Eq. 12's f(p, G) measured: the share of rollouts that fail yet have a successful peer
    peer_frac: float | None = None  # distilled with a peer (successes included)
    fallback_frac: float | None = None  # distilled with the answer alone: hsd without a peer (Eq. 9)
    distilled_frac: float | None = None  # distilled at all: the rollout has a context
    tau_median: float | None = None  # median tau (Eq. 11) over the failures whose context holds a peer


@dataclass(frozen=True)
class TeacherPlan:
    """One entry per rollout (flat, groups contiguous), and the batch's statistics.

    `success[i]`: R_i >= threshold. `peers[i]`: o+_i, the flat index of its peer, or None. `contexts[i]`:
    c_i, or None when rollout i is not distilled. `taus[i]`: tau_i of a failed rollout whose context holds a
    peer, NO_TAU (-1) otherwise (an int, so `hsd.core.positions` turns the batch's taus into one tensor).
    """

    success: tuple[bool, ...]
    peers: tuple[int | None, ...]
    contexts: tuple[TeacherContext | None, ...]
    taus: tuple[int, ...]
    statistics: GroupStatistics

    @property
    def distilled(self) -> tuple[bool, ...]:
        """Whether each rollout is distilled: it has a teacher context."""
        return tuple(context is not None for context in self.contexts)


def _completion_ids(completion_ids: Sequence[Sequence[int]] | None, n_rollouts: int) -> list[list[int]]:
    if completion_ids is None:
        raise ValueError("completion_ids is required to plan a teacher (one token-id sequence per rollout)")
    ids_N = [[int(t) for t in ids] for ids in completion_ids]
    if len(ids_N) != n_rollouts:
        raise ValueError(f"completion_ids has {len(ids_N)} entries but there are {n_rollouts} rollouts")
    return ids_N


def _tau(ids_N: list[list[int]], i: int, success: bool, context: TeacherContext | None) -> int:
    """tau_i = min { t : o_{i,t} != o+_{i,t} } (Eq. 11) for a failure whose context holds a peer; else NO_TAU
    (also for a failure identical to its peer: no divergence)."""
    if success or context is None or context.peer is None:
        return NO_TAU
    return first_divergence(ids_N[i], ids_N[context.peer])


def _outcome_statistics(
    scored_N: list[float], success_N: list[bool], group_size: int, threshold: float
) -> GroupStatistics:
    """The statistics that need only the rewards (`group_outcomes`), also logged without a teacher."""
    outcomes = group_outcomes(scored_N, group_size, threshold)
    n_groups = max(outcomes["groups"], 1)
    return GroupStatistics(
        groups_no_success_frac=outcomes["groups_no_success"] / n_groups,
        groups_all_success_frac=outcomes["groups_all_success"] / n_groups,
        success_rate=torch.tensor(success_N, dtype=torch.float).mean().item(),
        coverage=outcomes["failures_with_peer"] / max(outcomes["rollouts"], 1),
    )


def _with_teacher_statistics(
    statistics: GroupStatistics, contexts_N: list[TeacherContext | None], taus_N: list[int]
) -> GroupStatistics:
    """`statistics` with the shares of rollouts distilled with a peer / after a fallback / at all, and tau."""
    n, kept_taus = max(len(contexts_N), 1), [t for t in taus_N if t != NO_TAU]
    return replace(
        statistics,
        peer_frac=sum(c is not None and c.peer is not None for c in contexts_N) / n,
        fallback_frac=sum(c is not None and c.fallback for c in contexts_N) / n,
        distilled_frac=sum(c is not None for c in contexts_N) / n,
        tau_median=float(torch.tensor(kept_taus).float().median()) if kept_taus else None,
    )


def plan_teachers(
    rewards: Sequence[float] | torch.Tensor,
    group_size: int,
    completion_ids: Sequence[Sequence[int]] | None = None,
    *,
    context: str | None = "hsd",
    rule: str = "uniform",
    generator: torch.Generator | None = None,
    answers: Sequence[str | None] | None = None,
    references: Sequence[str | None] | None = None,
    logps: Sequence[float] | torch.Tensor | None = None,
    fallback: bool = True,
    distill_successes: bool = True,
    threshold: float = SUCCESS_THRESHOLD,
) -> TeacherPlan:
    """The teacher of every rollout of a batch of GRPO groups (rewards flat, groups of `group_size`):

        success_i = R_i >= threshold                       step 1 (R_i NaN: not computed, a failure)
        o+_i      = a success of S_i = {j != i : R_j = 1}  steps 2-3, by `rule` (`select_peers`)
        c_i       = (a*, o+_i), or a* without a peer       step 4, Eq. 9, of kind `context` (`build_contexts`)
        tau_i     = min { t : o_{i,t} != o+_{i,t} }        Eq. 11, for a failure whose c_i holds a peer

    A rollout whose reward is NaN is never a peer and is not distilled. `context=None` plans no teacher (a
    method without one): only `success` and the outcome statistics, and `generator` is not drawn from.
    `completion_ids` (token ids per rollout) give tau and the `shortest` rule's lengths; `logps` the
    perplexity rules' mean log-probs; `answers` / `references` are as in `build_contexts`. The random draws
    are `select_peers`'s alone, in rollout order, so a generator seeded alike gives the same plan.
    """
    rewards_N = as_float_list(rewards, "rewards")
    scored_N = [-math.inf if math.isnan(r) else r for r in rewards_N]  # an uncomputed reward is a failure
    success_N = [r >= threshold for r in scored_N]
    statistics = _outcome_statistics(scored_N, success_N, group_size, threshold)
    n = len(rewards_N)
    if context is None:
        return TeacherPlan(tuple(success_N), (None,) * n, (None,) * n, (NO_TAU,) * n, statistics)
    ids_N = _completion_ids(completion_ids, n)
    lengths_N = [len(ids) for ids in ids_N]
    peers_N = select_peers(
        scored_N, group_size, rule, generator=generator, lengths=lengths_N, logps=logps, threshold=threshold
    )
    contexts_N = build_contexts(
        scored_N,
        group_size,
        peers_N,
        context,
        answers=answers,
        references=references,
        fallback=fallback,
        distill_successes=distill_successes,
        threshold=threshold,
    )
    contexts_N = [None if math.isnan(r) else c for r, c in zip(rewards_N, contexts_N)]
    taus_N = [_tau(ids_N, i, success_N[i], c) for i, c in enumerate(contexts_N)]
    statistics = _with_teacher_statistics(statistics, contexts_N, taus_N)
    return TeacherPlan(tuple(success_N), tuple(peers_N), tuple(contexts_N), tuple(taus_N), statistics)
