"""Peak memory and time of the chunked engine versus naive full-vocabulary KL(teacher || student), forward +
backward.
Run: `python benchmarks/kl_memory.py` (defaults: V = 151,936 as in Qwen3, 2048 positions, hidden 1024).

Method. Each variant runs in a fresh Python subprocess, so that neither sees the other's allocator state.
The subprocess builds the inputs (teacher and student hidden states [B, T, H], lm_head weight [V, H]),
reads its current resident set size (RSS, /proc/self/statm), runs one forward + backward of the summed
per-token divergence, and reads its peak RSS (getrusage ru_maxrss). The peak memory reported is the
difference: every byte the computation itself needed at its high-water mark (logits, softmaxes,
gradients including the [V, H] weight gradient), not the inputs or the interpreter. Large tensors are
allocated with mmap and returned to the system when freed, so RSS tracks tensor memory closely on CPU.
Time is the wall time of that same forward + backward (the fastest of `--repeats` runs, all after the
measured one).

  naive:      token_divergence(th @ W.T, sh @ W.T): both [B, T, V] logits and their softmaxes at once.
  chunked:    distill_terms(th, sh, ids, W, chunk_size=..., analytic=False): [chunk, V] at a time,
              recomputed in the backward (autograd, activation checkpointing per chunk).
  worked_out: distill_terms(th, sh, ids, W, chunk_size=...): [chunk, V] at a time, the gradient of Eq. 13
              worked out (the route training takes), logits recomputed in the backward.

Prints one JSON line with the measurements and the ratios of each chunked variant over naive.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("naive", "chunked", "worked_out")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def run_variant(args: argparse.Namespace) -> dict:
    """One forward + backward in this process; peak memory above the inputs, and wall time."""
    import torch

    from hsd.core.distill import distill_terms
    from hsd.core.losses import token_divergence

    torch.manual_seed(args.seed)
    batch = args.positions // args.seq_len
    teacher_hidden = torch.randn(batch, args.seq_len, args.hidden)
    student_hidden = torch.randn(batch, args.seq_len, args.hidden).requires_grad_()
    weight = torch.randn(args.vocab, args.hidden).mul_(args.hidden**-0.5).requires_grad_()
    token_ids = torch.randint(args.vocab, (args.positions,))

    def step() -> float:
        if args.variant == "naive":
            values = token_divergence(teacher_hidden @ weight.T, student_hidden @ weight.T)
        else:
            values = distill_terms(
                teacher_hidden.reshape(-1, args.hidden),
                student_hidden.reshape(-1, args.hidden),
                token_ids,
                weight,
                chunk_size=args.chunk_size,
                analytic=args.variant == "worked_out",
            ).divergence
        loss = values.mean()
        loss.backward()
        return float(loss)

    baseline = _rss_bytes()
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes() - baseline
    for _ in range(args.repeats - 1):
        weight.grad = student_hidden.grad = None
        start = time.perf_counter()
        step()
        seconds = min(seconds, time.perf_counter() - start)
    return {
        "variant": args.variant,
        "peak_bytes": peak,
        "seconds": seconds,
        "loss": loss,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V (Qwen3: 151,936)")
    parser.add_argument("--positions", type=int, default=2048, help="B * T, the number of token positions")
    parser.add_argument("--seq-len", type=int, default=1024, help="T; B = positions / T")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    parser.add_argument("--chunk-size", type=int, default=256, help="positions per chunk (chunked variant)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (the fastest counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.positions % args.seq_len:
        parser.error("--positions must be a multiple of --seq-len")
    if args.variant:  # child process: measure one variant
        print(json.dumps(run_variant(args)))
        return 0

    load_before = os.getloadavg()[0]  # other work on the machine skews the times, not the memory
    results = {}
    for variant in VARIANTS:
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    naive, gib = results["naive"], 1024**3
    report = {
        "vocab": args.vocab,
        "positions": args.positions,
        "hidden": args.hidden,
        "chunk_size": args.chunk_size,
        "torch_threads": naive["threads"],
        "load_average_before": round(load_before, 2),
    }
    for name, result in results.items():
        report[f"{name}_peak_gib"] = round(result["peak_bytes"] / gib, 3)
        report[f"{name}_seconds"] = round(result["seconds"], 2)
    for name in VARIANTS[1:]:
        result = results[name]
        report[f"{name}_loss_abs_difference"] = abs(naive["loss"] - result["loss"])
        report[f"peak_memory_ratio_{name}_over_naive"] = round(result["peak_bytes"] / naive["peak_bytes"], 3)
        report[f"time_ratio_{name}_over_naive"] = round(result["seconds"] / naive["seconds"], 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
