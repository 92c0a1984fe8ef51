"""Benchmark names without a local copy come from their public hub datasets, with no network here: a
`save_to_disk` directory stands in for each hub dataset (rows written in the hub's own columns from the
project's fixture problems), and a name must give the same problems from the hub as from a data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsd.errors import MissingInputError, UserError
from hsd.tasks import benchmarks
from hsd.tasks.datasets import MATH_INSTRUCTION, load_problems
from tests.conftest import FIXTURE_DATA

ROOT = Path(__file__).resolve().parents[2]
HUB = {  # name -> (hub id, config, split): what `datasets.load_dataset` must be asked for
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "gsm8k-train": ("openai/gsm8k", "main", "train"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("math-ai/aime25", None, "test"),
    "humaneval": ("openai/openai_humaneval", "openai_humaneval", "test"),
    "mbppplus": ("evalplus/mbppplus", None, "test"),
}


def _fixture_rows(name: str) -> list[dict]:
    path = FIXTURE_DATA / benchmarks.BENCHMARKS[name].file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _bare(problem: str) -> str:
    return problem.removesuffix("\n" + MATH_INSTRUCTION)  # the hub's problems carry no instruction


def _mbpp_test_source(row: dict) -> str:
    """The hub's test column: Python source with the inputs as literals (tuples, as the hub writes them)."""
    inputs = [tuple(args) for args in row["base_input"] + row["plus_input"]]
    return (
        "import numpy as np\n\ndef assertion(out, exp, atol):\n    assert out == exp\n\n"
        f"inputs = {inputs!r}\nresults = [None] * {len(inputs)}\n"
        "for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
        f"    assertion({row['entry_point']}(*inp), exp, {row['atol']!r})\n"
    )


def _hub_rows(name: str) -> list[dict]:
    """The fixture problems in the columns of `name`'s hub dataset (extra columns included)."""
    rows = _fixture_rows(name)
    if name in ("math500", "aime24", "aime25"):
        extra = {"math500": {"solution": "worked", "subject": "Algebra", "level": 2, "unique_id": "test/x.json"},
                 "aime24": {"id": 60, "solution": "worked", "url": "u", "year": "2024"},
                 "aime25": {"id": "7"}}[name]  # fmt: skip
        return [{"problem": _bare(r["problem"]), "answer": r["answer"], **extra} for r in rows]
    if name == "mbppplus":
        return [{"task_id": int(r["task_id"].split("/")[1]), "code": r["canonical_solution"],
                 "prompt": r["prompt"].split("\n")[1], "source_file": "f", "test_imports": [],
                 "test_list": [r["prompt"].split("\n")[2]], "test": _mbpp_test_source(r)} for r in rows]  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory) -> dict[tuple, Path]:
    import datasets

    root = tmp_path_factory.mktemp("hub")
    copies = {}
    for name, key in HUB.items():
        copies[key] = root / name
        datasets.Dataset.from_list(_hub_rows(name)).save_to_disk(str(copies[key]))
    return copies


@pytest.fixture
def fake_hub(monkeypatch, hub_copies):
    """`datasets.load_dataset` answered from the saved copies; any other request fails the test."""
    import datasets

    asked = []

    def load_dataset(path, name=None, split=None, **kwargs):
        asked.append((path, name, split))
        assert (path, name, split) in hub_copies, f"unexpected hub request {(path, name, split)}"
        return datasets.load_from_disk(str(hub_copies[(path, name, split)]))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(benchmarks, "_unreachable", lambda hub_id: None)
    monkeypatch.delenv("HSD_DATA_DIR", raising=False)
    return asked


def _fields(problems) -> list[tuple]:
    return [(p.id, p.prompt, p.answer, p.reference, p.kind, p.meta) for p in problems]


def test_every_name_asks_the_hub_for_its_id_config_and_split(fake_hub):
    for name, key in HUB.items():
        load_problems(name)
        assert fake_hub[-1] == key, name
    assert set(benchmarks.BENCHMARKS) == set(HUB)


@pytest.mark.parametrize("name", sorted(HUB))
def test_a_name_gives_the_same_problems_from_the_hub_as_from_a_data_folder(fake_hub, name):
    from_hub = load_problems(name)
    from_folder = load_problems(name, data_dir=FIXTURE_DATA)
    assert _fields(from_hub) == _fields(from_folder)
    assert from_hub[0].origin == f"hf:{HUB[name][0]}:{HUB[name][1] or ''}:{HUB[name][2]}: row 1"


