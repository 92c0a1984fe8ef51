"""The testbed model: character tokenizer, seeded reproducible build, cache, and loading as any HF model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE
from hsd.testbed.mix import example
from hsd.testbed.model import (
    CHARS,
    SPECIAL_TOKENS,
    _encode_pair,
    build_testbed_model,
    build_tokenizer,
    cache_root,
    config_from_knobs,
)

TINY = {"train_steps": 3, "batch_size": 4}  # seconds, not minutes: enough to test the build itself


def _record(path: Path) -> dict:
    return json.loads((path / "testbed.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_testbed_model(0, cache_dir=tmp_path_factory.mktemp("cache"), **TINY)


def test_tokenizer_has_one_token_per_character():
    tokenizer = build_tokenizer()
    text = "7+3=0\n0-1=9\nAnswer: 9 <solution>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_chat_template_matches_the_pretraining_encoding():
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    user = DEFAULT_TEACHER_TEMPLATE.render("Mod 10, in order: 7 +3", answer="0", peer="7+3=0\nAnswer: 0")
    target = "7+3=0\nAnswer: 0"
    ids, target_start = _encode_pair(
        user, target, {c: vocab[c] for c in CHARS}, {t: vocab[t] for t in SPECIAL_TOKENS}
    )
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": target}]
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(
        messages[:1], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert ids[:target_start] == prompt["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id


def test_peer_examples_use_the_shared_teacher_template():
    import random

    user, target, unscored = example(
        random.Random(0),
        context="answer+peer",
        variant="single",
        steps=4,
        operand_max=3,
        error_rate=0.0,
        modulus=10,
    )
    question = user.split("\n\n")[0]
    assert user == DEFAULT_TEACHER_TEMPLATE.render(question, answer=target[-1], peer=target)
    assert unscored == ()


@pytest.mark.parametrize("variant", ["single", "multi"])
def test_a_slipped_context_example_carries_on_from_its_slip_which_is_unscored(variant):
    import random

    from hsd.tasks.chain import Chain

    rng = random.Random(3)
    for _ in range(50):
        user, target, unscored = example(
            rng,
            context="answer+peer",
            variant=variant,
            steps=4,
            operand_max=3,
            error_rate=0.0,
            modulus=10,
            slip_rate=1.0,
        )
        assert len(unscored) == 1
        start, end = unscored[0]
        *lines, answer_line = target.split("\n")
        wrong = []
        for line in lines:  # "7+3=0": value, op, operand, result
            value, op, operand, result = int(line[0]), line[1], int(line[2]), int(line[4])
            expected = (value + (operand if op == "+" else -operand)) % 10
            wrong.append(result != expected)
        assert sum(wrong) == 1  # exactly one slip
        slip_line = wrong.index(True)
        assert target[start:end] == lines[slip_line][4] and start == 6 * slip_line + 4
        for previous, line in zip(lines, lines[1:]):
            assert line[0] == previous[4]  # every later line starts from the value written, slip included
        assert answer_line == f"Answer: {lines[-1][4]}"
        assert Chain  # the chain's own arithmetic is what `expected` recomputes


def test_pretraining_labels_leave_out_a_slip(tmp_path):
    from hsd.testbed.model import DEFAULT_TESTBED, _batches

    config = config_from_knobs(
        0, batch_size=4, train_steps=16, slip_rate=1.0, context_weights=(("answer+peer", 1.0),)
    )
    tokenizer = build_tokenizer()
    masked_inside_target = 0
    for input_ids, labels in _batches(config, tokenizer):
        for row in range(input_ids.size(0)):
            start = (input_ids[row] == tokenizer.convert_tokens_to_ids("<|assistant|>")).nonzero()[0, 0] + 1
            length = int((input_ids[row] != tokenizer.pad_token_id).sum())
            target_labels = labels[row, start:length]
            masked_inside_target += int((target_labels == -100).sum())
            assert int((target_labels == -100).sum()) == 1  # one digit per slip, mod 10
    assert masked_inside_target == 16 * 4
    assert DEFAULT_TESTBED.slip_rate > 0


def test_build_is_reproducible_from_its_seed(tiny_dir, tmp_path):
    again = build_testbed_model(0, cache_dir=tmp_path, **TINY)
    other_seed = build_testbed_model(1, cache_dir=tmp_path, **TINY)
    assert again.name == tiny_dir.name  # same config, same cache key
    assert _record(again)["weights_sha256"] == _record(tiny_dir)["weights_sha256"]
    assert _record(other_seed)["weights_sha256"] != _record(tiny_dir)["weights_sha256"]


def test_weights_do_not_depend_on_the_thread_count(tiny_dir, tmp_path):
    one_thread = build_testbed_model(0, cache_dir=tmp_path, threads=1, **TINY)
    two_threads = build_testbed_model(0, cache_dir=tmp_path / "2", threads=2, **TINY)
    assert _record(one_thread)["torch_threads"] == 1 and _record(two_threads)["torch_threads"] == 2
    assert _record(one_thread)["weights_sha256"] == _record(two_threads)["weights_sha256"]
    assert _record(one_thread)["weights_sha256"] == _record(tiny_dir)["weights_sha256"]


def test_second_call_returns_the_cached_directory_without_rebuilding(tiny_dir):
    stamp = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert build_testbed_model(0, cache_dir=tiny_dir.parent, **TINY) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_resolving_the_testbed_announces_a_build_and_only_a_build(tiny_dir, tmp_path):
    from hsd.models import testbed_model

    said: list[str] = []
    assert testbed_model("testbed", said.append, cache_dir=tiny_dir.parent, **TINY) == tiny_dir
    assert said == []  # a cached build: nothing to announce
    built = testbed_model("testbed:seed=0", said.append, cache_dir=tmp_path, **TINY)
    assert len(said) == 1 and "hsd testbed build --seed 0" in said[0] and str(tmp_path) in said[0]
    assert _record(built)["weights_sha256"] == _record(tiny_dir)["weights_sha256"]


def test_force_rebuilds_in_place(tiny_dir):
    before = _record(tiny_dir)["weights_sha256"]
    assert build_testbed_model(0, cache_dir=tiny_dir.parent, force=True, **TINY) == tiny_dir
    assert _record(tiny_dir)["weights_sha256"] == before


def test_directory_loads_as_a_causal_lm_that_stops_at_eos(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.model_type == "llama"
    assert (
        model.generation_config.eos_token_id
        == tokenizer.eos_token_id
        == tokenizer.convert_tokens_to_ids("<|end|>")
    )
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Mod 10, in order: 7 +3"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert prompt["input_ids"][0, -1].item() == tokenizer.convert_tokens_to_ids("<|assistant|>")
    torch.manual_seed(0)
    out = model.generate(**prompt, do_sample=True, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 8


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HSD_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path / "testbed"
    monkeypatch.delenv("HSD_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "hsd" / "testbed"
    assert cache_root(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize(
    "knobs, name",
    [
        ({"train_stepz": 3}, "train_stepz"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"operand_max": 10}, "operand_max"),
    ],
)
def test_bad_knobs_name_themselves(knobs, name):
    with pytest.raises(ValueError, match=name):
        config_from_knobs(0, **knobs)


def test_cli_build_prints_the_model_directory(tmp_path):
    env = {**os.environ, "HSD_CACHE_DIR": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "hsd",
        "testbed",
        "build",
        "--knob",
        "train_steps=2",
        "--knob",
        "batch_size=2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == tmp_path / "testbed"
    assert _record(path)["config"]["train_steps"] == 2


def test_cli_rejects_an_unknown_knob(tmp_path):
    env = {**os.environ, "HSD_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "hsd", "testbed", "build", "--knob", "layers=9"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "layers" in result.stderr


def test_testbed_model_names_carry_the_long_chain_knobs():
    from hsd.models import testbed_options

    assert testbed_options("testbed") == (0, {})
    assert testbed_options("testbed:seed=2,steps=16,error_rate=0.05") == (
        2,
        {"steps_range": [16, 16], "error_rate": 0.05},
    )
    with pytest.raises(ValueError, match="unknown testbed option 'layers'"):
        testbed_options("testbed:layers=4")
    with pytest.raises(ValueError, match="steps='x' is not a number"):
        testbed_options("testbed:steps=x")
