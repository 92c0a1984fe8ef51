"""`hsd compare` on a tiny random model: a well-formed table and plot for 2 methods x 2 seeds; a rerun
skips finished runs. The quick start's recipe is the package's, and configs/quickstart.yaml is that file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_output import WARNINGS_ENV, noise

from hsd.compare import Arm, compare
from hsd.quickstart import ARMS, RECIPE_FILE, SHARP_TEACHER, quickstart_recipe
from hsd.tasks.datasets import load_problems

ROOT = Path(__file__).resolve().parents[1]


def test_configs_quickstart_yaml_is_the_packaged_recipe():
    assert (ROOT / "configs" / "quickstart.yaml").resolve() == Path(str(RECIPE_FILE)).resolve()
    assert quickstart_recipe()["model"] == "testbed"
    assert yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text()) == quickstart_recipe()


def test_the_quick_start_trains_grpo_hsd_and_the_recipe_of_the_sharpened_teacher():
    assert [(arm.label, arm.method) for arm in ARMS] == [
        ("grpo", "grpo"),
        ("hsd", "hsd"),
        ("hsd-sharp", "hsd"),
    ]
    sharp = yaml.safe_load((ROOT / "configs" / "quickstart-sharp-teacher.yaml").read_text())
    base = quickstart_recipe()
    changed = {k: sharp[k] for k in sharp if base.get(k) != sharp[k] and k != "output_dir"}
    assert dict(SHARP_TEACHER.changes) == changed == {"teacher_temperature": 0.5}


def tiny_recipe(model_dir: Path, n: int, **fields) -> dict:
    """A CPU recipe on the tiny model: `n` training chains, no checkpoints, no reports, one verifier worker."""
    return {
        "model": str(model_dir),
        "dataset": f"testbed:chain?variant=single&n={n}&split=train",
        "num_generations": 4,
        "use_cpu": True,
        "bf16": False,
        "save_strategy": "no",
        "report_to": [],
        "reward_workers": 1,
        **fields,
    }


def test_an_arm_trains_its_method_with_its_changes_under_its_label(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(
        tiny_model_dir, n=8, max_steps=1, per_device_train_batch_size=4, max_completion_length=16
    )
    arm = Arm("hsd-cold", "hsd", (("teacher_temperature", 2.0),))
    [result] = compare(recipe, [arm], [0], tmp_path)
    used = json.loads((tmp_path / "hsd-cold" / "seed-0" / "recipe.json").read_text())["config"]
    assert (used["method"], used["teacher_temperature"]) == ("hsd", 2.0)
    assert result["method"] == "hsd-cold"
    assert "| hsd-cold |" in (tmp_path / "comparison.md").read_text()


@pytest.mark.slow
def test_compare_two_methods_two_seeds_and_rerun_skips_finished(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(
        tiny_model_dir, n=16, max_steps=2, per_device_train_batch_size=8, max_completion_length=24
    )
    recipe["logging_steps"] = 1
    held_out = load_problems("testbed:chain?variant=single&n=6&split=test")
    out = tmp_path / "cmp"
    first = compare(recipe, ["hsd", "grpo"], [0], out, eval_problems=held_out, eval_every=1, eval_k=1)
    assert [r["method"] for r in first] == ["hsd", "grpo"]
    done_files = {p: p.read_text() for p in out.glob("*/seed-0/done.json")}
    metric_lines = {p: p.read_text() for p in out.glob("*/seed-0/metrics.jsonl")}
    assert len(done_files) == 2

    # the rest through the command line, 3 seeds, paired against grpo (seed 0 is not rerun)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "hsd.cli", "compare", "--config", str(config), "--methods", "hsd,grpo"]
    command += [
        "--seeds",
        "0,1,2",
        "--out",
        str(out),
        "--eval-every",
        "1",
        "--eval-k",
        "1",
        "--baseline",
        "grpo",
    ]
    command += ["--eval-dataset", "testbed:chain?variant=single&n=6&split=test", "--eval-limit", "6"]
    command += ["--validation-dataset", "testbed:chain?variant=single&n=4&split=validation"]
    env = {**os.environ, **WARNINGS_ENV}
    run = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600, env=env)
    # the live display is one line per step: no load or save progress bar, no DeepSpeed notice, no warning
    # from hsd's code; the config names no deprecated field (TRL's own generation helper still calls
    # transformers' deprecated gradient_checkpointing_* methods)
    assert noise(run.stdout + run.stderr) == [], run.stderr
    assert "`gradient_checkpointing` is deprecated" not in run.stderr, run.stderr
    assert "there is already one" not in run.stderr, run.stderr  # one held-out callback for both sets
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed-*/done.json"))]
    assert len(results) == 6
    assert {p: p.read_text() for p in out.glob("*/seed-0/done.json")} == done_files  # not rerun
    assert {p: p.read_text() for p in out.glob("*/seed-0/metrics.jsonl")} == metric_lines
    report = json.loads((out / "comparison.json").read_text())
    paired = report["statistics"]["test"]["hsd"]["final_vs_grpo"]
    finals = {(r["method"], r["seed"]): r["final_accuracy"] for r in results}
    diffs = [finals["hsd", s] - finals["grpo", s] for s in range(3)]
    assert paired["seeds"] == [0, 1, 2] and paired["mean"] == pytest.approx(sum(diffs) / 3)
    if len(set(diffs)) > 1:
        assert paired["low"] < paired["mean"] < paired["high"] and 0 <= paired["p_value"] <= 1
    assert report["pairing"]["same_initial_accuracy_per_seed"]  # same model, same evaluation samples
    text = (out / "comparison.md").read_text()
    assert "## Against grpo, test split" in text and "final - grpo [95% CI]" in text
    hsd_row = next(line for line in text.splitlines() if line.startswith("| hsd |") and "[" in line)
    assert f"{paired['mean']:+.3f} [" in hsd_row

    table = (out / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| hsd ") or line.startswith("| grpo ")][:2]
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
        assert (run / "recipe.json").exists()
        if summary["seed"] > 0:  # the command-line runs evaluated the validation split too, at each step
            assert [json.loads(line)["step"] for line in (run / "validation.jsonl").open()] == [0, 1, 2]
            logged = [json.loads(line) for line in (run / "metrics.jsonl").open()]
            assert sum("eval/validation_accuracy" in m and "eval/accuracy" in m for m in logged) == 2
            # one row per step: the held-out accuracies joined to the step's own row (loss, reward, ...)
            assert [m["step"] for m in logged] == [1, 2]
            assert all("loss" in m and "reward" in m for m in logged)


def test_methods_at_one_seed_share_the_data_order(tiny_model_dir, tmp_path):
    from hsd.trainer.cli import build_trainer, load_recipe

    batches = []
    for method, seed in (("hsd", 1), ("grpo", 1), ("hsd", 2)):
        values = {
            "model": str(tiny_model_dir),
            "dataset": "testbed:chain?variant=single&n=16&split=train",
            "method": method,
            "seed": seed,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 16,  # the tiny model's context is 512
            "use_cpu": True,
            "report_to": [],
            "output_dir": str(tmp_path / method),
        }
        trainer = build_trainer(*load_recipe(None, values))
        loader = iter(trainer.get_train_dataloader())
        batches.append([[row["prompt"] for row in next(loader)] for _ in range(3)])
    assert batches[0] == batches[1]  # the same seed: the same questions in the same order
    assert batches[0] != batches[2]  # the order does depend on the seed


def test_a_recipe_field_that_prefixes_an_option_stays_a_recipe_field(monkeypatch):
    """`--method grpo` is the recipe field `method`, not an abbreviation of `--methods`."""
    import hsd.cli
    import hsd.compare

    seen = {}
    monkeypatch.setattr(hsd.compare, "main", lambda args: seen.update(vars(args)) or 0)
    assert hsd.cli.run("compare", ["--config", "x.yaml", "--method", "grpo"]) == 0
    assert seen["methods"] == "hsd,grpo" and seen["overrides"] == ["--method", "grpo"]
