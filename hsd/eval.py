"""`hsd eval`: pass@1 as the mean over k samples (avg@k), the unbiased pass@k estimator, or greedy accuracy.
Each problem's record is appended to a JSONL file once scored, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hsd.core.checks import is_int
from hsd.core.peers import SUCCESS_THRESHOLD
from hsd.errors import UserError
from hsd.sampling import (
    SamplingSettings,
    VerifiedGroups,
    add_sampling_arguments,
    eos_ids,
    problems_and_model,
    progress_bar,
    sample_and_verify,
)
from hsd.tasks.problem import Problem
from hsd.tasks.rewards import VERIFIERS, Verifier, verify_problem

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
# settings that change what a record holds: a resumed run must use the same ones
RESUME_KEYS = ("k", "greedy", "temperature", "top_p", "max_new_tokens", "seed")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), from n samples of which c are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i<k} (n-c-i) / (n-i): no huge binomials
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def k_values(k: int) -> list[int]:
    """The k' reported for pass@k': powers of two up to k, and k itself."""
    values = [2**e for e in range(k.bit_length()) if 2**e <= k]
    return values if values[-1] == k else [*values, k]


def _read_records(path: Path) -> dict[str, dict]:
    """Records already written, by problem id; a torn last line (a killed run) is dropped from the file."""
    if not path.exists():
        return {}
    records, good_bytes = {}, 0
    with open(path, "rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(
                f"{path}: line {number} is not valid JSON; remove it or use a fresh --out"
            ) from None
        if not isinstance(record, dict) or "id" not in record or "rewards" not in record:
            raise UserError(f"{path}: line {number} is not an eval record (needs 'id' and 'rewards')")
        records[str(record["id"])] = record
        good_bytes += len(raw)
    if good_bytes < sum(len(raw) for raw in lines):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return records


def _check_resume(summary_path: Path, settings: dict) -> None:
    if not summary_path.exists():
        return
    previous = json.loads(summary_path.read_text()).get("settings", {})
    for key in RESUME_KEYS:
        if key in previous and previous[key] != settings[key]:
            raise UserError(
                f"{summary_path}: this directory holds a run with {key}={previous[key]!r}, not {settings[key]!r}; "
                "use the same settings to resume or a fresh --out"
            )


def summarize(problems: Sequence[Problem], records: dict[str, dict], settings: dict) -> dict:
    """The summary over the problems that have a record: avg@k, pass@k', greedy accuracy, reasons, lengths."""
    done = [records[p.id] for p in problems if p.id in records]
    rewards = [[float(r) for r in rec["rewards"]] for rec in done]
    n_samples = sum(len(r) for r in rewards)
    correct = [sum(r >= settings["success_threshold"] for r in rs) for rs in rewards]  # solved samples
    mean = sum(correct) / n_samples if n_samples else None
    mean_reward = sum(map(sum, rewards)) / n_samples if n_samples else None  # with any partial credit
    lengths = [n for rec in done for n in rec.get("num_tokens", [])]
    truncated = [t for rec in done for t in rec.get("truncated", [])]
    pass_k = None
    if not settings["greedy"] and done:
        pass_k = {
            str(kk): sum(pass_at_k(len(rs), c, kk) for rs, c in zip(rewards, correct)) / len(done)
            for kk in k_values(settings["k"])
        }
    return {
        "settings": settings,
        "n_problems": len(problems),
        "n_done": len(done),
        "complete": len(done) == len(problems),
        "n_samples": n_samples,
        "pass@1": None if settings["greedy"] else mean,  # avg@k: the share of all k samples solved
        "pass@k": pass_k,
        "greedy": mean if settings["greedy"] else None,
        "mean_reward": mean_reward,
        "reasons": dict(sorted(Counter(r for rec in done for r in rec["reasons"]).items())),
        "mean_completion_tokens": sum(lengths) / len(lengths) if lengths else None,
        "truncated_share": sum(truncated) / len(truncated) if truncated else None,
    }


def _eval_settings(
    k: int, sampling: SamplingSettings, seed: int, batch_size: int, info, success_threshold
) -> dict:
    """What summary.json records of the run; `info` (e.g. model and dataset names) comes first."""
    return {
        **(info or {}),
        "k": k,
        "greedy": sampling.greedy,
        "temperature": None if sampling.greedy else sampling.temperature,
        "top_p": None if sampling.greedy else sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": seed,
        "batch_size": batch_size,
        "success_threshold": success_threshold,
    }


def _check_unique_ids(problems: Sequence[Problem]) -> None:
    duplicate = next((i for i, n in Counter(p.id for p in problems).items() if n > 1), None)
    if duplicate is not None:
        raise UserError(f"problems: id {duplicate!r} appears more than once; ids must be unique to resume")


class _EvalFiles:
    """The run's records and its files (samples.jsonl and summary.json, or none without `out_dir`): the
    records read back on resume, each new one appended and synced, the summary replaced atomically."""

    def __init__(self, out_dir: str | Path | None, problems: Sequence[Problem], settings: dict):
        self.problems, self.settings, self.started = problems, settings, time.perf_counter()
        self.samples = self.summary_path = None
        self.records: dict[str, dict] = {}
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.samples, self.summary_path = out / SAMPLES_FILE, out / SUMMARY_FILE
            _check_resume(self.summary_path, settings)
            self.records = _read_records(self.samples)
        self.todo = [(i, p) for i, p in enumerate(problems) if p.id not in self.records]
        self.resumed, self.computed = len(problems) - len(self.todo), 0

    def append(self, records: list[dict]) -> None:
        """Keep the records of newly scored problems; with files, append them and rewrite the summary."""
        self.records.update((record["id"], record) for record in records)
        self.computed += len(records)
        if self.samples is not None:
            with open(self.samples, "a") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in records)
                handle.flush()
                os.fsync(handle.fileno())
            self.write_summary()

    def write_summary(self) -> dict:
        """The summary so far (`summarize` and how the run went), written to summary.json with files."""
        summary = summarize(self.problems, self.records, self.settings)
        summary.update(
            resumed_problems=self.resumed,
            computed_problems=self.computed,
            wall_s=round(time.perf_counter() - self.started, 2),
        )
        if self.summary_path is not None:
            tmp = self.summary_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, self.summary_path)
        return summary


