"""benchmarks/study.py across testbed models: the build command per model seed, and the per-model and pooled
paired differences (over model x seed pairs, and over per-model means) on constructed runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from hsd.stats import paired_difference

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.TESTBEDS["quickstart"] = dataclasses.replace(module.TESTBEDS["quickstart"], out=tmp_path)
    return module


def test_model_seed_picks_the_build_and_the_run_directory(study, tmp_path):
    long = study.with_model_seed(study.TESTBEDS["long"], 2)
    assert long.build[-2:] == ["--seed", "2"] and long.build.count("--seed") == 1
    assert "steps_range=[16,16]" in long.build and long.out.name == "model-seed-2"
    assert study.with_model_seed(study.TESTBEDS["quickstart"], 0).out == tmp_path  # seed 0 keeps its place


def test_across_models_pools_over_pairs_and_over_model_means(study):
    finals = {}  # (cell, model, seed) -> final accuracy; model 2 lacks seed 2 of hsd
    for model in (1, 2, 3):
        testbed = study.with_model_seed(study.TESTBEDS["quickstart"], model)
        for cell, gain in (("grpo", 0.0), ("hsd-tt0.5", 0.01 * model)):
            for seed in range(3):
                if (cell, model, seed) == ("hsd-tt0.5", 2, 2):
                    continue
                final = 0.8 + 0.03 * seed * (1 + (cell == "grpo")) + gain
                finals[cell, model, seed] = final
                run = testbed.out / cell / study.CELLS[cell][0] / f"seed-{seed}"
                run.mkdir(parents=True)
                summary = {"seed": seed, "final_accuracy": final, "auc_accuracy": final - 0.1}
                (run / "done.json").write_text(json.dumps(summary))
    lines, data = study.across_models("quickstart", ["grpo", "hsd-tt0.5"], [0, 1, 2], [1, 2, 3], "grpo")
    pairs = sorted(k[1:] for k in finals if k[0] == "hsd-tt0.5")
    diffs = {k: finals["hsd-tt0.5", *k] - finals["grpo", *k] for k in pairs}
    pooled = data["hsd-tt0.5"]["pooled: 8 model x seed pairs (paired t)"]
    expected = paired_difference(
        [finals["hsd-tt0.5", *k] for k in pairs], [finals["grpo", *k] for k in pairs]
    )
    assert pooled["pairs"] == 8 and pooled["final"]["mean"] == pytest.approx(expected.mean)
    assert pooled["final"]["high"] == pytest.approx(expected.high)
    means = [statistics.fmean(d for (m, _), d in diffs.items() if m == model) for model in (1, 2, 3)]
    unit = data["hsd-tt0.5"]["pooled: 3 models as the unit (t over per-model mean differences)"]
    by_model = paired_difference(means, [0.0] * 3)
    assert unit["models"] == [1, 2, 3] and unit["final"]["mean"] == pytest.approx(by_model.mean)
    assert (unit["final"]["low"], unit["final"]["p_value"]) == pytest.approx((by_model.low, by_model.p_value))
    assert data["hsd-tt0.5"]["seed 2"]["pairs"] == 2  # only the seeds both cells ran are paired
    assert any(line.startswith("| hsd-tt0.5 | seed 3 |") for line in lines)


def test_terse_testbed_writes_its_missing_data_files_and_trains_on_them(study, tmp_path, monkeypatch):
    terse = dataclasses.replace(study.TESTBEDS["terse"], data=str(tmp_path / "parity-{split}-{n}.jsonl"))
    (tmp_path / "parity-test-128.jsonl").write_text("{}\n")  # present: not written again
    ran = []
    monkeypatch.setattr(study.subprocess, "run", lambda argv, **kw: ran.append(argv))
    written = study.write_problems(terse, validation=True)
    assert ran == written and [argv[argv.index("--split") + 1] for argv in ran] == ["train", "validation"]
    assert ran[0][:3] == ["hsd", "testbed", "problems"] and ran[0][-1] == str(
        tmp_path / "parity-train-2048.jsonl"
    )
    argv = study.command(terse, "opsd", "0,", "MODEL", validation=False)
    assert argv[argv.index("--methods") + 1] == "opsd" and "--validation-dataset" not in argv
    assert argv[argv.index("--dataset") + 1] == str(tmp_path / "parity-train-2048.jsonl")
    assert "answer_form=parity" in study.TESTBEDS["terse"].build
    assert study.write_problems(study.TESTBEDS["quickstart"], validation=True) == []  # a testbed: URI
