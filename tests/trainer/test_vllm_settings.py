"""hsd/trainer/vllm_cpu.py's pure parts, without vLLM: the engine settings a user did or did not set, and
which policies reach vLLM as a converted folder (cached)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hsd.trainer import vllm_cpu


def _args(**fields):
    return SimpleNamespace(**{"vllm_dtype": None, "vllm_enforce_eager": None, **fields})


def test_engine_settings_fill_only_what_the_user_left_unset_and_only_on_the_cpu():
    policy = SimpleNamespace(dtype=torch.float32)
    assert vllm_cpu.engine_settings(_args(), policy, cpu=True) == {"dtype": "float32", "enforce_eager": True}
    assert vllm_cpu.engine_settings(_args(), policy, cpu=False) == {}  # a GPU: TRL's call unchanged
    mine = _args(vllm_dtype="bfloat16", vllm_enforce_eager=False)
    expected = {"dtype": "bfloat16", "enforce_eager": False}
    assert vllm_cpu.engine_settings(mine, policy, cpu=True) == expected
    assert vllm_cpu.engine_settings(mine, policy, cpu=False) == expected


def test_only_a_local_folder_without_a_checkpoint_is_converted_once(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HSD_CACHE_DIR", str(tmp_path / "cache"))
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert vllm_cpu.engine_model(policy, tokenizer) is None  # a checkpoint folder: as it is
    policy.name_or_path = "someone/some-model"
    assert vllm_cpu.engine_model(policy, tokenizer) is None  # a hub id: as it is
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "model.Q4.gguf").write_bytes(b"GGUF")
    policy.name_or_path = str(gguf_dir)
    folder = vllm_cpu.engine_model(policy, tokenizer)
    assert folder.startswith(str(tmp_path / "cache" / "vllm-models"))
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert all(
        torch.equal(a, b) for a, b in zip(policy.state_dict().values(), reloaded.state_dict().values())
    )
    written = (Path(folder) / "config.json").stat().st_mtime_ns
    assert vllm_cpu.engine_model(policy, tokenizer) == folder  # cached: the same folder, not written again
    assert (Path(folder) / "config.json").stat().st_mtime_ns == written
