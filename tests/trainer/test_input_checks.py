"""Bad recipes and bad data stop `hsd train` before any model loads: exit 2, one line naming the field or the
file and row, no traceback. The model used here has unreadable weights, so a check that came too late
would fail with a weights error instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hsd.errors import UserError
from hsd.tasks.problem import Problem
from hsd.trainer.validate import check_recipe, check_value, fit_prompts, prompt_budget

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"question": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)]


@pytest.fixture(scope="module")
def unloadable_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's config and tokenizer, with weights that no loader accepts."""
    path = tmp_path_factory.mktemp("unloadable")
    for item in tiny_model_dir.iterdir():
        shutil.copy(item, path / item.name)
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    return path


def _write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(tmp_path: Path, model: Path, dataset: Path, **fields) -> Path:
    values = {"model": str(model), "dataset": str(dataset), "output_dir": str(tmp_path / "out"),
              "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
              "max_completion_length": 32, "use_cpu": True, "report_to": [], **fields}  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path


def _hsd_train(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run `hsd train` in a subprocess (how fast it stops: benchmarks/user_error_latency.py)."""
    return subprocess.run(
        [sys.executable, "-m", "hsd", "train", "--config", str(recipe), *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _assert_one_line_user_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    errors = [line for line in lines if line.startswith("hsd train: error: ")]
    assert len(errors) == 1, done.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


BAD_VALUES = [
    ("learning_rate", "fast", "field 'learning_rate': 'fast' is not allowed; it must be a number > 0"),
    ("max_steps", -5, "field 'max_steps': -5 is not allowed"),
    ("max_steps", 0, "field 'max_steps': 0 is not allowed"),
    ("top_p", 1.5, "field 'top_p': 1.5 is not allowed; it must be a probability in (0, 1]"),
    ("max_completion_length", 4096, "field 'max_completion_length': 4096 leaves no room for a prompt"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES])
def test_a_bad_recipe_value_exits_2_naming_the_field_before_the_model_loads(
    unloadable_model, tmp_path, name, value, message
):
    data = _write_rows(tmp_path / "rows.jsonl", [json.dumps(r) for r in ROWS])
    done = _hsd_train(_recipe(tmp_path, unloadable_model, data, **{name: value}))
    _assert_one_line_user_error(done, message)
    assert not (tmp_path / "out" / ".hsd-run.lock").exists()


BAD_ROWS = {
    "bad JSON": ("{not json", "row 3: invalid JSON"),
    "missing column": (
        json.dumps({"question": "q"}),
        "row 3: field 'answer or solution or reference': missing",
    ),
    "1 MB prompt": (
        json.dumps({"question": "x" * 1_000_000, "answer": "1"}),
        "row 3: the prompt is over 7806 tokens long; at most 480 are allowed",  # counted on 16 x (480 + 8) chars
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_data_row_exits_2_naming_file_and_row_before_the_model_loads(unloadable_model, tmp_path, case):
    line, message = BAD_ROWS[case]
    lines = [json.dumps(r) for r in ROWS]
    lines[2] = line
    data = _write_rows(tmp_path / "rows.jsonl", lines)
    done = _hsd_train(_recipe(tmp_path, unloadable_model, data))
    _assert_one_line_user_error(done, f"{data}: {message}")


def test_debug_shows_the_traceback_of_a_user_error(unloadable_model, tmp_path):
    data = _write_rows(tmp_path / "rows.jsonl", [json.dumps(r) for r in ROWS])
    done = _hsd_train(_recipe(tmp_path, unloadable_model, data, learning_rate="fast"), "--debug")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "UserError" in done.stderr
    assert "hsd train: error: " in done.stderr


def test_types_and_ranges_in_process():
    from hsd.trainer.cli import TrainScript
    from hsd.trainer.config import HSDConfig

    checked = check_recipe({"learning_rate": 3, "max_steps": 1e3, "lr_scheduler_type": "constant"},
                           (TrainScript, HSDConfig))  # fmt: skip
    assert checked == {"learning_rate": 3.0, "max_steps": 1000, "lr_scheduler_type": "constant"}
    assert check_recipe({"max_steps": -1, "num_train_epochs": 2}, (HSDConfig,))["max_steps"] == -1
    assert check_recipe({"save_strategy": False}, (HSDConfig,)) == {
        "save_strategy": "no"
    }  # `--save_strategy no`
    bad = [
        ({"max_steps": -1}, "field 'max_steps'"),
        ({"per_device_train_batch_size": 2.5}, "field 'per_device_train_batch_size': 2.5"),
        ({"use_cpu": "yes"}, "field 'use_cpu': 'yes' is not allowed; it must be true or false"),
        (
            {"teacher_ema_decay": 1.0},
            "field 'teacher_ema_decay': 1.0 is not allowed; it must be a number in [0, 1)",
        ),
        ({"learning_rate": float("nan")}, "field 'learning_rate': nan"),
        ({"num_generations": True}, "field 'num_generations': True"),
        ({"lr_scheduler_type": "fastest"}, "one of linear, cosine"),
        ({"reward_workers": 0}, "field 'reward_workers': 0"),
        ({"long_prompts": "cut"}, "field 'long_prompts': 'cut'"),
    ]
    for values, message in bad:
        with pytest.raises(UserError) as error:
            check_recipe(values, (TrainScript, HSDConfig))
        assert message in str(error.value)
    assert check_value("seed", None, int | None) is None


def test_prompt_budget_and_truncation_keep_the_end_of_the_prompt():
    from tests.conftest import build_char_tokenizer

    assert prompt_budget(512, None, 100) == 412
    assert prompt_budget(None, None, 100) is None
    with pytest.raises(UserError, match="field 'max_prompt_length': 500"):
        prompt_budget(512, 500, 100)
    tokenizer = build_char_tokenizer()
    problems = [Problem("a", "short", "1", origin="f.jsonl: row 1"),
                Problem("b", "x" * 300 + " the question?", "2", origin="f.jsonl: row 2")]  # fmt: skip
    with pytest.raises(
        UserError, match=r"^f\.jsonl: row 2: the prompt is 316 tokens long; at most 100 are allowed"
    ):
        fit_prompts(problems, tokenizer, 100, "refuse")
    fitted, notes = fit_prompts(problems, tokenizer, 100, "truncate")
    assert fitted[0] == problems[0] and fitted[1].prompt.endswith("x the question?")
    assert len(fitted[1].prompt) == 100 - 2  # one token per character, plus <u> and <a> around it
    assert notes == ["f.jsonl: row 2: prompt truncated to 100 tokens (long_prompts: truncate)"]


def test_training_sampling_and_the_length_check_build_the_same_student_prompt():
    """One builder (`hsd.tasks.problem.chat_prompt`): the rows TRL trains on, the ids eval and analysis
    sample from, and the prompt-length check all see the same chat-templated prompt, token for token."""
    from hsd.sampling import prompt_ids
    from hsd.tasks.datasets import to_hf_dataset
    from hsd.teacher.prompt import tokenize_prompt
    from tests.conftest import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    questions = ["What is 2 + 3?", "Line one\nline two: 'single' and \"double\" quotes", "  spaced out  "]
    problems = [Problem(str(i), question, "5") for i, question in enumerate(questions)]
    for problem, row in zip(problems, to_hf_dataset(problems)["prompt"]):
        assert row == [{"role": "user", "content": problem.prompt}]
        ids = prompt_ids(tokenizer, problem)
        assert ids == tokenize_prompt(tokenizer, row)  # as TRL tokenizes the training row
        text = tokenizer.apply_chat_template(row, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(ids) == text == f"<u>{problem.prompt}<a>"
        assert fit_prompts([problem], tokenizer, len(ids), "refuse") == ([problem], [])
        with pytest.raises(UserError, match=f"the prompt is {len(ids)} tokens long; at most {len(ids) - 1}"):
            fit_prompts([problem], tokenizer, len(ids) - 1, "refuse")
