"""The distillation head alone, forward + backward: hsd's engine against TRL's and Liger's fused heads.

    python benchmarks/gpu/head.py [--positions 32768] [--hidden 2048] [--vocab 151936] [--device cuda]
                                  [--dtype bfloat16] [--repeats 3] [--out head.json]

Every variant computes the per-position KL(teacher || student) of Eq. 13 from hidden states and one shared
output head (the teacher's hidden states carry no gradient, as in HSD), loss = the mean over positions:

- `hsd`: `hsd.core.distill.distill_terms` (Eq. 13 on a linear head: the worked-out gradient; the [N, V] logit gradient is
  kept from the forward only when it fits in `distill_grad_cache_mb`, the trainer's default 1024 MiB).
- `hsd_keep`: the same with the logit gradient always kept ([N, V] in the compute dtype).
- `trl`: `trl.kernels.chunked_divergence.ChunkedDivergenceFunction` with beta = 0, which TRL defines as
  the forward KL(teacher || student) (its Triton kernels on CUDA, torch tiles elsewhere).
- `liger`: `liger_kernel`'s `LigerFusedLinearJSDFunction` with jsd_beta = 0, which Liger defines as the
  forward KL(P || Q) with P the teacher's and Q the student's distribution; its loss is the sum over
  positions divided by their number, the same mean. CUDA only (Triton); it computes the gradients in
  its forward.

Variants run in interleaved rounds (round 0 warms up); the JSON gives each one's median time, peak
memory above what was allocated before it ran, and the largest absolute difference of the loss, the
per-position divergence and both gradients from `hsd` in the same dtype and from `hsd` in float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hsd.bench.meter import MemoryMeter, synchronize
from hsd.core.distill import distill_terms

DEFAULT_GRAD_CACHE_BYTES = 1024 * 2**20  # HSDConfig.distill_grad_cache_mb's default


def liger_head():
    """Liger's fused linear JSD function, or None with the reason it cannot run here."""
    try:
        from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction
    except ImportError as error:
        return None, f"liger_kernel is not importable: {error}"
    return LigerFusedLinearJSDFunction, None


def variants(device: str) -> tuple[dict, dict]:
    """name -> fn(student_NH, teacher_NH, ids_N, head) -> (loss, per-position divergence or None); and
    name -> why a variant is left out."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    def hsd(keep_grad_bytes):
        def run(student, teacher, ids, head):
            divergence = distill_terms(
                teacher, student, ids, head, keep_grad_bytes=keep_grad_bytes
            ).divergence
            return divergence.mean(), divergence

        return run

    def trl(student, teacher, ids, head):
        divergence, _ = ChunkedDivergenceFunction.apply(
            student, head.weight, head.bias, teacher, head.weight.detach(), None, 0.0
        )
        return divergence.mean(), divergence

    runs = {"hsd": hsd(DEFAULT_GRAD_CACHE_BYTES), "hsd_keep": hsd(float("inf")), "trl": trl}
    skipped = {}
    liger, why = liger_head()
    if liger is not None and not device.startswith("cuda"):
        liger, why = None, "Liger's kernels are Triton kernels: CUDA only"
    if liger is None:
        skipped["liger"] = why
    else:

        def liger_kl(student, teacher, ids, head):
            return liger.apply(student, head.weight, teacher, head.weight.detach(), None, 0.0), None

        runs["liger"] = liger_kl
    return runs, skipped


def inputs(positions: int, hidden: int, vocab: int, device: str, dtype, seed: int = 0):
    """Student / teacher hidden states and a head at a trained model's scale: RMS-normed hidden states
    (unit variance), head weights ~ N(0, 0.02^2) as Qwen3 initialises them, teacher = student + noise."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    student = torch.randn(positions, hidden, generator=generator)
    teacher = student + 0.5 * torch.randn(positions, hidden, generator=generator)
    weight = 0.02 * torch.randn(vocab, hidden, generator=generator)
    ids = torch.randint(0, vocab, (positions,), generator=generator)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    return student.to(device, dtype), teacher.to(device, dtype), ids.to(device), head


def one_run(fn, student, teacher, ids, head, device: str) -> dict:
    """One forward + backward: seconds, peak memory growth, loss, divergence, gradients (on the CPU)."""
    student = student.detach().requires_grad_()
    head.weight.grad = None
    meter = MemoryMeter(device)
    synchronize(device)
    meter.start()
    start = time.perf_counter()
    loss, divergence = fn(student, teacher, ids, head)
    loss.backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = meter.stop()
    return dict(
        seconds=seconds,
        peak_bytes=peak,
        loss=loss.detach().float().cpu(),
        divergence=None if divergence is None else divergence.detach().float().cpu(),
        grad_hidden=student.grad.float().cpu(),
        grad_weight=head.weight.grad.float().cpu(),
    )


def max_abs_diff(a: dict, b: dict) -> dict:
    """Largest absolute difference of each output present in both runs."""
    out = {}
    for key in ("loss", "divergence", "grad_hidden", "grad_weight"):
        if a[key] is not None and b[key] is not None:
            out[key] = float((a[key] - b[key]).abs().max())
    return out


def measure(args) -> dict:
    dtype = getattr(torch, args.dtype)
    runs, skipped = variants(args.device)
    student, teacher, ids, head = inputs(args.positions, args.hidden, args.vocab, args.device, dtype)
    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, int] = {name: 0 for name in runs}
    last: dict[str, dict] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up (Triton compiles there)
        names = list(runs)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in names:
            result = one_run(runs[name], student, teacher, ids, head, args.device)
            peaks[name] = max(peaks[name], result["peak_bytes"])
            if round_:
                times[name].append(result["seconds"])
            last[name] = result
    head32 = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=args.device)
    with torch.no_grad():
        head32.weight.copy_(head.weight.float())
    reference = one_run(runs["hsd"], student.float(), teacher.float(), ids, head32, args.device)
    results = {
        name: {
            "median_s": statistics.median(times[name]),
            "times_s": times[name],
            "peak_memory_bytes": peaks[name],
            "loss": float(last[name]["loss"]),
            "max_abs_diff_vs_hsd": max_abs_diff(last[name], last["hsd"]),
            "max_abs_diff_vs_float32": max_abs_diff(last[name], reference),
        }
        for name in runs
    }
    base = results["hsd"]["median_s"]
    for result in results.values():
        result["time_over_hsd"] = round(result["median_s"] / base, 4)
    return {
        "command": " ".join(["python", *sys.argv]),
        "setup": {**vars(args), "loss": "mean over positions of KL(teacher || student)"},
        "reference": {
            "loss": float(reference["loss"]),
            "grad_weight_max_abs": float(reference["grad_weight"].abs().max()),
        },
        "environment": {
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "variants": results,
        "skipped": skipped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=32_768, help="N: completion positions")
    parser.add_argument("--hidden", type=int, default=2048, help="H (Qwen3-1.7B: 2048)")
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen3: 151,936)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--out", help="write the JSON report here (it is printed either way)")
    args = parser.parse_args()
    report = measure(args)
    for name, result in report["variants"].items():
        print(
            f"{name:<9} {result['median_s']:8.4f} s  {result['time_over_hsd']:5.2f}x  "
            f"{result['peak_memory_bytes'] / 2**20:9.1f} MiB  max|diff| vs hsd {result['max_abs_diff_vs_hsd']}"
        )
    for name, why in report["skipped"].items():
        print(f"{name:<9} skipped: {why}")
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
