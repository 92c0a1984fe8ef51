"""The LM head applied a chunk of positions at a time: log p(o_t) of the sampled tokens without ever holding
[N, V] logits for more than one chunk.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def chunks_on_every_rank(n_positions: int, chunk_size: int) -> int:
    """Number of chunks to run, the same on every process: under DeepSpeed ZeRO-3 / FSDP each lm_head call
    gathers its weight collectively, so a process with fewer positions still makes as many calls."""
    n_chunks = -(-n_positions // chunk_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        count = torch.tensor([n_chunks], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            count = count.cuda()
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        n_chunks = int(count.item())
    return n_chunks


def logit_softcap(config) -> float | None:
    """The cap c of a model that soft-caps its logits, z = c tanh(z / c) (`final_logit_softcapping`, Gemma 2)."""
    return getattr(config.get_text_config(), "final_logit_softcapping", None)


def _soft_capped(lm_head, cap: float, hidden_nH: torch.Tensor) -> torch.Tensor:
    return torch.tanh(lm_head(hidden_nH).float() / cap) * cap


def output_head(model):
    """The model's logits as a function of its final hidden states: its `lm_head`, then z = c tanh(z / c)
    where the config soft-caps them, so every head here sees the logits the model's own forward gives."""
    lm_head, cap = model.get_output_embeddings(), logit_softcap(model.config)
    return lm_head if cap is None else functools.partial(_soft_capped, lm_head, float(cap))


def sampled_logps(logits_nV: torch.Tensor, token_ids_n: torch.Tensor) -> torch.Tensor:
    """log p(o_t) = z(o_t) - logsumexp(z) of each row's sampled token."""
    return torch.log_softmax(logits_nV, dim=-1).gather(-1, token_ids_n[:, None])[:, 0]


def _logp_chunk(hidden_nH, token_ids_n, lm_head, temperature):
    return sampled_logps(lm_head(hidden_nH).float() / temperature, token_ids_n)


def chunked_token_logps(hidden_NH, token_ids_N, lm_head, *, temperature=1.0, chunk_size=1024) -> torch.Tensor:
    """log p(o_t) = z(o_t) / temperature - logsumexp(z / temperature) at each position, z = lm_head(h);
    chunk by chunk, each chunk under activation checkpointing when gradients flow."""
    out = []
    for chunk in range(chunks_on_every_rank(hidden_NH.size(0), chunk_size)):
        sl = slice(chunk * chunk_size, (chunk + 1) * chunk_size)
        if torch.is_grad_enabled() and hidden_NH.requires_grad:
            out.append(
                checkpoint(
                    _logp_chunk, hidden_NH[sl], token_ids_N[sl], lm_head, temperature, use_reentrant=False
                )
            )
        else:
            out.append(_logp_chunk(hidden_NH[sl], token_ids_N[sl], lm_head, temperature))
    return torch.cat(out) if out else hidden_NH.new_zeros(0, dtype=torch.float32)
