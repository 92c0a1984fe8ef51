"""Cost of the output head alone, forward + backward, on the same N positions: GRPO's log-prob head
(TRL's fused kernel) against HSD's full-vocabulary KL head, each variant timed in interleaved rounds.

    python benchmarks/head_cost.py [--positions 2048] [--hidden 128] [--vocab 49152] [--repeats 5]

This isolates what HSD adds per position over GRPO (a second [N, H] x [H, V] product for the teacher and
the divergence) from everything else in a step, e.g. TRL's CPU path projecting the prompt positions too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from trl.kernels import ChunkedLogProbFunction

from hsd.core.distill import distill_terms

TRL_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE


def variants(student, teacher, ids, head):
    """name -> a function running one forward + backward of that head."""

    def trl_logprob(outputs):
        def run():
            logp, entropy, *_ = ChunkedLogProbFunction.apply(
                student, head.weight, None, ids, 1.0, TRL_VOCAB_CHUNK, None, 1.0, outputs
            )
            logp.sum().backward()

        return run

    def hsd_kl(**kwargs):
        def run():
            div = distill_terms(teacher, student, ids, head, **kwargs).divergence
            div.sum().backward()

        return run

    return {
        "grpo: TRL log-prob head (log-probs + entropy, as GRPOTrainer calls it)": trl_logprob(
            ("log_probs", "entropy")
        ),
        "grpo: TRL log-prob head (log-probs only)": trl_logprob(("log_probs",)),
        "hsd: KL head, logit gradient kept from the forward": hsd_kl(keep_grad_bytes=float("inf")),
        "hsd: KL head, logits recomputed in the backward": hsd_kl(keep_grad_bytes=0),
        "hsd: autograd through checkpointed chunks (plain path)": hsd_kl(analytic=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2048, help="N: completion tokens in the batch")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False).to(args.device, dtype)
    student = torch.randn(args.positions, args.hidden, device=args.device, dtype=dtype, requires_grad=True)
    teacher = torch.randn(args.positions, args.hidden, device=args.device, dtype=dtype)
    ids = torch.randint(0, args.vocab, (args.positions,), device=args.device)
    runs = variants(student, teacher, ids, head)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        names = list(runs)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            head.zero_grad()
            student.grad = None
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            runs[name]()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["grpo: TRL log-prob head (log-probs + entropy, as GRPOTrainer calls it)"]
    for name, seconds in medians.items():
        print(f"{seconds:8.3f} s  {seconds / base:5.2f}x  {name}")
    print(json.dumps({"args": vars(args), "median_s": medians}))


if __name__ == "__main__":
    main()
