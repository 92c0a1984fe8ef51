"""Positions relative to tau: the distillation mask and the diagnostic regions, on a constructed batch."""

from __future__ import annotations

import pytest
import torch

from hsd.core.positions import REGIONS, distill_position_mask, rollout_regions

# rows: a failure with tau = 2, a failure with tau = 0, a success (-1), a failure without a peer (-1)
TAUS = torch.tensor([2, 0, -1, -1])
SUCCESS = torch.tensor([False, False, True, False])


def _rows(mask):
    return [[int(x) for x in row] for row in mask]


def test_distill_position_mask_by_mode():
    assert _rows(distill_position_mask(TAUS, 5, "all")) == [[1] * 5] * 4
    assert _rows(distill_position_mask(TAUS, 5, "from_tau")) == [
        [0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0] * 5,
        [0] * 5,
    ]
    assert _rows(distill_position_mask(TAUS, 5, "tau_window", window=1)) == [
        [0, 1, 1, 1, 0],
        [1, 1, 0, 0, 0],
        [0] * 5,
        [0] * 5,
    ]
    assert _rows(distill_position_mask(TAUS, 5, "tau_window", window=0))[0] == [0, 0, 1, 0, 0]


def test_rollout_regions_are_disjoint_and_cover_every_position():
    regions = rollout_regions(TAUS, SUCCESS, 5)
    assert [name for name, _ in regions.items()] == list(REGIONS)
    total = sum(mask.int() for _, mask in regions.items())
    assert torch.equal(total, torch.ones(4, 5, dtype=torch.int))
    assert _rows(regions.failed_before_tau)[0] == [1, 1, 0, 0, 0]
    assert _rows(regions.failed_at_tau)[:2] == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert _rows(regions.failed_after_tau)[1] == [0, 1, 1, 1, 1]
    assert _rows(regions.success)[2] == [1] * 5 and _rows(regions.failed_no_peer)[3] == [1] * 5


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="positions"):
        distill_position_mask(TAUS, 5, "before_tau")
    with pytest.raises(ValueError, match="window"):
        distill_position_mask(TAUS, 5, "tau_window", window=-1)
    with pytest.raises(ValueError, match="success_B"):
        rollout_regions(TAUS, SUCCESS[:2], 5)
