"""The README's Python example runs as written (one step of 16-token completions instead of ten steps of 64)
on the real SmolLM2-135M GGUF."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_python_example_trains_smollm2(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "HSDTrainer(" in block and "max_steps=10" in block and "max_completion_length=64" in block
    code = block.replace("max_steps=10", "max_steps=1, logging_steps=1")
    code = code.replace("max_completion_length=64", "max_completion_length=16").replace(
        '"runs/hsd"', repr(str(tmp_path / "run"))
    )
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    history = scope["trainer"].state.log_history
    step = next(h for h in history if "loss" in h)
    assert scope["trainer"].state.global_step == 1
    assert 0.0 <= step["hsd/coverage"] <= 1.0
    assert step["hsd/distilled_tokens"] > 0  # answer-only fallback or a peer: every rollout had a teacher
