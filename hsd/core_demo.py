"""`hsd core-demo`: the HSD core (`hsd.core`) on a small synthetic batch, no model needed (seconds, seeded).
Peers and teacher contexts for a few groups, a first divergence, Eq. 12 coverage, and the divergences.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from hsd.core import tau
from hsd.core.contexts import build_contexts
from hsd.core.distill import distill_terms
from hsd.core.losses import DIVERGENCE_KINDS, aggregate, token_divergence
from hsd.core.peers import PEER_RULES, group_outcomes, select_peers


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per group G (default 8)")


def _section(title: str) -> None:
    print(f"\n== {title}")


def _show_peers(rewards: list[float], group_size: int, seed: int) -> list[int | None]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(50, 400, (len(rewards),), generator=generator).tolist()
    logps = (-torch.rand(len(rewards), generator=generator)).tolist()
    _section(f"peers (flat index; '-' = none) for {len(rewards) // group_size} groups of G={group_size}")
    print(f"{'rewards':>15}: " + " ".join(f"{r:>3.0f}" for r in rewards))
    peers_by_rule = {}
    for rule in PEER_RULES:
        peers = select_peers(
            rewards,
            group_size,
            rule,
            generator=torch.Generator().manual_seed(seed),
            lengths=lengths,
            logps=logps,
        )
        peers_by_rule[rule] = peers
        print(f"{rule:>15}: " + " ".join(f"{'-' if p is None else p:>3}" for p in peers))
    print("outcomes:", group_outcomes(rewards, group_size))
    return peers_by_rule["uniform"]


def _show_contexts(rewards: list[float], group_size: int, peers: list[int | None]) -> None:
    _section("teacher contexts by kind (Eq. 9)")
    answers = [f"answer-{g}" for g in range(len(rewards) // group_size)]
    references = [f"worked solution {g}" for g in range(len(rewards) // group_size)]
    for mode, options in (("hsd", {}), ("hsd", {"fallback": False}), ("opsd", {}), ("peer", {})):
        contexts = build_contexts(
            rewards, group_size, peers, mode, answers=answers, references=references, **options
        )
        kinds = Counter(
            "no distillation" if c is None else c.kind + (" (fallback)" if c.fallback else "")
            for c in contexts
        )
        label = mode + ("" if not options else " (no fallback)")
        print(f"{label:>18}: " + ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items())))


def _show_divergence_point(generator: torch.Generator) -> None:
    _section("first divergence tau (Eq. 11) and where a peaked credit signal lands")
    peer = torch.randint(1000, (40,), generator=generator)
    failed = peer.clone()
    cut = int(torch.randint(5, 30, (1,), generator=generator))
    failed[cut:] = torch.randint(1000, (40 - cut,), generator=generator)
    failed[cut] = (peer[cut] + 1) % 1000  # make sure they differ at the cut
    point = tau.first_divergence(failed, peer)
    print(f"shared prefix of {cut} tokens -> tau = {point}")
    # a synthetic |A_t|: a peak at tau decaying over ~5 tokens, plus noise
    positions = torch.arange(len(failed), dtype=torch.float32)
    credit = torch.exp(-(positions - point).abs() / 5) + 0.05 * torch.rand(len(failed), generator=generator)
    offsets, means, _ = tau.credit_profile([credit], [point], window=4)
    print("profile around tau:", " ".join(f"{d:+d}:{m:.2f}" for d, m in zip(offsets, means)))
    print(
        "share of |A| within |t - tau| <= w:",
        {w: round(s, 2) for w, s in tau.mass_within([credit], [point]).items()},
    )


def _show_coverage() -> None:
    _section("coverage f(p, G) = (1-p)[1-(1-p)^(G-1)] (Eq. 12)")
    print(f"{'G':>4} {'p*':>6} {'f*':>6} {'f(0.5)':>7}")
    for G in (4, 8, 16, 32, 64):
        best_p, best_f = tau.optimal_success_rate(G), tau.optimal_coverage(G)
        print(f"{G:>4} {best_p:>6.3f} {best_f:>6.3f} {tau.coverage(0.5, G):>7.3f}")


def _show_losses(generator: torch.Generator) -> None:
    batch, length, hidden, vocab = 2, 6, 16, 1000
    _section(f"per-token divergences on random logits (B={batch}, T={length}, V={vocab})")
    weight_VH = torch.randn(vocab, hidden, generator=generator) / hidden**0.5
    teacher_BTH = torch.randn(batch, length, hidden, generator=generator)
    student_BTH = teacher_BTH + 0.5 * torch.randn(batch, length, hidden, generator=generator)
    token_ids_BT = torch.randint(vocab, (batch, length), generator=generator)
    mask_BT = torch.ones(batch, length)
    mask_BT[1, 4:] = 0
    keep_BT = mask_BT.bool()
    logits = (teacher_BTH @ weight_VH.T, student_BTH @ weight_VH.T)
    kept = (teacher_BTH[keep_BT], student_BTH[keep_BT], token_ids_BT[keep_BT])  # the engine's [N, ...]
    for kind in DIVERGENCE_KINDS:
        naive_BT = token_divergence(*logits, kind, topk=20, token_ids=token_ids_BT, mask=mask_BT)
        chunked_N = distill_terms(*kept, weight_VH, kind=kind, topk=20, chunk_size=4).divergence
        loss = aggregate(naive_BT, mask_BT, "sequence_mean")  # Eq. 10
        gap = float((naive_BT[keep_BT] - chunked_N).abs().max())
        print(f"{kind:>18}: loss (Eq. 10 mean) {float(loss):+.4f}   |chunked - naive| max {gap:.1e}")


def main(args: argparse.Namespace) -> int:
    if args.group_size < 2:
        raise SystemExit("hsd core-demo: --group-size must be at least 2")
    generator = torch.Generator().manual_seed(args.seed)
    # three groups: an unsolved one, a medium one, an easy one (success rates 0, 0.4, 0.9)
    rates = torch.tensor([0.0, 0.4, 0.9]).repeat_interleave(args.group_size)
    rewards = torch.bernoulli(rates, generator=generator).tolist()
    peers = _show_peers(rewards, args.group_size, args.seed)
    _show_contexts(rewards, args.group_size, peers)
    _show_divergence_point(generator)
    _show_coverage()
    with torch.no_grad():  # values only: no gradients needed
        _show_losses(generator)
    return 0
