"""The teacher's prefix (prompt + privileged context) run once per distinct prefix, its KV cache shared.

Rollouts whose teacher prompts are identical (same question and same peer, or the answer-only fallback)
share one prefix forward; each rollout then runs only its own completion on top of the shared keys and
values, which every attention layer gathers for its rows as it needs them (never stored per rollout).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from hsd.core.batch import predicting_completion


def distinct_prefixes(prompt_ids_RP: torch.Tensor, prompt_mask_RP: torch.Tensor):
    """The distinct rows of a left-padded prompt batch: (ids [U, P], mask [U, P], prefix of each row [R])."""
    keyed_RK = torch.cat([prompt_ids_RP, prompt_mask_RP.to(prompt_ids_RP.dtype)], dim=1)
    unique_UK, prefix_of_row_R = torch.unique(keyed_RK, dim=0, return_inverse=True)
    P = prompt_ids_RP.size(1)
    return unique_UK[:, :P], unique_UK[:, P:].to(prompt_mask_RP.dtype), prefix_of_row_R


class SharedPrefixLayer(DynamicLayer):
    """One layer's cache: the distinct prefixes' keys and values [U, heads, P, dim] and each row's prefix.

    `update` returns [prefix keys of each row ; the new keys] for attention and stores nothing, so the
    cache stays at the distinct prefixes' size whatever the number of rows and completion tokens.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, prefix_of_row: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.prefix_of_row = keys, values, prefix_of_row

    def update(self, key_states, value_states, *args, **kwargs):
        keys = torch.cat([self.keys.index_select(0, self.prefix_of_row), key_states], dim=-2)
        values = torch.cat([self.values.index_select(0, self.prefix_of_row), value_states], dim=-2)
        return keys, values


def shared_prefix_cache(prefix_cache: Cache, prefix_of_row: torch.Tensor) -> Cache:
    """A cache that serves rows R from the prefix cache of U distinct prefixes (no per-row copy kept)."""
    layers = []
    for layer in prefix_cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(
                f"a shared teacher prefix needs full-attention cache layers, got {type(layer).__name__}"
            )
        layers.append(SharedPrefixLayer(layer.keys, layer.values, prefix_of_row))
    return Cache(layers=layers)


@contextmanager
def checkpointing_off(model: torch.nn.Module):
    """Activation checkpointing off for a no-grad pass: HF drops the KV cache of checkpointed layers."""
    switched = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in switched:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in switched:
            module.gradient_checkpointing = True


def shared_prefix_refusal(config) -> str | None:
    """Why a shared prefix cannot serve this model family (None when it can): every layer must cache full
    attention (a sliding-window layer keeps only the window, not the whole prefix)."""
    from transformers import DynamicCache

    layers = DynamicCache(config=config).layers
    other = [i for i, layer in enumerate(layers) if type(layer) is not DynamicLayer]
    if not other:
        return None
    kinds = sorted({type(layers[i]).__name__ for i in other})
    return f"layers {other} of {len(layers)} cache {'/'.join(kinds)}, not full attention"


@torch.no_grad()
def prefix_shared_hidden(
    backbone: torch.nn.Module,
    prefix_ids_UP: torch.Tensor,
    prefix_mask_UP: torch.Tensor,
    prefix_of_row_R: torch.Tensor,
    completion_ids_RT: torch.Tensor,
    completion_mask_RT: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states [R, T, H] at the positions that predict each row's T completion tokens.

    Equal to running `backbone` on [prefix of row r ; completion r] for every row (same positions, same
    mask), but each distinct prefix is computed once: the prefix pass gives the hidden state that predicts
    the first completion token and the keys / values the completion pass attends to. A model that cannot
    share a prefix (`shared_prefix_refusal`) runs the whole rows instead.
    """
    if shared_prefix_refusal(backbone.config) is not None:
        T = completion_ids_RT.size(1)
        ids = torch.cat([prefix_ids_UP.index_select(0, prefix_of_row_R), completion_ids_RT], dim=1)
        mask = torch.cat([prefix_mask_UP.index_select(0, prefix_of_row_R), completion_mask_RT], dim=1)
        hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return predicting_completion(hidden, T)
    with checkpointing_off(backbone):
        prefix = backbone(input_ids=prefix_ids_UP, attention_mask=prefix_mask_UP, use_cache=True)
        last_RH = prefix.last_hidden_state[:, -1].index_select(0, prefix_of_row_R)
        if completion_ids_RT.size(1) == 1:
            return last_RH[:, None]
        cache = shared_prefix_cache(prefix.past_key_values, prefix_of_row_R)
        del prefix
        mask = torch.cat([prefix_mask_UP.index_select(0, prefix_of_row_R), completion_mask_RT[:, :-1]], dim=1)
        completion = backbone(
            input_ids=completion_ids_RT[:, :-1], attention_mask=mask, past_key_values=cache, use_cache=True
        )
    return torch.cat([last_RH[:, None], completion.last_hidden_state], dim=1)
