"""HSDTrainer on a tiny random Llama: TRL parity, teacher inputs, one step of distillation, config errors."""

from __future__ import annotations

import copy

import pytest
import torch
from scripted import GROUP, TRAINER_ARGS, arithmetic_dataset, exact_answer_reward, scripted_trainer
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from hsd import HSDConfig, HSDTrainer
from hsd.core.methods import METHODS
from hsd.trainer.passes import teacher_batch

COMMON = TRAINER_ARGS


def _trainer(model_dir, tmp_path, cls=HSDTrainer, config_cls=HSDConfig, **overrides):
    return scripted_trainer(model_dir, tmp_path / "out", cls=cls, config_cls=config_cls, **overrides)


def _batch(trainer):
    """One generation batch, scored, exactly as the training loop builds it."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch here
    raw = next(iter(trainer.get_train_dataloader()))
    return trainer._generate_and_score_completions(raw)


def test_grpo_method_loss_equals_trl_grpo_loss(tiny_model_dir, tmp_path):
    ours = _trainer(tiny_model_dir, tmp_path, method="grpo", beta=0.0)
    theirs = _trainer(tiny_model_dir, tmp_path, cls=GRPOTrainer, config_cls=GRPOConfig, loss_type="grpo")
    inputs = _batch(theirs)
    assert ours.args.distill_weight == 0 and ours.args.pg_weight == 1
    ours_loss = ours.compute_loss(ours.model, copy.copy(inputs))
    theirs_loss = theirs.compute_loss(theirs.model, copy.copy(inputs))
    assert torch.isfinite(theirs_loss)
    assert torch.equal(ours_loss, theirs_loss)
    # and the advantages our batch builder produces are TRL's
    assert torch.equal(_batch(ours)["advantages"], inputs["advantages"])


def test_teacher_inputs_carry_peer_and_answer_and_end_with_student_ids(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, method="hsd")
    tok = trainer.processing_class
    inputs = _batch(trainer)
    peers, contexts = trainer.last_plan.peers, trainer.last_plan.contexts
    n = inputs["completion_ids"].size(0)
    ids, mask = teacher_batch(inputs, torch.arange(n))
    completions = [
        row[m.bool()].tolist() for row, m in zip(inputs["completion_ids"], inputs["completion_mask"])
    ]
    seen_fallback = seen_peer = 0
    for i in range(n):
        seq = ids[i][mask[i].bool()].tolist()
        comp = completions[i]
        assert seq[-len(comp) :] == comp, "teacher sequence must end with the student's exact completion ids"
        prompt_text = tok.decode(seq[: len(seq) - len(comp)])
        context = contexts[i]
        assert context is not None  # fallback on and successes distilled: every rollout gets a teacher
        assert f"The correct final answer is: {context.answer}" in prompt_text
        if peers[i] is not None:
            seen_peer += 1
            assert peers[i] != i and peers[i] // GROUP == i // GROUP
            peer_text = tok.decode(completions[peers[i]], skip_special_tokens=True)
            assert f"<solution>\n{peer_text}\n</solution>" in prompt_text
        else:
            seen_fallback += 1
            assert "<solution>" not in prompt_text and context.fallback
    assert seen_peer and seen_fallback


def test_group_without_success_and_all_success_groups(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, method="hsd", fallback=False, distill_successes=False)
    inputs = _batch(trainer)
    tok = trainer.processing_class
    contexts, peers = trainer.last_plan.contexts, trainer.last_plan.peers
    n = inputs["completion_ids"].size(0)
    for g in range(n // GROUP):
        rows = range(g * GROUP, (g + 1) * GROUP)
        question = tok.decode(inputs["prompt_ids"][g * GROUP], skip_special_tokens=True)
        first = question.strip()[0]
        if first == "0":  # no success in the group: no peer, and with fallback off, no distillation
            assert all(peers[i] is None and contexts[i] is None for i in rows)
        if first == "3":  # every rollout succeeds: successes are not distilled here
            assert all(contexts[i] is None for i in rows)
            assert all(peers[i] is not None for i in rows)
    assert inputs["distill_mask"].sum() < n


def test_a_batch_with_nothing_to_distil_trains_a_zero_step(tiny_model_dir, tmp_path):
    """Fallback and success distillation off, and only groups with no success (0+b) or all successes
    (3+b): no row is distilled. The step runs (no 'does not require grad' error), with a zero loss and
    unchanged weights, and says so in its metrics."""
    from datasets import Dataset

    trainer = _trainer(tiny_model_dir, tmp_path, method="hsd", fallback=False, distill_successes=False)
    rows = [
        {"prompt": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)}
        for a in (0, 3)
        for b in (1, 2)
    ]
    trainer.train_dataset = Dataset.from_list(rows)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert logged["loss"] == 0.0 and logged["hsd/distilled_frac"] == 0.0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


def test_one_hsd_step_lowers_the_batch_divergence(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, method="hsd", learning_rate=3e-2)
    inputs = _batch(trainer)
    model = trainer.model
    with torch.no_grad():
        before = trainer._distillation_loss(model, inputs).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = trainer._distillation_loss(model, inputs)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = trainer._distillation_loss(model, inputs).item()
    assert before > 0
    assert after < before


def test_train_runs_and_logs_hsd_metrics(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, method="hsd", max_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for key in (
        "hsd/coverage",
        "hsd/peer_frac",
        "hsd/fallback_frac",
        "hsd/groups_no_success_frac",
        "hsd/groups_all_success_frac",
        "hsd/divergence_mean",
        "hsd/abs_credit_at_tau",
        "hsd/abs_credit_elsewhere",
        "hsd/tau_median",
        "hsd/distilled_tokens",
        "time/rollout",
        "time/scoring",
        "time/teacher",
        "time/update",
    ):
        assert key in logs[0], key
    # 0+0: no success; 1+0 and 2+0: two successes, two failures; 3+0: all succeed (scripted)
    assert logs[0]["hsd/coverage"] == pytest.approx(4 / 16)  # failures with a successful peer (Eq. 12)
    assert logs[0]["hsd/peer_frac"] == pytest.approx(12 / 16)  # teachers that see a peer, successes too


# hsd and grpo train in the tests above; sdft needs a reference solution, which this data does not have
@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("hsd", "grpo", "sdft")])
def test_every_preset_trains_one_step(tiny_model_dir, tmp_path, method):
    trainer = _trainer(tiny_model_dir, tmp_path, method=method)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_ema_and_frozen_teachers_are_separate_copies(tiny_model_dir, tmp_path):
    for weights in ("ema", "frozen"):
        trainer = _trainer(tiny_model_dir, tmp_path, method="hsd", teacher_weights=weights)
        before = [p.detach().clone() for p in trainer.teacher_model.parameters()]
        trainer.train()
        after = list(trainer.teacher_model.parameters())
        changed = any(not torch.equal(a, b) for a, b in zip(before, after))
        assert changed == (weights == "ema")


def test_reward_function_that_raises_names_itself(tiny_model_dir, tmp_path):
    def broken_reward(prompts, completions, **kwargs):
        raise KeyError("score")

    trainer = scripted_trainer(
        tiny_model_dir, tmp_path / "o", reward_funcs=broken_reward, train_dataset=arithmetic_dataset(16)
    )
    with pytest.raises(RuntimeError, match="broken_reward"):
        trainer.train()


def test_dataset_without_answer_column_is_rejected(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = arithmetic_dataset(4).rename_column("answer", "solution")
    with pytest.raises(ValueError, match="'answer'"):
        HSDTrainer(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            reward_funcs=exact_answer_reward,
            args=HSDConfig(output_dir=str(tmp_path / "o"), **COMMON),
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        HSDConfig(output_dir="x", use_cpu=True, method="ppo")
    with pytest.raises(ValueError, match="peer_rule"):
        HSDConfig(output_dir="x", use_cpu=True, peer_rule="best")
    with pytest.raises(ValueError, match="divergence_alpha"):
        HSDConfig(output_dir="x", use_cpu=True, divergence="jsd", divergence_alpha=1.5)


def test_presets_set_trl_fields():
    assert HSDConfig(output_dir="x", use_cpu=True, method="dapo").epsilon_high == 0.28
    assert HSDConfig(output_dir="x", use_cpu=True, method="gspo").importance_sampling_level == "sequence"
    assert HSDConfig(output_dir="x", use_cpu=True, method="dr_grpo").loss_type == "dr_grpo"
    hsd = HSDConfig(output_dir="x", use_cpu=True, method="hsd")
    assert (hsd.context, hsd.distill_weight, hsd.pg_weight) == ("hsd", 1.0, 0.0)
    mixed = HSDConfig(output_dir="x", use_cpu=True, method="grpo_opsd")
    assert (mixed.context, mixed.distill_weight, mixed.pg_weight) == ("opsd", 0.5, 0.5)


@pytest.mark.parametrize("method", ["hsd", "grpo"])
def test_old_policy_logps_are_computed_only_for_a_policy_gradient(
    tiny_model_dir, tmp_path, monkeypatch, method
):
    """Two optimizer steps from one generation batch (steps_per_generation=2), where TRL computes the old
    policy's log-probs. Pure HSD (no policy-gradient term) skips that forward and trains exactly as with it;
    GRPO, whose ratio reads them, keeps it."""
    calls = []
    trl_logps = GRPOTrainer._get_per_token_logps_and_entropies

    def counted(self, model, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return trl_logps(self, model, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counted)

    def train(skip: bool):
        calls.clear()
        monkeypatch.setattr(HSDTrainer, "_old_logps_unused", lambda self: skip and self.args.pg_weight == 0)
        trainer = _trainer(
            tiny_model_dir, tmp_path, method=method, steps_per_generation=2, max_steps=2,
            train_dataset=arithmetic_dataset(8),
        )  # fmt: skip
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return losses, [p.detach().clone() for p in trainer.model.parameters()], calls.count(False)

    losses, weights, no_grad_calls = train(skip=True)
    with_losses, with_weights, with_no_grad_calls = train(skip=False)
    assert len(losses) == 2 and losses == with_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, with_weights))
    assert with_no_grad_calls == 1  # one generation batch: one old-policy forward
    assert no_grad_calls == (0 if method == "hsd" else 1)
