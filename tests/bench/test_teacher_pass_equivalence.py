"""Each teacher-pass optimisation gives the plain path's loss and gradients through `HSDTrainer`.

HSD_TEST_DEVICE=cuda (and HSD_TEST_DTYPE=bfloat16) run the same tests on a GPU, the model in that dtype,
within that dtype's tolerance (benchmarks/gpu/run.sh does); the default is the CPU in float32.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import transformers
from datasets import Dataset

from hsd import HSDConfig, HSDTrainer
from hsd.analysis.credit import completion_logprobs
from hsd.bench.fixtures import (
    OPTIMISATIONS_OFF,
    build_tokenizer,
    fixed_batch,
    scripted_rollouts,
    table_reward,
)
from hsd.core.distill import analytic_head_refusal, distill_terms
from hsd.core.losses import aggregate, reference_kl, token_divergence
from hsd.teacher.prefix import distinct_prefixes, shared_prefix_refusal
from hsd.trainer.passes import teacher_batch

GROUP, QUESTIONS, LENGTH = 4, 4, 12
DEVICE = os.environ.get("HSD_TEST_DEVICE", "cpu")
DTYPE = getattr(torch, os.environ.get("HSD_TEST_DTYPE", "float32"))
# bfloat16 keeps 8 bits of mantissa: two computations of the same loss agree to a few parts in 256, and a
# gradient summed over many rounded terms to a few percent of its norm
BF16_LOSS_RTOL, BF16_GRAD_REL_ERROR = 2e-2, 5e-2


# Each family a user is likely to train, as transformers builds it by default (its peculiarity in the
# comment), at a tiny random-init size: (model class, config class, fields beyond the shared tiny shape).
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {}),  # biased q/k/v projections
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {}),  # q / k norm
    "mistral": ("MistralForCausalLM", "MistralConfig", {}),  # sliding-window attention (4096: v0.1)
    "mistral-no-window": ("MistralForCausalLM", "MistralConfig", {"sliding_window": None}),  # v0.2 on
    "gemma": ("GemmaForCausalLM", "GemmaConfig", {}),  # scaled, tied embeddings
    # final logit soft-capping (30 in Gemma 2; a tiny model's logits are small, so a cap that bites), sliding
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", {"final_logit_softcapping": 0.5}),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", {}),  # sliding layers, q / k norm, tied
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {}),  # fused qkv and gate / up projections
}


def tiny_model(family: str, tokenizer):
    """A random-init 2-layer model of `family` (hidden 32, 4 heads of 8, 2 key / value heads)."""
    model_cls, config_cls, extra = FAMILIES[family]
    config = getattr(transformers, config_cls)(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )
    return getattr(transformers, model_cls)(config)


_BUILT: dict = {}


def _trainer(tmp_path, family: str = "llama", **overrides) -> HSDTrainer:
    """A tiny HSDTrainer on a fixed batch, built once per family and set of overrides (tests reset every
    switch)."""
    key = (family, *sorted(overrides.items()))
    if key in _BUILT:
        return _BUILT[key]
    tokenizer = build_tokenizer(400)
    batch = fixed_batch(tokenizer, QUESTIONS, GROUP, LENGTH, seed=3, p=0.5)
    torch.manual_seed(0)
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=QUESTIONS * GROUP,
        num_generations=GROUP,
        max_completion_length=LENGTH,
        report_to=[],
        use_cpu=DEVICE == "cpu",
        bf16=False,  # the model itself is in DTYPE
        seed=0,
        temperature=0.8,
    )
    trainer = HSDTrainer(
        tiny_model(family, tokenizer).to(DEVICE, DTYPE),
        reward_funcs=table_reward(batch),
        args=HSDConfig(**{**args, **overrides}),
        train_dataset=Dataset.from_list(batch.rows),
        processing_class=tokenizer,
        rollout_func=scripted_rollouts(batch, tokenizer),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.inputs = trainer._generate_and_score_completions(
        [row for row in batch.rows for _ in range(GROUP)]
    )
    _BUILT[key] = trainer
    return trainer


def _loss_and_grads(trainer, inputs, **switches):
    for name, value in switches.items():
        setattr(trainer.args, name, value)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same(a, b, rtol=1e-4, atol=1e-6):
    """Equal loss and gradients: elementwise in float32; in bfloat16, the loss to BF16_LOSS_RTOL and each
    gradient to a relative error ||g_a - g_b|| / ||g_b|| of at most BF16_GRAD_REL_ERROR."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.isfinite(loss_a) and loss_a.abs() > 0
    assert grads_a.keys() == grads_b.keys() and grads_a
    if DTYPE == torch.bfloat16:
        torch.testing.assert_close(loss_a.float(), loss_b.float(), rtol=BF16_LOSS_RTOL, atol=0)
        for name in grads_a:
            a_, b_ = grads_a[name].float(), grads_b[name].float()
            error = (a_ - b_).norm() / b_.norm().clamp_min(1e-12)
            assert error <= BF16_GRAD_REL_ERROR, f"{name}: relative error {error:.3g}"
        return
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


