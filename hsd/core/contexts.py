"""The privileged context each rollout's teacher is conditioned on, as data rather than text (Eq. 9).
HSD gives c_i = (a*, o+_i) when rollout i has a successful peer and falls back to c_i = a* otherwise.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hsd.core.peers import SUCCESS_THRESHOLD, as_float_list, check_group_size

# hsd: answer + peer (Eq. 9); opsd: answer only; peer: peer only (ablation);
# reference: a worked reference solution (SDFT, original OPSD); none: no privileged context (a control)
CONTEXT_MODES = ("hsd", "opsd", "peer", "reference", "none")
# What a context holds (`TeacherContext.kind`): hsd gives answer+peer (answer after a fallback), opsd answer
CONTEXT_KINDS = ("none", "answer+peer", "answer", "peer", "reference")


@dataclass(frozen=True)
class TeacherContext:
    """What the teacher sees besides the question: the gold answer, a peer rollout, a reference solution.

    `peer` is the flat rollout index of the peer; `fallback` is True when the mode wanted a peer, had
    none, and fell back to the answer alone.
    """

    answer: str | None = None
    peer: int | None = None
    reference: str | None = None
    fallback: bool = False

    @property
    def kind(self) -> str:
        """One of answer+peer, answer, peer, reference, none: the parts present, joined by "+"."""
        parts = [
            name
            for name, value in (("answer", self.answer), ("peer", self.peer), ("reference", self.reference))
            if value is not None
        ]
        return "+".join(parts) or "none"


def _per_rollout(values: Sequence | None, n_rollouts: int, n_groups: int, name: str) -> list | None:
    """Broadcast one value per group to one per rollout; `ValueError` naming `name` on a length mismatch."""
    if values is None:
        return None
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence (one per rollout or one per group), not a single string")
    values = list(values)
    if len(values) == n_rollouts:
        return values
    if n_groups and len(values) == n_groups:
        group_size = n_rollouts // n_groups
        return [values[i // group_size] for i in range(n_rollouts)]
    raise ValueError(
        f"{name} has {len(values)} entries; expected one per rollout ({n_rollouts}) or per group ({n_groups})"
    )


def _checked_peers(
    peers: Sequence[int | None], rewards_N: list[float], group_size: int, threshold: float
) -> list[int | None]:
    """Peers as ints; `ValueError` naming `peers` unless each is None or another success of its group."""
    peers = list(peers)
    if len(peers) != len(rewards_N):
        raise ValueError(f"peers has {len(peers)} entries but there are {len(rewards_N)} rollouts")
    for i, peer in enumerate(peers):
        if peer is None:
            continue
        try:
            if isinstance(peer, bool):
                raise TypeError
            peer = peers[i] = operator.index(peer)
        except TypeError:
            raise ValueError(f"peers[{i}] must be an int rollout index or None, got {peer!r}") from None
        if peer == i or not 0 <= peer < len(rewards_N) or peer // group_size != i // group_size:
            raise ValueError(f"peers[{i}] = {peer} is not another rollout of the same group")
        if rewards_N[peer] < threshold:
            raise ValueError(f"peers[{i}] = {peer} is not a success (reward {rewards_N[peer]} < {threshold})")
    return peers


def build_contexts(
    rewards: Sequence[float] | torch.Tensor,
    group_size: int,
    peers: Sequence[int | None],
    context: str = "hsd",
    *,
    answers: Sequence[str | None],
    references: Sequence[str | None] | None = None,
    fallback: bool = True,
    distill_successes: bool = True,
    threshold: float = SUCCESS_THRESHOLD,
) -> list[TeacherContext | None]:
    """One entry per rollout (flat): its teacher context, or None when the rollout is not distilled.

    `answers` and `references` hold one entry per rollout or one per group (broadcast). `fallback` only
    affects `hsd`: without a peer the rollout gets the answer alone (True) or no distillation (False).
    `peer` context never falls back (None without a peer). With `distill_successes=False` every successful
    rollout (reward >= threshold) gets None, as in SDPO; the method distills successes too (step 4).
    """
    rewards_N = as_float_list(rewards, "rewards")
    n_rollouts = len(rewards_N)
    n_groups = check_group_size(n_rollouts, group_size)
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
    peers = _checked_peers(peers, rewards_N, group_size, threshold)
    answers_N = _per_rollout(answers, n_rollouts, n_groups, "answers")
    if answers_N is None:
        raise ValueError("answers is required (one per rollout or one per group)")
    references_N = _per_rollout(references, n_rollouts, n_groups, "references")
    if context in ("hsd", "opsd"):
        missing = [i for i, answer in enumerate(answers_N) if answer is None]
        if missing:
            raise ValueError(
                f"answers is None for rollout {missing[0]}; context {context!r} needs the answer"
            )
    if context == "reference":
        if references_N is None:
            raise ValueError("context 'reference' needs references (one per rollout or one per group)")
        missing = [i for i, reference in enumerate(references_N) if reference is None]
        if missing:
            raise ValueError(f"references is None for rollout {missing[0]}; context 'reference' needs one")

    return [
        None
        if not distill_successes and rewards_N[i] >= threshold
        else context_for(
            context,
            answer=answers_N[i],
            peer=peers[i],
            reference=references_N[i] if references_N is not None else None,
            fallback=fallback,
        )
        for i in range(n_rollouts)
    ]


def context_for(
    context: str, *, answer: str | None, peer: int | None, reference: str | None, fallback: bool = True
) -> TeacherContext | None:
    """One rollout's teacher context of kind `context` (see `build_contexts`), or None if not distilled."""
    if context == "hsd":  # Eq. 9
        if peer is not None:
            return TeacherContext(answer=answer, peer=peer)
        return TeacherContext(answer=answer, fallback=True) if fallback else None
    if context == "opsd":
        return TeacherContext(answer=answer)
    if context == "peer":
        return TeacherContext(peer=peer) if peer is not None else None
    if context == "reference":
        return TeacherContext(reference=reference)
    if context == "none":  # the teacher sees exactly what the student sees
        return TeacherContext()
    raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
