"""Planning each rollout's teacher (steps 1-4, Eq. 9, 11, 12) on small groups whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hsd.core.contexts import TeacherContext
from hsd.core.plan import GroupStatistics, TeacherPlan, plan_teachers

# group 0 (rollouts 0-3): successes 0 and 2; group 1 (rollouts 4-7): no success
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
IDS = [
    [5, 6, 7],  # 0: success
    [5, 9, 7, 1],  # 1: leaves rollout 0 at t = 1
    [5, 6, 8],  # 2: success
    [4, 6, 7],  # 3: leaves rollout 0 at t = 0
    [1],
    [2],
    [3],
    [4],
]
ANSWERS = ["7", "12"]  # one per group


def plan(rewards=REWARDS, ids=IDS, **options):
    options.setdefault("answers", ANSWERS)
    options.setdefault("rule", "first")
    return plan_teachers(rewards, 4, ids, **options)


def test_a_group_with_successes_gets_answer_and_peer_and_tau_against_it():  # Eq. 9, 11
    result = plan()
    # `first`: the lowest other success; rollout 0's only other success is 2
    assert result.peers == (2, 0, 0, 0, None, None, None, None)
    assert result.success == (True, False, True, False, False, False, False, False)
    assert result.contexts[:4] == (
        TeacherContext(answer="7", peer=2),
        TeacherContext(answer="7", peer=0),
        TeacherContext(answer="7", peer=0),
        TeacherContext(answer="7", peer=0),
    )
    # successes have no tau; 1 vs 0 differ at t = 1, 3 vs 0 at t = 0
    assert result.taus[:4] == (-1, 1, -1, 0)


def test_a_group_without_success_falls_back_to_the_answer():
    result = plan()
    assert result.contexts[4:] == (TeacherContext(answer="12", fallback=True),) * 4
    assert result.taus[4:] == (-1,) * 4
    assert result.distilled == (True,) * 8


def test_without_fallback_a_group_without_success_is_not_distilled():
    result = plan(fallback=False)
    assert result.contexts[4:] == (None,) * 4
    assert result.distilled == (True,) * 4 + (False,) * 4
    assert result.statistics.distilled_frac == 0.5
    assert result.statistics.fallback_frac == 0.0


def test_statistics_of_a_mixed_batch():
    stats = plan().statistics
    # 1 of 2 groups without success, none all-success; 2 of 8 rollouts succeed; failures with a
    # successful peer: rollouts 1 and 3, so Eq. 12's coverage is 2 / 8
    assert stats == GroupStatistics(
        groups_no_success_frac=0.5,
        groups_all_success_frac=0.0,
        success_rate=0.25,
        coverage=0.25,
        peer_frac=0.5,  # rollouts 0-3 have a peer
        fallback_frac=0.5,  # rollouts 4-7
        distilled_frac=1.0,
        tau_median=0.0,  # taus 1 and 0: the lower median
    )


def test_distill_successes_off_keeps_the_peers_but_drops_the_successes():
    result = plan(distill_successes=False)
    assert result.peers == plan().peers
    assert result.contexts[0] is None and result.contexts[2] is None
    assert result.contexts[1] == TeacherContext(answer="7", peer=0)
    assert result.statistics.peer_frac == 2 / 8  # only the failures 1 and 3 are distilled with a peer
    assert result.taus[:4] == (-1, 1, -1, 0)


def test_uniform_peers_follow_the_generator_draw_for_draw_in_rollout_order():
    result = plan(rule="uniform", generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)

    def draw(candidates):
        return candidates[int(torch.randint(len(candidates), (1,), generator=replay))]

    # S_i per rollout of group 0; group 1 has no success and draws nothing
    expected = [draw([2]), draw([0, 2]), draw([0]), draw([0, 2])] + [None] * 4
    assert list(result.peers) == expected
    assert result.peers[0] == 2 and result.peers[2] == 0
    assert plan(rule="uniform", generator=torch.Generator().manual_seed(7)) == result


def test_a_plan_draws_only_the_peers_from_the_generator():
    generator, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plan(rule="uniform", generator=generator)
    for _ in range(4):  # the four draws of group 0's rollouts
        torch.randint(2, (1,), generator=replay)
    assert torch.equal(generator.get_state(), replay.get_state())


def test_an_uncomputed_reward_is_a_failure_never_a_peer_and_not_distilled():
    rewards = [1.0, math.nan, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    result = plan(rewards)
    assert result.success[1] is False
    assert result.contexts[1] is None and result.taus[1] == -1
    assert 1 not in result.peers
    assert result.statistics.coverage == 2 / 8  # still a failure whose group has a success


def test_no_teacher_plans_outcomes_only_and_leaves_the_generator_alone():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    result = plan_teachers(REWARDS, 4, context=None, generator=generator)
    assert result == TeacherPlan(
        success=(True, False, True, False, False, False, False, False),
        peers=(None,) * 8,
        contexts=(None,) * 8,
        taus=(-1,) * 8,
        statistics=GroupStatistics(
            groups_no_success_frac=0.5, groups_all_success_frac=0.0, success_rate=0.25, coverage=0.25
        ),
    )
    assert torch.equal(generator.get_state(), state)


def test_opsd_has_no_peer_in_its_context_so_no_tau():
    result = plan(context="opsd")
    assert result.contexts[1] == TeacherContext(answer="7")
    assert result.taus == (-1,) * 8
    assert result.statistics.tau_median is None


def test_a_failure_identical_to_its_peer_has_no_tau():
    ids = [[5, 6], [5, 6]] + [[1]] * 6
    result = plan([1.0, 0.0] + [0.0] * 6, ids)
    assert result.peers[1] == 0 and result.taus[1] == -1


def test_shortest_rule_takes_lengths_from_the_completion_ids():
    rewards = [1.0, 1.0, 1.0, 0.0]
    ids = [[1, 2, 3], [1], [1, 2], [9]]
    result = plan_teachers(rewards, 4, ids, rule="shortest", answers=["x"])
    assert result.peers == (1, 2, 1, 1)


def test_threshold_decides_success():
    result = plan([0.6, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], threshold=0.5)
    assert result.success[:2] == (True, False) and result.peers[1] == 0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="completion_ids is required"):
        plan_teachers(REWARDS, 4, answers=ANSWERS)
    with pytest.raises(ValueError, match="completion_ids has 7 entries"):
        plan(ids=IDS[:7])
    with pytest.raises(ValueError, match="group_size"):
        plan_teachers(REWARDS, 3, IDS, answers=ANSWERS)
    with pytest.raises(ValueError, match="context must be one of"):
        plan(context="oracle")