def _own_token_logps(trainer, inputs, student_logits=None):
    """log p(o_t) [B, T] from the model's own logits of the student sequences, divided by the temperature."""
    T = inputs["completion_ids"].size(1)
    if student_logits is None:
        student_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        student_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with torch.no_grad():
            logits = trainer.model(input_ids=student_ids, attention_mask=student_mask).logits
        student_logits = logits[:, -T - 1 : -1]
    logp = torch.log_softmax(student_logits.float() / trainer.args.temperature, dim=-1)
    return logp.gather(-1, inputs["completion_ids"][..., None])[..., 0]


def _own_logits_loss_and_grads(trainer, inputs):
    """Eq. 10 / 13 (+ beta KL to the reference) from the model's own [B, T, V] logits of both passes: what
    every head and teacher pass must reproduce."""
    model, T = trainer.model, inputs["completion_ids"].size(1)
    model.zero_grad()
    rows = torch.arange(inputs["completion_ids"].size(0), device=inputs["completion_ids"].device)
    teacher_ids, teacher_mask = teacher_batch(inputs, rows)
    with torch.no_grad():
        teacher_logits = model(input_ids=teacher_ids, attention_mask=teacher_mask).logits[:, -T - 1 : -1]
    student_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    student_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    student_logits = model(input_ids=student_ids, attention_mask=student_mask).logits[:, -T - 1 : -1]
    temperature = trainer.args.temperature
    div = token_divergence(teacher_logits.float() / temperature, student_logits.float() / temperature)
    mask = inputs["completion_mask"].float()
    loss = aggregate(div, mask * inputs["distill_mask"][:, None].float(), "sequence_mean")
    if trainer.beta:
        kl = reference_kl(_own_token_logps(trainer, inputs, student_logits), inputs["ref_per_token_logps"])
        loss = loss + trainer.beta * aggregate(kl, mask, "sequence_mean")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_logp_readers_give_own_logps(trainer, inputs):
    """The perplexity peer rules' mean log-prob and the analysis' per-token log-probs equal the model's own."""
    own_BT, mask_BT = _own_token_logps(trainer, inputs).cpu(), inputs["completion_mask"].cpu()
    tol = (
        dict(rtol=BF16_LOSS_RTOL, atol=BF16_LOSS_RTOL)
        if DTYPE == torch.bfloat16
        else dict(rtol=1e-4, atol=1e-5)
    )
    mean_own = (own_BT * mask_BT).sum(1) / mask_BT.sum(1)
    torch.testing.assert_close(torch.tensor(trainer._mean_completion_logps(inputs)), mean_own, **tol)
    row = int(inputs["prompt_mask"].sum(1).argmax())  # a prompt without padding: the same positions
    n = int(mask_BT[row].sum())
    sequence = (inputs["prompt_ids"][row].tolist(), inputs["completion_ids"][row, :n].tolist())
    logps = completion_logprobs(trainer.model, [sequence, sequence], temperature=trainer.args.temperature)
    torch.testing.assert_close(torch.tensor(logps), own_BT[row, :n].expand(2, n), **tol)


