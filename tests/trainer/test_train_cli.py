"""`hsd train --config FILE.yaml [--field value ...]`: recipes parse, overrides apply, unknown fields are named."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
import yaml
from trl import GRPOConfig

from hsd.cli import main as hsd_main
from hsd.trainer.cli import TrainScript, fields_help, help_sources, load_recipe
from hsd.trainer.config import HELP_GROUPS, HSDConfig

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


def test_a_benchmark_name_reads_the_recipes_data_dir(monkeypatch, tmp_path, tiny_model_dir):
    from hsd.trainer.cli import checked_problems
    from tests.conftest import FIXTURE_DATA

    monkeypatch.setenv("HSD_DATA_DIR", str(tmp_path))  # empty: the recipe's data_dir must win
    overrides = {"model": str(tiny_model_dir), "dataset": "gsm8k-train", "data_dir": str(FIXTURE_DATA),
                 "max_completion_length": 8, "use_cpu": True}  # fmt: skip
    script, args = load_recipe(None, overrides)
    problems, _ = checked_problems(script, args)
    assert [p.id for p in problems] == ["gsm8k-train-0", "gsm8k-train-1", "gsm8k-train-2"]
    assert problems[0].origin.startswith(str(FIXTURE_DATA / "gsm8k" / "train.jsonl"))


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'learnin_rate' \(did you mean 'learning_rate'\?\)"):
        load_recipe(CONFIGS / "quickstart.yaml", ["--learnin_rate", "1e-3"])


def _help_entries(text: str) -> dict[str, str]:
    """`--field` -> its help entry (whitespace collapsed) in an argparse help text."""
    chunks = re.split(r"\n  (?=--\w)", text)
    return {chunk.split()[0][2:]: " ".join(chunk.split()) for chunk in chunks[1:]}


def test_train_help_lists_every_field_by_group_with_help_and_default(capsys):
    with pytest.raises(SystemExit) as stopped:
        hsd_main(["train", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    titles = re.findall(r"^(\S[^\n]*):$", text, re.M)
    assert titles == [
        "options",
        "recipe: model and data",
        *HELP_GROUPS,
        "TRL (GRPOConfig, TrainingArguments)",
    ]
    entries = _help_entries(text)
    assert "(default: 'live')" in entries["teacher_weights"] and "ema" in entries["teacher_weights"]
    assert entries["teacher_temperature"].startswith("--teacher_temperature FLOAT Teacher sharpened")
    assert "(default: 1.0)" in entries["teacher_temperature"]
    assert "learning rate" in entries["learning_rate"] and "(default: 1e-06)" in entries["learning_rate"]
    assert "(default: 'runs/hsd')" in entries["output_dir"]  # hsd train's default, not TrainingArguments'
    assert "(default: None)" in entries["epsilon_high"] and "preset" in entries["epsilon_high"]
    every = [f.name for cls in (TrainScript, HSDConfig) for f in fields(cls) if f.init]
    assert sorted(entries) == sorted(["config", *every])  # each field once
    assert len(re.findall(r"^  --", text, re.M)) == len(every) + 1


def test_every_own_hsd_field_has_one_help_group():
    own = [f.name for f in fields(HSDConfig) if f.name not in GRPOConfig.__dataclass_fields__]
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(own)


def test_one_more_dataclass_is_one_more_help_group():
    @dataclass
    class Adapter:
        lora_r: int = field(default=16, metadata={"help": "LoRA rank."})

    text = fields_help([*help_sources(), ("model/adapter", Adapter)], HELP_GROUPS)
    assert " ".join(text.split()).endswith("model/adapter: --lora_r INT LoRA rank. (default: 16)")


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
    assert [m["step"] for m in steps] == [m["step"] for m in lines] == [1, 2]  # one row per step
    assert json.loads((out / "summary.json").read_text())["train_runtime"] > 0  # the end-of-run row
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
