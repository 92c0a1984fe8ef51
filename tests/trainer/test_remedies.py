"""Diagnostics (teacher / student p(o_t) and entropies by region) and the remedies: teacher temperature,
distillation restricted to positions around tau."""

from __future__ import annotations

import pytest
import torch
from scripted import scripted_trainer

from hsd import HSDConfig
from hsd.core.distill import distill_terms
from hsd.core.losses import aggregate
from hsd.core.positions import distill_position_mask


@pytest.mark.parametrize("analytic", [False, True])  # autograd through chunks, the worked-out gradient
def test_teacher_temperature_sharpens_the_teacher_in_divergence_logp_and_entropy(analytic):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    student, teacher, ids = torch.randn(6, 8), torch.randn(6, 8), torch.randint(0, 11, (6,))
    temperature, sharpen = 0.7, 0.5
    terms = distill_terms(
        teacher, student, ids, head, temperature=temperature, teacher_temperature=sharpen, analytic=analytic
    )
    with torch.no_grad():  # by hand: pT proportional to pT^(1/0.5) = softmax(z_T / (0.7 * 0.5))
        log_pt = torch.log_softmax(head(teacher) / temperature, -1)
        log_pt_sharp = torch.log_softmax(log_pt / sharpen, -1)
        log_ps = torch.log_softmax(head(student) / temperature, -1)
    kl = (log_pt_sharp.exp() * (log_pt_sharp - log_ps)).sum(-1)
    torch.testing.assert_close(terms.divergence, kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.teacher_logp, log_pt_sharp.gather(-1, ids[:, None])[:, 0])
    entropy = -(log_pt_sharp.exp() * log_pt_sharp).sum(-1)
    torch.testing.assert_close(terms.teacher_entropy, entropy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.student_entropy, -(log_ps.exp() * log_ps).sum(-1), rtol=1e-5, atol=1e-6)
    plain_entropy = -(log_pt.exp() * log_pt).sum(-1)
    assert (terms.teacher_entropy < plain_entropy).all()  # below 1 it sharpens


def _loss_after_one_step(model_dir, tmp_path, **overrides):
    trainer = scripted_trainer(model_dir, tmp_path / "out", method="hsd", **overrides)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    with torch.no_grad():
        before = trainer._distillation_loss(model, inputs).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer._distillation_loss(model, inputs).backward()
    optimizer.step()
    with torch.no_grad():
        after = trainer._distillation_loss(model, inputs).item()
    return trainer, inputs, before, after


def test_one_step_with_a_sharpened_teacher_lowers_the_loss(tiny_model_dir, tmp_path):
    _, _, before, after = _loss_after_one_step(tiny_model_dir, tmp_path, teacher_temperature=0.5)
    assert 0 < after < before


def test_tau_window_distils_only_the_window_of_failures_with_a_peer(tiny_model_dir, tmp_path):
    trainer, inputs, before, after = _loss_after_one_step(
        tiny_model_dir, tmp_path, distill_positions="tau_window", tau_window=1
    )
    assert 0 < after < before
    taus, mask = inputs["hsd_tau"], inputs["completion_mask"].float()
    assert (taus >= 0).any() and (taus < 0).any()  # rows with and without a tau in the batch
    with torch.no_grad():  # the loss is Eq. 10 over the window only: recompute it from the divergence
        distill = inputs["distill_mask"].bool()
        positions = mask.bool() & distill[:, None]
        teacher = trainer._teacher_hidden(trainer.model, inputs, distill)
        div = trainer._student_terms(trainer.model, inputs, positions, teacher).divergence
        window = distill_position_mask(taus, mask.size(1), "tau_window", 1).float()
        expected = aggregate(div, mask * distill[:, None].float() * window, "sequence_mean")
        assert trainer._distillation_loss(trainer.model, inputs).item() == pytest.approx(expected.item())


def test_sharper_teacher_only_distils_where_the_teacher_entropy_is_below_the_students(
    tiny_model_dir, tmp_path
):
    trainer = scripted_trainer(tiny_model_dir, tmp_path / "out", method="hsd", sharper_teacher_only=True)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    model, mask = trainer.model, inputs["completion_mask"].float()
    with torch.no_grad():  # Eq. 10 with L_t zeroed where H(pT) >= H(pS), each rollout's mean over all of o_i
        distill = inputs["distill_mask"].bool()
        positions = mask.bool() & distill[:, None]
        terms = trainer._student_terms(
            model, inputs, positions, trainer._teacher_hidden(model, inputs, distill)
        )
        sharper = terms.teacher_entropy < terms.student_entropy
        assert sharper[positions].any() and not sharper[positions].all()  # both kinds of position
        distill_mask = mask * distill[:, None].float()
        expected = aggregate(terms.divergence * sharper.float(), distill_mask, "sequence_mean")
        everywhere = aggregate(terms.divergence, distill_mask, "sequence_mean")
        before = trainer._distillation_loss(model, inputs).item()
        assert 0 < before == pytest.approx(expected.item()) and before < everywhere.item()
    assert 0 < trainer._metrics["train"]["hsd/sharper_teacher_frac"][-1] < 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer._distillation_loss(model, inputs).backward()
    optimizer.step()
    with torch.no_grad():
        assert trainer._distillation_loss(model, inputs).item() < before


def test_training_logs_the_diagnostics_by_region(tiny_model_dir, tmp_path):
    trainer = scripted_trainer(tiny_model_dir, tmp_path / "out", method="hsd")
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    for side in ("teacher", "student"):
        assert 0 < logged[f"hsd/{side}_p_token"] <= 1
        assert logged[f"hsd/{side}_entropy"] >= 0
        for region in ("success", "failed_before_tau", "failed_at_tau", "failed_after_tau", "failed_no_peer"):
            assert f"hsd/{side}_p_token/{region}" in logged, region


def test_config_rejects_bad_remedy_values():
    with pytest.raises(ValueError, match="teacher_temperature"):
        HSDConfig(output_dir="x", use_cpu=True, teacher_temperature=0)
    with pytest.raises(ValueError, match="distill_positions"):
        HSDConfig(output_dir="x", use_cpu=True, distill_positions="after_tau")
    with pytest.raises(ValueError, match="tau_window"):
        HSDConfig(output_dir="x", use_cpu=True, tau_window=-1)
    with pytest.raises(ValueError, match="distill_positions='from_tau' needs tau"):
        HSDConfig(output_dir="x", use_cpu=True, method="opsd", distill_positions="from_tau")
