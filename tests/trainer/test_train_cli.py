"""`hsd train --config FILE.yaml [--field value ...]`: recipes parse, overrides apply, unknown fields are named."""

from __future__ import annotations

import fnmatch
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
from hsd.trainer.cli import MODEL_CONFIG_FIELDS, TrainScript, fields_help, help_sources, load_recipe
from hsd.trainer.config import HELP_GROUPS, HSDConfig
from tests.conftest import FIXTURE_DATA

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
        "adapter (TRL's ModelConfig; used with use_peft: true)",
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
    every += MODEL_CONFIG_FIELDS
    assert "(default: 16)" in entries["lora_r"] and "(default: False)" in entries["use_peft"]
    assert sorted(entries) == sorted(["config", *every])  # each field once
    assert len(re.findall(r"^  --", text, re.M)) == len(every) + 1


def test_every_own_hsd_field_has_one_help_group():
    own = [f.name for f in fields(HSDConfig) if f.name not in GRPOConfig.__dataclass_fields__]
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(own)


def test_the_docs_list_every_own_hsd_field_under_its_help_group():
    """docs/trainer.md's "Knobs" has a section per help group, in order, each naming its group's fields (a
    pattern such as `teacher_*_template` names several; a TRL field may stand there too)."""
    text = (CONFIGS.parent / "docs" / "trainer.md").read_text()
    knobs = text.split("## Knobs (HSDConfig fields)\n", 1)[1].split("\n## ", 1)[0]
    own = [f.name for f in fields(HSDConfig) if f.name not in GRPOConfig.__dataclass_fields__]
    parts = re.split(r"^### (.+)$", knobs, flags=re.M)[1:]
    listed = {}
    for topic, body in zip(parts[::2], parts[1::2]):
        cells = [line.split("|")[1] for line in body.splitlines() if line.startswith("| `")]
        names = [name for cell in cells for name in re.findall(r"`([^`]+)`", cell)]
        listed[topic] = sorted(f for f in own if any(fnmatch.fnmatch(f, name) for name in names))
        unknown = [
            n for n in names if n not in GRPOConfig.__dataclass_fields__ and not fnmatch.filter(own, n)
        ]
        assert not unknown, (topic, unknown)
    assert listed == {topic: sorted(names) for topic, names in HELP_GROUPS.items()}
    assert list(listed) == list(HELP_GROUPS)


def test_one_more_dataclass_is_one_more_help_group():
    @dataclass
    class Rollouts:
        engine_rank: int = field(default=16, metadata={"help": "A rank."})

    text = fields_help([*help_sources(), ("rollouts", Rollouts)], HELP_GROUPS)
    assert " ".join(text.split()).endswith("rollouts: --engine_rank INT A rank. (default: 16)")


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


LORA_FIELDS = [
    "--use_peft",
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
    "--lora_target_modules",
    "[q_proj, v_proj]",
]


def test_adapter_fields_are_trls_model_config_and_build_its_lora_config():
    """TRL's ModelConfig fields on the command line, turned into a LoraConfig by trl.get_peft_config."""
    from hsd.trainer.cli import peft_config

    script, _ = load_recipe(CONFIGS / "quickstart.yaml", LORA_FIELDS + ["--lora_dropout", "0.1"])
    lora = peft_config(script.model_config)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, sorted(lora.target_modules)) == (
        4, 8, 0.1, ["q_proj", "v_proj"],
    )  # fmt: skip
    script, _ = load_recipe(CONFIGS / "smollm2-lora.yaml", [])
    assert peft_config(script.model_config).target_modules == "all-linear" and script.model_config.use_peft
    assert peft_config(load_recipe(CONFIGS / "quickstart.yaml", [])[0].model_config) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--lora_r", "0"], "field 'lora_r': 0 is not allowed; it must be a whole number >= 1"),
        (["--lora_dropout", "1.5"], "field 'lora_dropout': 1.5 is not allowed; it must be a probability"),
        (["--lora_task_type", "FOO"], "adapter fields: Invalid task type: 'FOO'"),
        (["--merge_adapter"], "'merge_adapter': true needs use_peft: true"),
        (["--lora_alhpa", "4"], r"'lora_alhpa' \(did you mean 'lora_alpha'\?\)"),
    ],
)
def test_adapter_mistakes_are_one_line_before_any_model_loads(overrides, message):
    args = overrides if overrides[0] == "--merge_adapter" else ["--use_peft", *overrides]
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(CONFIGS / "quickstart.yaml", args)
    assert "\n" not in str(error.value)


def test_asking_for_an_adapter_without_peft_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a)
    )
    with pytest.raises(
        ValueError, match=r'use_peft: true needs the peft library.*pip install -e "\.\[peft\]"'
    ):
        load_recipe(CONFIGS / "quickstart.yaml", ["--use_peft"])


@pytest.mark.slow
def test_an_adapter_run_saves_the_adapter_and_the_merged_model_which_eval_and_analyze_load(
    tiny_model_dir, tmp_path
):
    """`hsd train --use_peft ... --merge_adapter`: final/ is the adapter (PeftModel.from_pretrained loads it,
    the base named by the recipe), final/merged the same model merged; `hsd eval` and `hsd analyze` run it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hsd.cli import main
    from hsd.models import load_model

    out = tmp_path / "run"
    assert main(["train", "--config", str(CONFIGS / "quickstart.yaml"), "--model", str(tiny_model_dir),
                 "--max_steps", "1", "--output_dir", str(out), "--per_device_train_batch_size", "8",
                 "--max_completion_length", "8", "--report_to", "none", "--reward_workers", "1",
                 "--save_strategy", "no", "--learning_rate", "0.05", *LORA_FIELDS, "--merge_adapter"]) == 0  # fmt: skip
    final = out / "final"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir.resolve()
    )
    assert not (final / "model.safetensors").exists() and (final / "merged" / "model.safetensors").is_file()
    ids = torch.arange(3, 20)[None]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, final)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(final / "merged")(ids).logits
        loaded = load_model(str(final))(ids).logits
    assert not torch.allclose(adapted, before, atol=1e-4)  # the adapter was trained
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded, adapted, rtol=1e-4, atol=1e-5)
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a}+1?", "answer": str(a + 1)}) + "\n" for a in range(2))
    )
    assert main(["eval", "--model", str(final), "--dataset", str(data), "--k", "1", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_done"] == 2
    assert main(["analyze", "--model", str(final), "--dataset", str(data), "--problems", "2", "--group-size", "2",
                 "--max-new-tokens", "4", "--min-failures", "1", "--verifier", "last-number", "--out",
                 str(tmp_path / "credit"), "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "credit" / "credit.json").read_text())["counts"]["problems"] == 2


@pytest.mark.slow
def test_hsd_train_runs_the_smollm2_lora_recipe(tmp_path):
    """The shipped adapter recipe (SmolLM2-135M, LoRA on every linear layer, EMA teacher), 2 small steps."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hsd", "train", "--config", str(CONFIGS / "smollm2-lora.yaml"), "--max_steps",
           "2", "--output_dir", str(out), "--per_device_train_batch_size", "2", "--num_generations", "2",
           "--max_completion_length", "8", "--dataset_limit", "2", "--report_to", "none", "--reward_workers",
           "1", "--save_strategy", "no", "--data_dir", str(FIXTURE_DATA)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(m["hsd/distilled_tokens"] > 0 for m in steps)
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2" and config["target_modules"]
    assert (out / "final" / "hsd_teacher" / "adapter_model.safetensors").is_file()  # the EMA adapter


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
