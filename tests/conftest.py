"""Shared fixtures: a tiny random-init Llama with a character-level tokenizer and a chat template."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of waiting on the network
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "benchmarks"  # our own problems, each format


@pytest.fixture
def full_data() -> Path:
    """The complete benchmark files, from $HSD_DATA_DIR (`.ci/run` sets it where they exist); the test skips,
    naming the variable, without them."""
    folder = os.environ.get("HSD_DATA_DIR")
    if not folder or not (Path(folder) / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(
            "needs the complete benchmark files: set HSD_DATA_DIR to a folder holding gsm8k/, math/, code/"
        )
    return Path(folder)


def build_char_tokenizer():
    """The character-level tokenizer with a chat template that `hsd bench` uses, one token per character."""
    from hsd.bench.fixtures import build_tokenizer

    return build_tokenizer()


def build_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama + char tokenizer: loads through AutoModelForCausalLM / AutoTokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