def _records(problems: Sequence[Problem], groups: VerifiedGroups, stop: set[int]) -> list[dict]:
    """One samples.jsonl record per problem: rewards, reasons, completions, lengths, truncation."""
    return [
        {
            "id": problem.id,
            "answer": problem.answer,
            "rewards": [v.reward for v in verdicts],
            "reasons": [v.reason for v in verdicts],
            "completions": texts,
            "num_tokens": [len(row) for row in rows],
            "truncated": [not row or row[-1] not in stop for row in rows],
        }
        for problem, (rows, texts, verdicts) in zip(problems, groups.per_problem())
    ]


def evaluate(
    model,
    tokenizer,
    problems: Sequence[Problem],
    *,
    k: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    max_new_tokens: int = 512,
    batch_size: int = 32,
    seed: int = 0,
    out_dir: str | Path | None = None,
    verifier: Verifier = verify_problem,
    verify_workers: int = 2,
    success_threshold: float = SUCCESS_THRESHOLD,
    progress: bool = True,
    info: dict | None = None,
) -> dict:
    """Sample k completions per problem (or one greedy one), verify them, and return the summary dict.

    A sample is solved when its reward >= `success_threshold`. With `out_dir`, each problem's record is
    appended to samples.jsonl as soon as it is scored and summary.json is rewritten after every chunk;
    problems already in samples.jsonl are not recomputed. `info` (e.g. model and dataset names) is stored
    with the settings.
    """
    k = 1 if greedy else k
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    sampling = SamplingSettings(temperature, top_p, max_new_tokens, greedy)
    _check_unique_ids(problems)
    settings = _eval_settings(k, sampling, seed, batch_size, info, success_threshold)
    files = _EvalFiles(out_dir, problems, settings)
    stop = set(eos_ids(model, tokenizer))
    chunk = max(1, (4 * batch_size) // k)  # problems per chunk: a few generation batches, then a write
    bar = progress_bar(len(files.todo) * k, "eval", progress)
    if files.resumed and progress:
        bar.write(f"eval: resuming, {files.resumed} of {len(problems)} problems already scored")
    try:
        for c in range(0, len(files.todo), chunk):
            part = [p for _, p in files.todo[c : c + chunk]]
            groups = sample_and_verify(model, tokenizer, part, verifier, n=k, settings=sampling,
                                       batch_size=batch_size, seed=seed + files.todo[c][0] * k,
                                       verify_workers=verify_workers, progress=bar)  # fmt: skip
            files.append(_records(part, groups, stop))
    finally:
        bar.close()
    return files.write_summary()


def format_summary(summary: dict) -> str:
    """A few human-readable lines."""
    s = summary["settings"]
    lines = [f"{summary['n_done']}/{summary['n_problems']} problems, {summary['n_samples']} samples"]
    if s["greedy"]:
        lines.append(
            f"greedy accuracy: {summary['greedy']:.4f}" if summary["greedy"] is not None else "greedy: -"
        )
    elif summary["pass@1"] is not None:
        lines.append(f"pass@1 (avg@{s['k']}): {summary['pass@1']:.4f}")
        lines.append("  ".join(f"pass@{kk}: {v:.4f}" for kk, v in summary["pass@k"].items()))
    lines.append("reasons: " + ", ".join(f"{r} {n}" for r, n in summary["reasons"].items()))
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="hub id, model directory, .gguf file, 'smollm2', or an adapter directory (hsd train "
                             "--use_peft's final/: its base is named inside)")  # fmt: skip
    parser.add_argument("--dataset", required=True,
                        help="path, short name (gsm8k, math500, aime24, aime25, humaneval, mbppplus), rg:NAME, "
                             "testbed:chain?variant=single")  # fmt: skip
    parser.add_argument(
        "--out", required=True, help="output directory (samples.jsonl, summary.json); resumed"
    )
    parser.add_argument("--k", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0: off)")
    parser.add_argument("--greedy", action="store_true", help="one greedy completion per problem instead")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="completion length cap (default 512)")
    parser.add_argument("--limit", type=int, default=None, help="the first N problems only")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences generated at once (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--success-threshold", type=float, default=SUCCESS_THRESHOLD,
                        help=f"a sample is solved when its reward >= this (default {SUCCESS_THRESHOLD})")  # fmt: skip
    add_sampling_arguments(parser)


def main(args: argparse.Namespace) -> int:
    problems, loaded = problems_and_model(args, limit=args.limit)
    summary = evaluate(
        loaded.model,
        loaded.tokenizer,
        problems,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=args.greedy,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        out_dir=args.out,
        verifier=VERIFIERS[args.verifier],
        verify_workers=args.verify_workers,
        success_threshold=args.success_threshold,
        progress=not args.quiet,
        info={
            "model": args.model,
            "dataset": args.dataset,
            "limit": args.limit,
            "verifier": args.verifier,
            **loaded.info(),
        },  # fmt: skip
    )
    print(format_summary(summary), file=sys.stderr)
    print(json.dumps({key: summary[key] for key in ("pass@1", "pass@k", "greedy", "n_done", "n_problems")}))
    return 0
