"""LoRA adapter runs (peft) on a tiny Llama: every teacher kind trains the adapter only, with no model copy,
and the loss and its gradients are those of the same adapter injected into the model without peft's wrapper."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from scripted import scripted_trainer
from transformers import AutoModelForCausalLM

from hsd.trainer.adapters import TEACHER_ADAPTER, adapter_parameters

LORA = dict(r=4, target_modules=["q_proj", "v_proj"])


def lora_values(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """One adapter's weights, named without the adapter (so two adapters compare name by name)."""
    return {n.replace(f".{adapter}.", "."): p.detach().clone() for n, p in adapter_parameters(model, adapter)}


def base_values(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("teacher, beta", [("live", 0.0), ("ema", 0.0), ("frozen", 0.0), ("live", 1e-3)])
def test_every_teacher_kind_trains_the_adapter_without_a_copy(tiny_model_dir, tmp_path, teacher, beta):
    """The issue's table: HSDTrainer(..., peft_config=LoraConfig(...)) trains two steps and changes the
    adapter, never the base; the frozen teacher and the reference are the adapter switched off."""
    trainer = scripted_trainer(
        tiny_model_dir, tmp_path, peft_config=LoraConfig(**LORA), max_steps=2, teacher_weights=teacher,
        beta=beta, teacher_ema_decay=0.5,
    )  # fmt: skip
    policy = trainer.model
    assert isinstance(policy, PeftModel) and trainer.teacher_model is None and trainer.ref_model is None
    adapter, base = lora_values(policy), base_values(policy)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    after = lora_values(policy)
    assert all(not torch.equal(adapter[n], after[n]) for n in adapter if ".lora_B." in n)
    assert all(torch.equal(v, p) for (n, v), p in zip(base.items(), base_values(policy).values()))
    kind = trainer.adapter_teacher
    if teacher == "frozen":  # LoRA starts with B = 0: the initial policy is the adapter switched off
        assert kind is not None and kind.adapter is None
        assert set(policy.peft_config) == {"default"}
    if teacher == "ema":  # an EMA of the adapter: teacher <- 0.5 teacher + 0.5 trained, after each step
        assert kind is not None and kind.adapter == TEACHER_ADAPTER
        ema = lora_values(policy, TEACHER_ADAPTER)
        assert all(not torch.equal(ema[n], after[n]) and not torch.equal(ema[n], adapter[n]) for n in ema
                   if ".lora_B." in n)  # fmt: skip
        assert not any(p.requires_grad for _, p in adapter_parameters(policy, TEACHER_ADAPTER))
    if beta:
        assert trainer.beta == beta
        assert next(h for h in trainer.state.log_history if h.get("step") == 2)["kl"] > 0


@pytest.mark.parametrize("method", ["grpo_opsd", "rlsd", "gspo"])
def test_the_mixed_and_grpo_family_methods_train_an_adapter(tiny_model_dir, tmp_path, method):
    """A distillation + GRPO mix, RLSD's teacher-weighted advantages and a TRL GRPO-family loss, on LoRA."""
    trainer = scripted_trainer(
        tiny_model_dir, tmp_path, peft_config=LoraConfig(**LORA), method=method, teacher_weights="ema"
    )
    adapter = lora_values(trainer.model)
    trainer.train()
    after = lora_values(trainer.model)
    assert any(not torch.equal(adapter[n], after[n]) for n in adapter if ".lora_B." in n)
    assert (trainer.adapter_teacher is not None) == trainer.args.needs_teacher


def test_an_adapter_that_is_not_the_identity_gets_a_frozen_copy(tiny_model_dir, tmp_path):
    """A PeftModel passed in, whose adapter already changes the model (B != 0): the frozen teacher is a
    copy of that adapter, kept as it was while the trained adapter moves."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(**LORA))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    start = lora_values(model)
    trainer = scripted_trainer(tiny_model_dir, tmp_path, model=model, max_steps=2, teacher_weights="frozen")
    assert trainer.adapter_teacher.adapter == TEACHER_ADAPTER
    trainer.train()
    frozen, trained = lora_values(trainer.model, TEACHER_ADAPTER), lora_values(trainer.model)
    assert all(torch.equal(frozen[n], start[n]) for n in start)
    assert any(not torch.equal(trained[n], start[n]) for n in start)


def _grads(trainer, inputs) -> tuple[float, dict[str, torch.Tensor]]:
    """The HSD loss on `inputs` and its gradient w.r.t. every LoRA parameter (names without peft's prefix)."""
    trainer.model.zero_grad()
    loss = trainer._distillation_loss(trainer.model, inputs)
    loss.backward()
    grads = {
        n.removeprefix("base_model.model."): p.grad.clone()
        for n, p in trainer.model.named_parameters()
        if "lora_" in n
    }
    return loss.item(), grads


@pytest.mark.parametrize("analytic", [True, False], ids=["worked-out-head", "autograd-head"])
def test_the_wrapper_changes_neither_loss_nor_adapter_gradients(tiny_model_dir, tmp_path, analytic):
    """With the adapter at initialisation (B = 0), the HSD loss through peft's wrapper equals the loss of the
    model without any adapter, and the loss and its gradient w.r.t. every adapter parameter equal those of
    the same adapter injected into the bare model (`inject_adapter_in_model`: no wrapper), on both heads."""
    common = dict(analytic_distill_head=analytic, divergence_chunk_size=8, teacher_prefix_cache=True)
    wrapped = scripted_trainer(tiny_model_dir, tmp_path / "w", peft_config=LoraConfig(**LORA), **common)
    bare = inject_adapter_in_model(LoraConfig(**LORA), AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    with torch.no_grad():  # the same adapter values in both
        values = {n.removeprefix("base_model.model."): p for n, p in wrapped.model.named_parameters()}
        for name, param in bare.named_parameters():
            if "lora_" in name:
                param.copy_(values[name])
    injected = scripted_trainer(tiny_model_dir, tmp_path / "i", model=bare, **common)
    plain = scripted_trainer(tiny_model_dir, tmp_path / "p", **common)
    wrapped.model.train()
    wrapped.current_gradient_accumulation_steps = 1
    inputs = wrapped._generate_and_score_completions(next(iter(wrapped.get_train_dataloader())))
    for trainer in (injected, plain):
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
    loss, grads = _grads(wrapped, inputs)
    bare_loss, bare_grads = _grads(injected, inputs)
    with torch.no_grad():
        plain_loss = plain._distillation_loss(plain.model, inputs).item()
    assert loss == pytest.approx(plain_loss, rel=1e-6) and loss == pytest.approx(bare_loss, rel=1e-6)
    assert sorted(grads) == sorted(bare_grads) and len(grads) == 8
    assert any(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, bare_grads[name], rtol=1e-5, atol=1e-9, msg=name)


def test_prompt_learning_adapters_are_refused_naming_the_config(tiny_model_dir, tmp_path):
    from peft import PrefixTuningConfig

    with pytest.raises(ValueError, match="PrefixTuningConfig .* is not supported: the teacher and student"):
        scripted_trainer(
            tiny_model_dir,
            tmp_path,
            peft_config=PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
        )


def test_analysis_log_probs_reach_through_the_wrapper(tiny_model_dir):
    """`hsd.analysis`' teacher-pass log-probs of a PeftModel (adapter not the identity) are those of the
    same model with the adapter merged in."""
    from hsd.analysis.credit import completion_logprobs

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(**LORA)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    sequences = [([5, 6, 7], [8, 9, 10]), ([5, 6, 7], [11, 12]), ([4, 6], [9])]

    def flat(m) -> list[float]:
        return [lp for row in completion_logprobs(m, sequences) for lp in row]

    wrapped, plain = flat(model), flat(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    merged = flat(model.merge_and_unload())
    assert wrapped == pytest.approx(merged, abs=1e-5) and wrapped != pytest.approx(plain, abs=1e-3)