PLAIN = OPTIMISATIONS_OFF  # the plain path: every teacher-pass optimisation off
FAST = dict(
    skip_undistilled_teacher=True,
    teacher_prefix_cache=True,
    teacher_inference_mode=True,
    analytic_distill_head=True,
    distill_grad_cache_mb=1024,
)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_skipping_undistilled_rows_keeps_loss_and_gradients(tmp_path, beta):
    trainer = _trainer(tmp_path, fallback=False, distill_successes=False, beta=beta)
    inputs = trainer.inputs
    distilled = inputs["distill_mask"].bool()
    assert 0 < distilled.sum() < distilled.numel()  # some rows get no teacher at all
    plain = _loss_and_grads(trainer, inputs, **PLAIN)
    _assert_same(plain, _loss_and_grads(trainer, inputs, **{**PLAIN, "skip_undistilled_teacher": True}))


@pytest.mark.parametrize("peer_rule", ["uniform", "uniform_shared"])
def test_shared_prefix_cache_keeps_loss_and_gradients(tmp_path, peer_rule):
    trainer = _trainer(tmp_path, peer_rule=peer_rule)
    trainer.model.gradient_checkpointing_enable()  # the cache must survive checkpointed layers
    inputs = trainer.inputs
    prefixes, _, prefix_of_row = distinct_prefixes(
        inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]
    )
    assert len(prefixes) < len(prefix_of_row)  # rows do share prefixes
    plain = _loss_and_grads(trainer, inputs, **PLAIN)
    _assert_same(plain, _loss_and_grads(trainer, inputs, **{**PLAIN, "teacher_prefix_cache": True}))


def test_one_shared_peer_per_group_means_fewer_distinct_prefixes(tmp_path):
    counts = {}
    for rule in ("uniform", "uniform_shared"):
        trainer = _trainer(tmp_path, peer_rule=rule)
        inputs = trainer.inputs
        counts[rule] = len(distinct_prefixes(inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"])[0])
    # uniform_shared: at most two prefixes per group (the shared peer, and the peer of that peer)
    assert counts["uniform_shared"] <= 2 * QUESTIONS
    assert counts["uniform_shared"] <= counts["uniform"]


def test_inference_mode_teacher_keeps_loss_and_gradients(tmp_path):
    trainer = _trainer(tmp_path)
    inputs = trainer.inputs
    plain = _loss_and_grads(trainer, inputs, **PLAIN)
    _assert_same(plain, _loss_and_grads(trainer, inputs, **{**PLAIN, "teacher_inference_mode": True}))


def test_all_optimisations_together_keep_loss_and_gradients(tmp_path):
    trainer = _trainer(tmp_path, fallback=False, beta=0.05)
    inputs = trainer.inputs
    plain = _loss_and_grads(trainer, inputs, **PLAIN)
    _assert_same(plain, _loss_and_grads(trainer, inputs, **FAST))


@pytest.mark.parametrize(("analytic", "grad_cache_mb"), [(False, 0), (True, 0), (True, 1024)])
def test_chunked_head_matches_naive_full_logits_through_the_trainer(tmp_path, analytic, grad_cache_mb):
    trainer = _trainer(tmp_path, divergence_chunk_size=7)  # several chunks, the last one partial
    inputs = trainer.inputs
    chunked = _loss_and_grads(
        trainer, inputs, analytic_distill_head=analytic, distill_grad_cache_mb=grad_cache_mb
    )

    _assert_same(_own_logits_loss_and_grads(trainer, inputs), chunked)


@pytest.mark.parametrize("logp_grad", [False, True])  # log pS(o_t) gets a gradient with the reference KL
@pytest.mark.parametrize("keep_grad_bytes", [0, float("inf")])
@pytest.mark.parametrize("clip,teacher_temperature", [(None, 1.0), (0.3, 1.0), (None, 0.5)])
def test_worked_out_gradient_head_equals_autograd_head(clip, teacher_temperature, keep_grad_bytes, logp_grad):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=True).to(DEVICE)
    student = torch.randn(50, 16).to(DEVICE).requires_grad_()
    teacher, ids = torch.randn(50, 16).to(DEVICE), torch.randint(0, 300, (50,)).to(DEVICE)
    weights_div, weights_logp = torch.randn(50).to(DEVICE), torch.randn(50).to(DEVICE) * logp_grad
    results = []
    for analytic in (False, True):
        head.zero_grad()
        student.grad = None
        terms = distill_terms(
            teacher,
            student,
            ids,
            head,
            temperature=0.7,
            clip=clip,
            chunk_size=16,
            teacher_temperature=teacher_temperature,
            keep_grad_bytes=keep_grad_bytes,
            analytic=analytic,
        )
        ((terms.divergence * weights_div).sum() + (terms.student_logp * weights_logp).sum()).backward()
        results.append([*terms, student.grad, head.weight.grad, head.bias.grad])
    for ours, reference in zip(results[1], results[0]):
        torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-4, atol=1e-5)


