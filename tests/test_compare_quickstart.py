"""`hsd compare` on a tiny random model: a well-formed table and plot for 2 methods x 2 seeds; a rerun
skips finished runs. The quick start's recipe is the package's, and configs/quickstart.yaml is that file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hsd.compare import compare
from hsd.quickstart import RECIPE_FILE, quickstart_recipe
from hsd.tasks.datasets import load_problems

ROOT = Path(__file__).resolve().parents[1]


def test_configs_quickstart_yaml_is_the_packaged_recipe():
    assert (ROOT / "configs" / "quickstart.yaml").resolve() == Path(str(RECIPE_FILE)).resolve()
    assert quickstart_recipe()["model"] == "testbed"
    assert yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text()) == quickstart_recipe()


@pytest.mark.slow
def test_compare_two_methods_two_seeds_and_rerun_skips_finished(tiny_model_dir, tmp_path):
    recipe = {
        "model": str(tiny_model_dir),
        "dataset": "testbed:chain?variant=single&n=16&split=train",
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 24,
        "use_cpu": True,
        "bf16": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "reward_workers": 1,
    }
    held_out = load_problems("testbed:chain?variant=single&n=6&split=test")
    out = tmp_path / "cmp"
    first = compare(recipe, ["hsd", "grpo"], [0], out, eval_problems=held_out, eval_every=1, eval_k=1)
    assert [r["method"] for r in first] == ["hsd", "grpo"]
    done_files = {p: p.read_text() for p in out.glob("*/seed-0/done.json")}
    metric_lines = {p: p.read_text() for p in out.glob("*/seed-0/metrics.jsonl")}
    assert len(done_files) == 2

    results = compare(recipe, ["hsd", "grpo"], [0, 1], out, eval_problems=held_out, eval_every=1, eval_k=1)
    assert len(results) == 4
    assert {p: p.read_text() for p in out.glob("*/seed-0/done.json")} == done_files  # not rerun
    assert {p: p.read_text() for p in out.glob("*/seed-0/metrics.jsonl")} == metric_lines

    table = (out / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| hsd ") or line.startswith("| grpo ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 8
        final_mean = float(cells[2].split("+/-")[0])
        assert 0.0 <= final_mean <= 1.0
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for run in out.glob("*/seed-*"):
        summary = json.loads((run / "done.json").read_text())
        assert [s for s, _ in summary["accuracy_curve"]] == [0, 1, 2]  # before training and every step
        assert (run / "final" / "model.safetensors").exists()
        assert (run / "resolved_config.json").exists()
