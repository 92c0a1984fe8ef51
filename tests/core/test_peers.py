"""Peer selection: S_i = {j != i : R_j = 1} within the group, and how each rule picks from it."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hsd.core.peers import PEER_RULES, group_outcomes, select_peers

# two groups of 4: successes at 0 and 2 in the first, none in the second
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]

# chi-square critical values at p = 0.001 (standard table), by degrees of freedom
CHI2_CRITICAL_P001 = {3: 16.266, 4: 18.467}


def chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_first_takes_lowest_other_success_and_none_without_one():
    assert select_peers(REWARDS, 4, "first") == [2, 0, 0, 0, None, None, None, None]


def test_shortest_takes_fewest_tokens_with_ties_to_lowest_index():
    rewards = [1, 1, 1, 0]
    lengths = [30, 10, 10, 50]
    # 0 -> {1,2} tie at 10 -> 1; 1 -> {0,2} -> 2; 2 -> {0,1} -> 1; 3 -> {0,1,2} -> 1
    assert select_peers(rewards, 4, "shortest", lengths=lengths) == [1, 2, 1, 1]


def test_perplexity_rules_use_mean_logprob():
    rewards = [1, 1, 1, 0]
    logps = [-0.1, -2.0, -0.5, -0.01]  # ppl = exp(0.1), exp(2), exp(0.5): rollout 0 lowest, 1 highest
    assert select_peers(rewards, 4, "lowest_ppl", logps=logps) == [2, 0, 0, 0]
    assert select_peers(rewards, 4, "highest_ppl", logps=logps) == [1, 2, 1, 1]


def test_perplexity_ties_go_to_lowest_index():
    assert select_peers([1, 1, 1, 0], 4, "lowest_ppl", logps=[-1.0, -1.0, -1.0, 0.0]) == [1, 0, 0, 0]


def test_threshold_decides_success():
    rewards = [0.5, 0.2, 0.9, 0.0]
    assert select_peers(rewards, 4, "first", threshold=0.5) == [2, 0, 0, 0]
    assert select_peers(rewards, 4, "first", threshold=1.0) == [None] * 4


def test_tensor_rewards_are_accepted():
    assert select_peers(torch.tensor(REWARDS), 4, "first") == select_peers(REWARDS, 4, "first")


def test_a_lone_success_has_no_peer_but_its_group_sees_it():
    for rule in PEER_RULES:
        peers = select_peers([0, 0, 1, 0], 4, rule, lengths=[1] * 4, logps=[0.0] * 4)
        assert peers == [2, 2, None, 2], rule


def test_uniform_is_reproducible_with_a_seeded_generator():
    rewards = [1, 0, 1, 1, 0, 1, 1, 0] * 8
    first = select_peers(rewards, 8, generator=torch.Generator().manual_seed(7))
    again = select_peers(rewards, 8, generator=torch.Generator().manual_seed(7))
    assert first == again


def test_uniform_without_generator_follows_torch_manual_seed():
    rewards = [1, 0, 1, 1, 0, 1, 1, 0] * 8
    torch.manual_seed(3)
    first = select_peers(rewards, 8)
    torch.manual_seed(3)
    assert select_peers(rewards, 8) == first


def _peer_counts(rule: str, rollout_in_group: int, n_groups: int = 3000) -> list[int]:
    # groups of 6: rollout 0 fails, 1..5 succeed
    rewards = [0, 1, 1, 1, 1, 1] * n_groups
    peers = select_peers(rewards, 6, rule, generator=torch.Generator().manual_seed(1234))
    chosen = Counter(peers[g * 6 + rollout_in_group] - g * 6 for g in range(n_groups))
    candidates = [j for j in range(1, 6) if j != rollout_in_group]
    assert set(chosen) <= set(candidates)
    return [chosen[j] for j in candidates]


@pytest.mark.parametrize("rule", ["uniform", "uniform_shared"])
def test_uniform_rules_pass_a_chi_square_test_for_a_failure(rule):
    counts = _peer_counts(rule, rollout_in_group=0)
    assert chi_square(counts) < CHI2_CRITICAL_P001[len(counts) - 1], counts


def test_uniform_rule_passes_a_chi_square_test_for_a_success():
    counts = _peer_counts("uniform", rollout_in_group=3)  # candidates 1, 2, 4, 5
    assert chi_square(counts) < CHI2_CRITICAL_P001[len(counts) - 1], counts


def test_chi_square_test_rejects_a_non_uniform_rule():
    counts = _peer_counts("first", rollout_in_group=0)
    assert chi_square(counts) > CHI2_CRITICAL_P001[len(counts) - 1]


def test_uniform_shared_gives_one_peer_to_the_whole_group():
    rewards = [0, 1, 1, 0, 1, 0]
    for seed in range(20):
        peers = select_peers(rewards, 6, "uniform_shared", generator=torch.Generator().manual_seed(seed))
        shared = Counter(peers).most_common(1)[0][0]
        assert shared in (1, 2, 4)
        assert all(peers[i] == shared for i in range(6) if i != shared)
        assert peers[shared] in (1, 2, 4) and peers[shared] != shared


def test_uniform_shared_lone_success_gets_none():
    assert select_peers([0, 1, 0, 0], 4, "uniform_shared") == [1, None, 1, 1]


@settings(max_examples=200, deadline=None)
@given(
    group_size=st.integers(1, 6),
    data=st.data(),
    rule=st.sampled_from(PEER_RULES),
    seed=st.integers(0, 2**31 - 1),
)
def test_peer_is_another_success_of_the_group_or_none_only_without_one(group_size, data, rule, seed):
    n_groups = data.draw(st.integers(0, 5))
    rewards = data.draw(
        st.lists(st.sampled_from([0.0, 1.0]), min_size=n_groups * group_size, max_size=n_groups * group_size)
    )
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=len(rewards), max_size=len(rewards)))
    logps = data.draw(st.lists(st.floats(-5, 0), min_size=len(rewards), max_size=len(rewards)))
    peers = select_peers(
        rewards, group_size, rule, generator=torch.Generator().manual_seed(seed), lengths=lengths, logps=logps
    )
    assert len(peers) == len(rewards)
    for i, peer in enumerate(peers):
        group = range(i // group_size * group_size, (i // group_size + 1) * group_size)
        others = [j for j in group if j != i and rewards[j] >= 1.0]
        if peer is None:
            assert not others
        else:
            assert peer != i and peer in others


def test_group_outcomes_counts():
    # group 0: two successes; group 1: none; group 2: all; group 3: one success
    rewards = [1, 0, 1, 0] + [0, 0, 0, 0] + [1, 1, 1, 1] + [0, 0, 1, 0]
    assert group_outcomes(rewards, 4) == {
        "rollouts": 16,
        "successes": 7,
        "groups": 4,
        "groups_no_success": 1,
        "groups_all_success": 1,
        "rollouts_with_peer": 4 + 4 + 3,  # the lone success of group 3 has no peer
        "failures_with_peer": 2 + 3,
    }


def test_group_outcomes_agree_with_select_peers():
    rewards = torch.bernoulli(torch.full((96,), 0.3), generator=torch.Generator().manual_seed(0))
    peers = select_peers(rewards, 8, "first")
    outcomes = group_outcomes(rewards, 8)
    assert outcomes["rollouts_with_peer"] == sum(p is not None for p in peers)
    assert outcomes["failures_with_peer"] == sum(
        p is not None and r < 1 for p, r in zip(peers, rewards.tolist())
    )


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: select_peers([1, 0, 1], 2), "group_size"),
        (lambda: select_peers([1, 0], 0), "group_size"),
        (lambda: select_peers([1, 0], 1.5), "group_size"),
        (lambda: select_peers([1, 0], 2, "random"), "rule"),
        (lambda: select_peers([1, 0], 2, "shortest"), "lengths"),
        (lambda: select_peers([1, 0], 2, "shortest", lengths=[3]), "lengths"),
        (lambda: select_peers([1, 0], 2, "lowest_ppl"), "logps"),
        (lambda: select_peers([1, 0], 2, "highest_ppl", logps=[0.0, float("nan")]), "logps"),
        (lambda: select_peers(torch.ones(2, 2), 2), "rewards"),
        (lambda: select_peers(["a", "b"], 2), "rewards"),
        (lambda: group_outcomes([1, 0, 1], 2), "group_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=named):
        call()
