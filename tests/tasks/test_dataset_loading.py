"""Loading problems: short names, files of every format, field mapping, instructions, and row validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsd.tasks.datasets import MATH_INSTRUCTION, load_problems, to_hf_dataset
from tests.conftest import FIXTURE_DATA

ROWS = [
    {"question": "What is 2 + 3?", "answer": "Add them: 2 + 3 = 5\n#### 5"},
    {"question": "What is 10 * 10?", "answer": "#### 100"},
]


def test_short_names_load_the_real_data(full_data):
    gsm8k = load_problems("gsm8k")
    assert len(gsm8k) == 1319 and gsm8k[17].id == "gsm8k-test-17"
    assert gsm8k[0].answer == "18" and gsm8k[0].reference.endswith("farmer’s market.")
    assert gsm8k[0].prompt.endswith("\n" + MATH_INSTRUCTION)
    math500 = load_problems("math500")
    assert len(math500) == 500 and math500[2].answer == "\\frac{14}{3}"
    assert math500[0].prompt.count("\\boxed{}") == 1  # already asked for: not appended twice
    assert len(load_problems("aime24")) == 30 and len(load_problems("aime25")) == 30
    assert len(load_problems("gsm8k-train", limit=5)) == 5
    humaneval = load_problems("humaneval")
    assert humaneval[0].id == "HumanEval/0" and humaneval[0].kind == "code"
    assert set(humaneval[0].meta["tests"]) == {"test", "entry_point", "prompt"}
    mbpp = load_problems("mbppplus", limit=3)
    assert mbpp[0].kind == "code" and mbpp[0].meta["tests"]["task_id"] == "Mbpp/2"
    assert len(mbpp[0].meta["tests"]["inputs"]) == 111


def test_short_names_read_a_data_folder_and_data_dir_wins_over_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HSD_DATA_DIR", str(tmp_path))  # empty: data_dir= must win
    gsm8k = load_problems("gsm8k", data_dir=FIXTURE_DATA)
    assert [p.id for p in gsm8k] == [f"gsm8k-test-{i}" for i in range(5)]
    assert gsm8k[0].answer == "63" and gsm8k[0].reference.endswith("63 rolls.")
    assert gsm8k[0].origin == f"{FIXTURE_DATA / 'gsm8k' / 'test.jsonl'}: row 1"
    monkeypatch.setenv("HSD_DATA_DIR", str(FIXTURE_DATA))
    assert load_problems("gsm8k-train")[1].id == "gsm8k-train-1"
    math500 = load_problems("math500")
    assert math500[0].answer == "\\frac{14}{3}" and math500[0].prompt.count("\\boxed{}") == 1
    assert [len(load_problems(name)) for name in ("aime24", "aime25")] == [3, 3]
    humaneval, mbpp = load_problems("humaneval"), load_problems("mbppplus")
    assert humaneval[1].id == "HsdEval/1" and humaneval[1].kind == "code"
    assert set(humaneval[1].meta["tests"]) == {"test", "entry_point", "prompt"}
    assert mbpp[0].id == "Mbpp/9001" and mbpp[0].meta["tests"]["inputs"][-1] == [[0, 100, 50, 100]]


def test_every_bad_row_is_reported_with_file_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(ROWS[0]),
        "{not json",
        json.dumps({"answer": "3"}),
        "",
        json.dumps({"question": "q", "answer": "   "}),
        json.dumps({"question": ["a list"], "answer": "1"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"question": "q", "answer": 7}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as error:
        load_problems(str(path))
    message = str(error.value)
    assert message.startswith(f"5 bad row(s) in {path}")
    assert f"{path}: row 2: invalid JSON" in message
    assert f"{path}: row 3: field 'question or problem or prompt': missing" in message
    assert f"{path}: row 5: field 'answer': empty" in message
    assert f"{path}: row 6: field 'question': expected a string, got list" in message
    assert f"{path}: row 7: expected a JSON object, got list" in message
    assert "row 1:" not in message and "row 8:" not in message  # a numeric answer is fine


def test_invalid_utf8_line_is_reported(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"question": "\xff", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"row 2: invalid UTF-8"):
        load_problems(str(path))


def test_json_csv_parquet_and_a_saved_dataset_give_the_same_problems(tmp_path):
    import datasets

    expected = load_problems(_write(tmp_path / "rows.jsonl", ROWS))
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    table = datasets.Dataset.from_list(ROWS)
    table.to_csv(str(tmp_path / "rows.csv"), index=False)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    for name in ("rows.json", "rows.csv", "rows.parquet", "saved"):
        loaded = load_problems(str(tmp_path / name), split="test")
        assert [(p.prompt, p.answer, p.reference) for p in loaded] == [
            (p.prompt, p.answer, p.reference) for p in expected
        ], name
    assert [p.answer for p in expected] == ["5", "100"] and expected[0].reference == "Add them: 2 + 3 = 5"


def test_field_map_instruction_and_boxed_solutions(tmp_path):
    rows = [{"q": "Find x.", "sol": "We get \\boxed{\\frac{1}{2}}.", "uid": "a1"}]
    path = _write(tmp_path / "custom.jsonl", rows)
    problem = load_problems(
        path, field_map={"prompt": "q", "answer": "sol", "id": "uid"}, instruction="Box it."
    )[0]
    assert (problem.id, problem.prompt, problem.answer) == ("a1", "Find x.\nBox it.", "\\frac{1}{2}")
    assert problem.reference == rows[0]["sol"]
    assert (
        load_problems(path, field_map={"prompt": "q", "answer": "sol"}, instruction="")[0].prompt == "Find x."
    )
    with pytest.raises(ValueError, match=r"row 1: field 'nope': missing"):
        load_problems(path, field_map={"prompt": "nope", "answer": "sol"})


def test_limit_and_bad_arguments(tmp_path):
    path = _write(tmp_path / "rows.jsonl", ROWS)
    assert len(load_problems(path, limit=1)) == 1
    with pytest.raises(ValueError, match="limit"):
        load_problems(path, limit=-1)
    with pytest.raises(ValueError, match="kind"):
        load_problems(path, kind="poetry")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_problems(str(tmp_path / "rows.txt"))
    with pytest.raises(ValueError, match="hf:NAME"):
        load_problems("hf:")


def test_testbed_spec_passes_typed_options_to_the_chain_task():
    problems = load_problems("testbed:chain?n=6&steps=3&variant=single&seed=2")
    assert len(problems) == 6 and all(p.kind == "chain" for p in problems)
    assert problems == load_problems("testbed:chain?n=6&steps=3&variant=single", seed=2)


def test_to_hf_dataset_has_the_columns_reward_functions_read():
    problems = load_problems("gsm8k", limit=2, data_dir=FIXTURE_DATA)
    problems += load_problems("humaneval", limit=1, data_dir=FIXTURE_DATA)
    table = to_hf_dataset(problems)
    assert table.column_names == ["prompt", "answer", "reference", "kind", "problem_id", "meta"]
    assert table[0]["prompt"] == [{"role": "user", "content": problems[0].prompt}]
    assert table[2]["kind"] == "code" and json.loads(table[2]["meta"]) == problems[2].meta
    assert table[2]["reference"] == ""


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)
