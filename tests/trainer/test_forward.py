"""`install_hsd_forward`: the model's own forward kept, the teacher-pass modes give the model's own hidden
states, and installing twice wraps once."""

from __future__ import annotations

import inspect

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hsd.teacher.prefix import distinct_prefixes
from hsd.trainer.forward import HSDForward, PrefixSpec, install_hsd_forward


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
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        install_hsd_forward(model)
        wrapper = model.forward
        install_hsd_forward(model)
        assert model.forward is wrapper and isinstance(wrapper, HSDForward)
        assert "input_ids" in inspect.signature(model.forward).parameters
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits)
        hidden = model(input_ids=ids, attention_mask=mask, hsd_hidden=4)  # predicts the last 4 tokens
        torch.testing.assert_close(model.lm_head(hidden), logits[:, -5:-1])
        prefix_ids, prefix_mask, prefix_of_row = distinct_prefixes(ids[:, :3], mask[:, :3])
        assert len(prefix_ids) == 2
        spec = PrefixSpec(prefix_of_row, ids[:, 3:], mask[:, 3:])
        shared = model(input_ids=prefix_ids, attention_mask=prefix_mask, hsd_prefix=spec)
    torch.testing.assert_close(shared, hidden, rtol=1e-5, atol=1e-5)