def test_worked_out_gradient_head_in_bfloat16_stays_close_to_float32():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=False).to(DEVICE)
    student = torch.randn(40, 32).to(DEVICE).requires_grad_()
    teacher, ids = torch.randn(40, 32).to(DEVICE), torch.randint(0, 500, (40,)).to(DEVICE)
    div32 = distill_terms(teacher, student, ids, head).divergence
    div32.sum().backward()
    grad32 = student.grad.clone()
    head16 = torch.nn.Linear(32, 500, bias=False).to(DEVICE, torch.bfloat16)
    head16.weight.data.copy_(head.weight.data)
    student16 = student.detach().to(torch.bfloat16).requires_grad_()
    div16, s_logp16, *_ = distill_terms(teacher.to(torch.bfloat16), student16, ids, head16)
    assert div16.dtype == torch.float32 and s_logp16.dtype == torch.float32  # the math stays in fp32
    div16.sum().backward()
    assert student16.grad.dtype == torch.bfloat16 and head16.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(div16, div32.detach(), rtol=0.05, atol=0.02)
    torch.testing.assert_close(student16.grad.float(), grad32, rtol=0.05, atol=0.02)


# The families whose teacher-pass optimisations fall back to the plain path, and the reason's key words.
PREFIX_FALLS_BACK = {"mistral": "[0, 1] of 2", "gemma2": "[0] of 2", "gemma3": "[0, 1] of 2"}
HEAD_FALLS_BACK = {"gemma2": "final_logit_softcapping=0.5"}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_its_own_logits_loss_and_gradients_on_both_paths(tmp_path, family, caplog):
    with caplog.at_level(logging.WARNING, logger="hsd.trainer.trainer"):
        trainer = _trainer(tmp_path, family, beta=0.05, divergence_chunk_size=7)  # several head chunks
        inputs = trainer.inputs
        own = _own_logits_loss_and_grads(trainer, inputs)
        _assert_same(own, _loss_and_grads(trainer, inputs, **PLAIN))
        _assert_same(own, _loss_and_grads(trainer, inputs, **FAST))  # a second step: no second log line
        _assert_logp_readers_give_own_logps(trainer, inputs)
    config = trainer.model.config
    assert (shared_prefix_refusal(config) is None) == (family not in PREFIX_FALLS_BACK)
    assert (analytic_head_refusal(config) is None) == (family not in HEAD_FALLS_BACK)
    lines = [r.getMessage() for r in caplog.records if type(trainer.model).__name__ in r.getMessage()]
    expected = [PREFIX_FALLS_BACK.get(family), HEAD_FALLS_BACK.get(family)]
    assert len(lines) == (expected != [None, None])
    for words in filter(None, expected):
        assert words in lines[0]
