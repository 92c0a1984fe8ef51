"""How token rows sit in a batch: rows of different lengths padded into one tensor with its attention mask,
and the positions of a [prompt ; completion] row whose outputs predict the completion's tokens.

TRL has `trl.trainer.utils.pad` for the first; importing it costs every command (`hsd eval`, `hsd analyze`)
several seconds of TRL's import, so the rows are padded here, to the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def padded(
    rows: Sequence[Sequence[int]], *, left: bool, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one [n, longest] batch and its attention mask, padded on the left or the right."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[r, span] = torch.tensor(list(row), dtype=torch.long)
        mask[r, span] = 1
    return ids, mask


def predicting_completion(values_BS: torch.Tensor, T: int) -> torch.Tensor:
    """The outputs at the T positions that predict a row's last T tokens (its completion), [B, T, ...]:
    position t's output is the distribution of token t + 1, so the slice ends one before the last."""
    return values_BS[:, -T - 1 : -1]
