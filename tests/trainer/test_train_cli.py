"""`hsd train --config FILE.yaml [--field value ...]`: recipes parse, overrides apply, unknown fields are named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hsd.trainer.cli import load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_parses(name):
    # the paper recipe asks for GPUs and vLLM; its fields must still all be known and well-typed
    script, args = load_recipe(
        CONFIGS / name, ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"]
    )
    assert script.model and script.dataset
    assert args.method == "hsd"


@pytest.mark.parametrize(
    "name, changed",
    [
        ("quickstart-sharp-teacher.yaml", {"teacher_temperature": 0.5}),
        ("long-chain-hsd.yaml", {"divergence": "kl_student_teacher", "max_completion_length": 128}),
    ],
)
def test_study_recipes_are_the_quick_start_with_the_studied_change(name, changed):
    """A recipe named after a study cell is the quick-start recipe (the study's base) plus that cell's change."""
    base = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    recipe = yaml.safe_load((CONFIGS / name).read_text())
    differ = {k for k in base.keys() | recipe.keys() if base.get(k) != recipe.get(k)}
    assert differ - {"output_dir", "model", "dataset"} == set(changed)
    assert all(recipe[k] == v for k, v in changed.items())


def test_paper_recipe_has_the_paper_hyperparameters():
    _, args = load_recipe(
        CONFIGS / "qwen3-8b-paper.yaml", ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false"]
    )
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (
        1e-6,
        0.9,
        0.95,
        1e-8,
        0.0,
    )
    assert (args.num_generations, args.beta, args.temperature, args.top_p) == (8, 1e-3, 1.0, 0.95)
    assert args.max_steps == 1500 and args.max_completion_length == 4096


def test_overrides_win_over_the_recipe():
    _, args = load_recipe(
        CONFIGS / "quickstart.yaml", ["--method", "grpo", "--learning_rate=3e-4", "--max_steps", "7"]
    )
    assert (args.method, args.learning_rate, args.max_steps, args.loss_type) == ("grpo", 3e-4, 7, "grpo")


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'learnin_rate' \(did you mean 'learning_rate'\?\)"):
        load_recipe(CONFIGS / "quickstart.yaml", ["--learnin_rate", "1e-3"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml", [])


@pytest.mark.slow
def test_hsd_train_runs_the_quickstart_recipe_and_writes_metrics(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "hsd",
        "train",
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--model",
        str(tiny_model_dir),
        "--max_steps",
        "2",
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "16",
        "--max_completion_length",
        "24",
        "--report_to",
        "[tensorboard]",
        "--reward_workers",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all("hsd/coverage" in m and "time/teacher" in m for m in steps)
    # the teacher diagnostics, in metrics.jsonl and in TensorBoard
    assert all(0 < m["hsd/teacher_p_token"] <= 1 and m["hsd/student_entropy"] >= 0 for m in steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = out.glob("runs/*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {
        f"train/hsd/{side}_{name}" for side in ("teacher", "student") for name in ("p_token", "entropy")
    } <= tags
    assert (out / "final" / "model.safetensors").exists()
    assert json.loads((out / "recipe.json").read_text())["config"]["method"] == "hsd"


def test_use_vllm_with_a_model_vllm_cannot_run_here_is_one_line_before_training(tiny_model_dir, tmp_path):
    """The tiny model's head size (8) has no kernel in vLLM's CPU backend; without vLLM installed, that is
    the line. Either way: exit 2, one line, before the model loads (no output directory yet)."""
    import importlib.util

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hsd", "train", "--config", str(CONFIGS / "quickstart.yaml"),
           "--model", str(tiny_model_dir), "--output_dir", str(out), "--use_vllm", "true"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("hsd")]
    assert len(lines) == 1, result.stderr[-3000:]
    if importlib.util.find_spec("vllm") is None:
        assert "needs vLLM, which is not installed: bash scripts/setup.sh --vllm" in lines[0]
    else:
        assert "attention head size 8" in lines[0] and "32, 64, 80" in lines[0]
    assert not (out / "final").exists()
