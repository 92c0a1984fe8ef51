"""`hsd eval` on a tiny model and 5 GSM8K-style problems (tests/fixtures): valid outputs, pass@k against
brute force, and a resumed run that recomputes nothing already written."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsd.eval import evaluate, k_values, pass_at_k
from hsd.tasks.datasets import load_problems
from tests.conftest import FIXTURE_DATA

GSM8K_TEST = FIXTURE_DATA / "gsm8k" / "test.jsonl"
SETTINGS = dict(k=2, max_new_tokens=12, batch_size=8, progress=False)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of k-subsets of the n samples that hold at least one of the c correct ones."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_k_values_are_powers_of_two_and_k():
    assert k_values(16) == [1, 2, 4, 8, 16]
    assert k_values(6) == [1, 2, 4, 6]
    assert k_values(1) == [1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from hsd.models import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def problems():
    return load_problems(GSM8K_TEST, limit=5)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_valid_records_and_summary(tiny, problems, tmp_path):
    model, tokenizer = tiny
    summary = evaluate(model, tokenizer, problems, out_dir=tmp_path, **SETTINGS)
    records = _lines(tmp_path / "samples.jsonl")
    assert [r["id"] for r in records] == [p.id for p in problems]
    for record in records:
        assert len(record["rewards"]) == len(record["reasons"]) == len(record["completions"]) == 2
        assert all(r in (0.0, 1.0) for r in record["rewards"])
        assert all(1 <= n <= 12 for n in record["num_tokens"])
    rewards = [r for record in records for r in record["rewards"]]
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["pass@1"] == pytest.approx(sum(r == 1.0 for r in rewards) / len(rewards))
    assert summary["mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
    assert set(summary["pass@k"]) == {"1", "2"} and summary["pass@k"]["1"] == pytest.approx(summary["pass@1"])
    assert summary["n_samples"] == 10 and summary["complete"] and summary["greedy"] is None
    assert sum(summary["reasons"].values()) == 10
    assert summary["settings"]["k"] == 2 and summary["computed_problems"] == 5


def test_greedy_is_deterministic_and_reported_as_greedy(tiny, problems, tmp_path):
    model, tokenizer = tiny
    runs = []
    for seed in (0, 5):  # the seed only matters when sampling
        summary = evaluate(model, tokenizer, problems[:2], greedy=True, max_new_tokens=8, progress=False,
                           seed=seed, out_dir=tmp_path / str(seed))  # fmt: skip
        assert summary["greedy"] is not None and summary["pass@1"] is None and summary["n_samples"] == 2
        runs.append([r["completions"] for r in _lines(tmp_path / str(seed) / "samples.jsonl")])
    assert runs[0] == runs[1]


def _run_cli(out: Path, limit: int) -> dict:
    command = [sys.executable, "-m", "hsd", "eval", "--model", str(out.parent / "model"), "--dataset",
               str(GSM8K_TEST), "--limit", str(limit), "--k", "2", "--max-new-tokens", "12", "--batch-size", "8",
               "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # a subprocess that imports torch and transformers: about 30 s on a busy machine
def test_resumed_cli_run_recomputes_nothing_already_written(tiny, problems, tiny_model_dir, tmp_path):
    model, tokenizer = tiny
    (tmp_path / "model").symlink_to(tiny_model_dir)
    out = tmp_path / "run"
    evaluate(model, tokenizer, problems[:3], out_dir=out, seed=0, **SETTINGS)  # an interrupted run: 3 of 5
    written = (out / "samples.jsonl").read_bytes()

    summary = _run_cli(out, limit=5)
    assert (summary["resumed_problems"], summary["computed_problems"]) == (3, 2)
    after = (out / "samples.jsonl").read_bytes()
    assert after.startswith(written) and len(_lines(out / "samples.jsonl")) == 5
    assert summary["n_done"] == 5 and summary["complete"]

    summary = evaluate(model, tokenizer, problems, out_dir=out, seed=0, **SETTINGS)
    assert (summary["resumed_problems"], summary["computed_problems"]) == (5, 0)
    assert (out / "samples.jsonl").read_bytes() == after


def test_a_torn_last_line_is_recomputed(tiny, problems, tmp_path):
    model, tokenizer = tiny
    evaluate(model, tokenizer, problems[:3], out_dir=tmp_path, **SETTINGS)
    lines = (tmp_path / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "samples.jsonl").write_text("".join(lines[:2]) + lines[2][:20])  # killed mid-write
    summary = evaluate(model, tokenizer, problems[:3], out_dir=tmp_path, **SETTINGS)
    assert (summary["resumed_problems"], summary["computed_problems"]) == (2, 1)
    assert [r["id"] for r in _lines(tmp_path / "samples.jsonl")] == [p.id for p in problems[:3]]


def test_resuming_with_other_settings_is_refused(tiny, problems, tmp_path):
    model, tokenizer = tiny
    evaluate(model, tokenizer, problems[:1], out_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match="temperature"):
        evaluate(model, tokenizer, problems[:1], out_dir=tmp_path, **{**SETTINGS, "temperature": 0.5})


def test_last_number_verifier_reads_the_number_a_terse_model_writes():
    from hsd.tasks.problem import Problem
    from hsd.tasks.rewards import VERIFIERS

    problem = Problem("rg-1", "Calculate 5 + 3.", "8", kind="gym", meta={})
    verify = VERIFIERS["last-number"]
    assert verify(problem, "5 + 3 = 8").reward == 1.0
    assert verify(problem, "The answer is 9.").reward == 0.0
    assert verify(problem, "no digits here").reason == "no_answer"
