"""Non-finite numbers never poison a run: rewards of +-inf / NaN are uncomputed, non-finite steps are skipped and
counted, too many in a row stop the run, and no checkpoint ever holds non-finite weights."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from scripted import exact_answer_reward, scripted_trainer
from transformers import TrainerCallback

from hsd.trainer.checkpoints import STAGING
from hsd.trainer.guards import NonFiniteTrainingError, NonFiniteWeightsError

ONE_STEP = dict(per_device_train_batch_size=16)


def reward_with(bad: float):
    """The exact-answer reward, but `bad` instead of 1.0 for the right answers to questions starting with 3."""

    def poisoned_reward(prompts, completions, answer, **kwargs):
        rewards = exact_answer_reward(prompts, completions, answer)
        questions = [p[-1]["content"] for p in prompts]
        return [bad if r == 1.0 and q.startswith("3+") else r for r, q in zip(rewards, questions)]

    return poisoned_reward


def last_log(trainer) -> dict:
    return [row for row in trainer.state.log_history if "loss" in row][-1]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_nonfinite_rewards_are_uncomputed_never_successes_nor_peers(tiny_model_dir, tmp_path, bad):
    trainer = scripted_trainer(tiny_model_dir, tmp_path, reward_funcs=reward_with(bad), **ONE_STEP)
    trainer.train()
    log = last_log(trainer)
    # 8 of 16 scripted rollouts are right; the 4 of the 3+.. group are now uncomputed
    assert log["hsd/uncomputed_reward_frac"] == 0.25
    assert log["hsd/success_rate"] == 0.25
    assert log["hsd/infinite_rewards"] == (0 if math.isnan(bad) else 4)
    assert math.isfinite(log["reward"])
    uncomputed = [i for i, c in enumerate(trainer.last_plan.contexts) if c is None]  # not distilled
    assert len(uncomputed) == 4 and uncomputed[-1] - uncomputed[0] == 3  # the 3+.. group
    assert not set(trainer.last_plan.peers) & set(uncomputed)  # never anyone's peer


def test_grpo_with_an_infinite_reward_still_trains_on_the_finite_ones(tiny_model_dir, tmp_path):
    trainer = scripted_trainer(
        tiny_model_dir, tmp_path, method="grpo", reward_funcs=reward_with(math.inf), **ONE_STEP
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    log = last_log(trainer)
    assert log["hsd/infinite_rewards"] == 4 and log["grad_norm"] > 0 and math.isfinite(log["loss"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


class PoisonWeightsAt(TrainerCallback):
    """Fills one weight with NaN at the end of step `step` (as a buggy callback or hook would)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)


def assert_every_checkpoint_is_finite(out):
    found = sorted(out.glob("checkpoint-*/*.safetensors"))
    assert found
    for path in found:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


def test_nan_weights_are_never_saved(tiny_model_dir, tmp_path):
    trainer = scripted_trainer(
        tiny_model_dir,
        tmp_path,
        per_device_train_batch_size=8,
        max_steps=4,
        save_strategy="steps",
        save_steps=1,
        teacher_weights="ema",
        callbacks=[PoisonWeightsAt(2)],
    )
    with pytest.raises(
        NonFiniteWeightsError, match=r"not saving checkpoint-2: .*NaN.*checkpoint-1 is intact"
    ):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (tmp_path / STAGING).exists()
    assert_every_checkpoint_is_finite(tmp_path)


def test_nan_weights_stop_the_run_before_the_next_step_samples_from_them(tiny_model_dir, tmp_path):
    trainer = scripted_trainer(
        tiny_model_dir, tmp_path, per_device_train_batch_size=8, max_steps=4, callbacks=[PoisonWeightsAt(2)]
    )
    with pytest.raises(
        NonFiniteWeightsError, match=r"before step 3 the weights hold NaN or inf \(first: model"
    ):
        trainer.train()
    assert trainer.state.global_step == 2


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_model_dir, tmp_path):
    # lr 1e25: step 1 is finite, then the weights overflow every forward pass: loss and gradients are NaN
    trainer = scripted_trainer(
        tiny_model_dir,
        tmp_path,
        per_device_train_batch_size=8,
        max_steps=8,
        learning_rate=1e25,
        save_strategy="steps",
        save_steps=1,
        max_nonfinite_steps=2,
    )
    with pytest.raises(NonFiniteTrainingError) as stopped:
        trainer.train()
    message = str(stopped.value)
    assert message.startswith("stopping at step 4: the loss or gradient norm was not finite for 3 optimizer")
    assert "last finite loss" in message and "at step 1" in message and "learning_rate=" in message
    logged = [row["train/skipped_nonfinite_steps"] for row in trainer.state.log_history if "loss" in row]
    assert logged == [0, 1, 2]
    # skipped steps change nothing: checkpoints 1-3 hold the same (finite) weights
    weights = [load_file(tmp_path / f"checkpoint-{n}" / "model.safetensors") for n in (1, 2, 3)]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    assert_every_checkpoint_is_finite(tmp_path)