def test_a_folder_without_the_file_falls_back_to_the_hub(fake_hub, tmp_path):
    assert _fields(load_problems("aime25", data_dir=tmp_path)) == _fields(load_problems("aime25"))
    assert fake_hub == [HUB["aime25"]] * 2


def test_mbpp_hub_rows_become_the_mirror_columns():
    source = (
        "inputs = [[(1, 2), {3}], [[4.5], 2j]]\nresults = [0, 0]\n"
        "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(pick(*inp), exp, 1e-06)\n"
    )
    row = {"task_id": 9004, "code": "def pick(a, b):\n  return a\n", "prompt": "Write pick.",
           "test_list": ["assert pick(1, 2) == 1"], "test": source}  # fmt: skip
    assert benchmarks.mbpp_row(row) == {
        "task_id": "Mbpp/9004",
        "prompt": '"""\nWrite pick.\nassert pick(1, 2) == 1\n"""\n',
        "canonical_solution": row["code"],
        "entry_point": "pick",
        "inputs": [[[1, 2], [3]], [[4.5], "2j"]],
        "atol": 1e-06,
    }


def test_a_hub_row_that_cannot_be_mapped_is_reported_by_row(fake_hub, hub_copies, monkeypatch):
    import datasets

    rows = _hub_rows("mbppplus")
    rows[1]["test"] = "inputs = [[1]]\nprint(inputs)\n"
    broken = hub_copies[HUB["mbppplus"]].parent / "broken-mbpp"
    datasets.Dataset.from_list(rows).save_to_disk(str(broken))
    monkeypatch.setitem(hub_copies, HUB["mbppplus"], broken)
    with pytest.raises(
        UserError, match=r"^hf:evalplus/mbppplus::test: row 2: field 'test': expected `inputs"
    ):
        load_problems("mbppplus")


def test_a_name_is_one_split(fake_hub):
    assert len(load_problems("gsm8k", split="test")) == 5
    with pytest.raises(UserError, match=r"'gsm8k' is the 'test' split of openai/gsm8k.*use 'gsm8k-train'"):
        load_problems("gsm8k", split="train")


def test_no_copy_and_no_hub_is_one_line_naming_the_name_the_folder_and_the_hub_id(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(benchmarks, "_unreachable", lambda hub_id: None)
    with pytest.raises(MissingInputError) as error:
        load_problems("math500", data_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith("'math500': no local copy")
    assert f"{tmp_path} has no math/math500.jsonl" in message and "'HuggingFaceH4/MATH-500'" in message
    assert "LocalEntryNotFoundError" in message and "HSD_DATA_DIR" in message
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online mode: the probe answers first
    monkeypatch.setattr(benchmarks, "_unreachable", lambda hub_id: "ConnectError: Name or service not known")
    monkeypatch.delenv("HSD_DATA_DIR", raising=False)
    with pytest.raises(MissingInputError, match=r"HSD_DATA_DIR is unset .*'openai/gsm8k'.*ConnectError"):
        load_problems("gsm8k")


def test_hsd_eval_offline_without_a_copy_prints_one_line_and_exits_2(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "HSD_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "hsd", "eval", "--dataset", "gsm8k", "--model", "testbed", "--limit", "2",
               "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsd eval: error: 'gsm8k': no local copy"), lines
    assert "'openai/gsm8k'" in lines[0] and "HSD_DATA_DIR" in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before the model loaded


def test_the_hub_probe_reports_a_refused_connection_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    reason = benchmarks._unreachable("openai/gsm8k")
    assert reason is not None and "Connect" in reason


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--dataset", "humaneval", "--model", "testbed"],
        ["analyze", "--dataset", "humaneval", "--model", "testbed"],
        ["compare", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--eval-dataset", "humaneval"],
    ],
    ids=["eval", "analyze", "compare"],
)
def test_the_data_dir_option_is_where_the_commands_look(monkeypatch, tmp_path, capsys, argv):
    import datasets

    from hsd.cli import main

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(benchmarks, "_unreachable", lambda hub_id: None)
    assert main([*argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path} has no code/humaneval.jsonl" in capsys.readouterr().err
