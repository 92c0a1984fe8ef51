"""`analyze` end to end on a tiny model: it keeps sampling until enough failed rollouts with a peer, picks
peers among the group's successes, writes every output, and its A_t is the teacher's minus the student's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_output import WARNINGS_ENV, noise

from hsd.analysis.cli import analyze
from hsd.analysis.credit import CollectSettings, collect, credit_tables
from hsd.core.tau import first_divergence
from hsd.sampling import SamplingSettings
from hsd.tasks.problem import Problem, Verdict
from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE


def parity_verifier(problem: Problem, completion: str) -> Verdict:
    """A real, deterministic verifier for random text: correct when the count of letters is even."""
    ok = sum(c.isalpha() for c in completion) % 2 == 0
    return Verdict(float(ok), "correct" if ok else "wrong")


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from hsd.models import load_model, load_tokenizer

    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    problems = [Problem(f"p{i}", f"Question {i}?", str(i), reference=f"Because {i}.") for i in range(40)]
    out = tmp_path_factory.mktemp("analysis")
    settings = CollectSettings(group_size=4, sampling=SamplingSettings(max_new_tokens=8), min_failures=8,
                               problems_per_batch=3, seed=3)  # fmt: skip
    credit = analyze(
        model, tokenizer, problems, settings, out_dir=out, verifier=parity_verifier, progress=False
    )
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    return model, tokenizer, problems, out, credit, rollouts


def test_stops_once_enough_failed_rollouts_with_a_peer(run):
    *_, credit, rollouts = run
    counts = credit["counts"]
    assert counts["analysed"] == len(rollouts) >= 8 and credit["reached_min_failures"]
    assert counts["problems"] % 3 == 0 and counts["problems"] < 40  # whole batches, then it stopped
    assert counts["analysed"] - counts["failed_with_peer"] == 0
    assert counts["rollouts"] == 4 * counts["problems"]


def test_credit_json_has_the_documented_keys_and_shares(run):
    *_, out, credit, _ = run
    assert json.loads((out / "credit.json").read_text()) == credit
    for key in ("mass_within", "mass_within_random", "mass_within_tau_pos", "abs_credit_at_tau",
                "abs_credit_elsewhere", "peak_credit_at_tau", "silence_curve", "median_tau", "tau_zero_share",
                "shared_prefix", "coverage", "counts"):  # fmt: skip
        assert key in credit, key
    assert credit["contexts"] == ["opsd", "hsd", "reference"]
    for table in ("mass_within", "mass_within_random"):
        for context in ("opsd", "hsd", "reference"):
            shares = credit[table][context]
            assert list(shares) == ["2", "4", "8", "16", "32"]
            assert all(0 <= v <= 1 for v in shares.values())
            assert list(shares.values()) == sorted(shares.values())  # cumulative in w
    for name in ("report.html", "credit_profile.png", "silence_curve.png", "coverage.png"):
        assert (out / name).is_file()


def test_peers_are_successes_and_failures_are_failures(run):
    _, tokenizer, *_, rollouts = run
    text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731 - what the verifier read
    for r in rollouts:
        assert r["peer"] != r["rollout"]
        assert parity_verifier(None, text(r["completion_ids"])).reward == 0.0
        assert parity_verifier(None, text(r["peer_ids"])).reward == 1.0
        assert r["tau"] == first_divergence(r["completion_ids"], r["peer_ids"])  # the plan's tau


def test_a_nan_reward_is_not_computed_as_in_training(run):
    """A verdict whose reward is NaN is planned as the trainer plans it: not computed, so never a failure
    analysed nor a peer (a reason other than UNCOMPUTED does not make it a failure)."""
    model, tokenizer, problems, *_ = run

    def thirds(problem: Problem, completion: str) -> Verdict:
        reward = (1.0, 0.0, math.nan)[sum(c.isalpha() for c in completion) % 3]
        return Verdict(reward, "wrong")

    settings = CollectSettings(group_size=4, sampling=SamplingSettings(max_new_tokens=8), min_failures=4,
                               problems_per_batch=3, seed=3, contexts=("hsd",))  # fmt: skip
    analysis = collect(model, tokenizer, problems, thirds, settings, progress=False)
    counts = credit_tables(analysis.rollouts, analysis.groups)["counts"]
    assert counts["uncomputed"] > 0 and counts["analysed"] == counts["failed_with_peer"] > 0
    assert counts["successes"] + counts["failures"] + counts["uncomputed"] == counts["rollouts"]
    analysed = analysis.rollouts
    text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    assert [thirds(None, text(r.completion_ids)).reward for r in analysed] == [0.0] * len(analysed)
    assert all(thirds(None, text(r.peer_ids)).reward == 1.0 for r in analysed)


def test_hsd_credit_is_teacher_minus_student_on_the_exact_ids(run):
    model, tokenizer, problems, *_, rollouts = run
    r = rollouts[0]
    problem = next(p for p in problems if p.id == r["problem_id"])
    peer_text = tokenizer.decode(r["peer_ids"], skip_special_tokens=True)

    def logps(text):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]  # fmt: skip
        ids = list(prompt) + r["completion_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        return [float(lp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))]

    teacher = logps(DEFAULT_TEACHER_TEMPLATE.render(problem.prompt, answer=problem.answer, peer=peer_text))
    student = logps(problem.prompt)
    expected = [t - s for t, s in zip(teacher, student)]
    assert r["credit"]["hsd"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow  # a subprocess that imports torch and transformers: about 30 s on a busy machine
def test_cli_writes_every_output(tiny_model_dir, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a}+1?", "answer": str(a + 1)}) + "\n" for a in range(3))
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hsd", "analyze", "--model", str(tiny_model_dir), "--dataset", str(data),
               "--problems", "2", "--group-size", "2", "--max-new-tokens", "6", "--min-failures", "4",
               "--verifier", "last-number", "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **WARNINGS_ENV}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise(result.stdout + result.stderr) == []  # no weight-loading bar, DeepSpeed notice, own warning
    credit = json.loads((out / "credit.json").read_text())
    assert credit["counts"]["problems"] == 2 and credit["counts"]["rollouts"] == 4
    assert credit["settings"]["dataset"] == str(data) and credit["settings"]["group_size"] == 2
    assert credit["settings"]["verifier"] == "last-number"
    for name in ("report.html", "rollouts.jsonl", "credit_profile.png", "silence_curve.png", "coverage.png"):
        assert (out / name).is_file(), name
    if credit["counts"]["analysed"] < 4:
        assert "only" in result.stderr and not credit["reached_min_failures"]
