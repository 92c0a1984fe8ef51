"""`install_pass_forward`: the model's own forward kept, the teacher passes give the model's own hidden
states, and installing twice wraps once."""

from __future__ import annotations

import inspect

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hsd.teacher.prefix import distinct_prefixes
from hsd.trainer.passes import PassForward, install_pass_forward, teacher_hidden


def test_installed_forward_keeps_the_model_and_serves_both_teacher_passes():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 50, (4, 7))
    ids[2:, :3] = ids[0, :3]  # rows 0, 2 and 3 share a prefix
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # row 1 left-padded
    inputs = {  # teacher prompts: the first 3 tokens; completions: the last 4
        "teacher_prompt_ids": ids[:, :3],
        "teacher_prompt_mask": mask[:, :3],
        "completion_ids": ids[:, 3:],
        "completion_mask": mask[:, 3:],
    }
    rows = torch.ones(4, dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        install_pass_forward(model)
        wrapper = model.forward
        install_pass_forward(model)
        assert model.forward is wrapper and isinstance(wrapper, PassForward)
        assert "input_ids" in inspect.signature(model.forward).parameters
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits)
        hidden = teacher_hidden(model, inputs, rows, prefix_cache=False)  # predicts the last 4 tokens
        torch.testing.assert_close(model.lm_head(hidden), logits[:, -5:-1])
        assert len(distinct_prefixes(ids[:, :3], mask[:, :3])[0]) == 2
        shared = teacher_hidden(model, inputs, rows, prefix_cache=True)  # each distinct prefix run once
    torch.testing.assert_close(shared, hidden, rtol=1e-5, atol=1e-5)
