"""Guards against failing reward functions and non-finite numbers: rewards, losses, gradient norms and
weights never poison a run.

A reward function that raises is named with the batch it failed on; a non-finite reward is treated as
uncomputed (NaN), and too large a share of uncomputed rewards stops the run; a step whose loss or gradient
norm is non-finite is skipped (no weight changes) and counted; too many skipped steps in a row, or
non-finite weights, stop the run.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class RunStopped(RuntimeError):
    """The run stopped for a reason the message states in one line; `exit_status` is what `hsd train` returns."""

    exit_status = 1


class NonFiniteTrainingError(RunStopped):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class NonFiniteWeightsError(RunStopped):
    """The model's weights hold NaN or inf: they are neither trained on nor saved."""


class RewardFunctionError(RuntimeError):
    """A reward function raised: the message names the function and the batch it failed on."""


def guard_reward_func(func):
    """Wrap a reward function so an exception names the function and the first failing prompt."""
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # re-raised with the function's name
            prompts = kwargs.get("prompts") or []
            first = str(prompts[0])[:200] if prompts else "?"
            raise RewardFunctionError(
                f"reward function {name!r} raised {type(exc).__name__}: {exc} "
                f"(batch of {len(prompts)} completions; first prompt: {first!r})"
            ) from exc

    guarded.__name__ = name
    return guarded


def guard_reward_funcs(reward_funcs) -> list | None:
    """TRL's `reward_funcs` (one or a list) with each plain callable wrapped by `guard_reward_func`; model
    names and reward models are left to TRL."""
    if reward_funcs is None:
        return None
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    return [
        f if isinstance(f, (str, torch.nn.Module)) or not callable(f) else guard_reward_func(f) for f in funcs
    ]


def total_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions; NaN where no function could score the rollout."""
    weights = weights.to(rewards_per_func.device)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


def check_uncomputed_share(rewards: torch.Tensor, limit: float, log) -> None:
    """`log(share)` of `rewards` not computed (NaN), then `RunStopped` when the share exceeds `limit`
    (`max_uncomputed_reward_fraction`)."""
    uncomputed = torch.isnan(rewards)
    share = uncomputed.float().mean().item()
    log(share)
    if share > limit:
        raise RunStopped(
            f"{int(uncomputed.sum())} of {rewards.numel()} rewards could not be computed in this batch "
            f"(more than max_uncomputed_reward_fraction={limit}); stopping "
            "rather than training on them. See the reward function's warnings above for the rows."
        )


def warn_infinite_rewards(names: list[str], infinite_F: torch.Tensor, n: int) -> None:
    """One warning per reward function that returned +-inf for some of the `n` completions."""
    for name, count in zip(names, infinite_F.tolist()):
        if count:
            logger.warning(
                "reward function %r returned +-inf for %d of %d completions: counted as not computed",
                name, count, n,
            )  # fmt: skip


def uncompute_nonfinite_rewards(rewards_RF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rewards with +-inf replaced by NaN, count of +-inf per reward function [F])`.

    NaN already means "not computed" (TRL excludes such rows from the group baseline and gives them zero
    advantage; HSD never picks them as peers); an infinite reward is no more a measurement than a NaN one.
    """
    infinite_RF = torch.isinf(rewards_RF)
    return rewards_RF.masked_fill(infinite_RF, math.nan), infinite_RF.sum(dim=0)


def first_nonfinite_tensor(named_tensors) -> str | None:
    """The name of the first tensor in `(name, tensor)` pairs holding a NaN or inf, else None."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def is_finite_number(value) -> bool:
    """Whether a float / 0-d tensor is finite (None counts as finite: no gradient norm was computed)."""
    if value is None:
        return True
    return math.isfinite(float(value.item() if isinstance(value, torch.Tensor) else value))


@dataclass
class NonFiniteSteps:
    """Counts optimizer steps skipped for a non-finite loss or gradient norm; stops after too many in a row.

    A step is skipped when loss_t or ||g_t|| is not finite; `in_a_row` > `limit` stops the run.
    """

    limit: int
    skipped: int = 0
    in_a_row: int = 0
    step_loss: float = 0.0
    last_finite_loss: float | None = None
    last_finite_step: int | None = None

    def add_loss(self, loss) -> None:
        """Accumulate one micro-batch's loss into the current optimizer step's loss."""
        self.step_loss += float(
            loss.detach().float().sum().item() if isinstance(loss, torch.Tensor) else loss
        )

    def end_step(self, step: int, grad_norm, any_process_nonfinite: bool = False) -> bool:
        """Close optimizer step `step` (1-based); True when it must be skipped."""
        loss, self.step_loss = self.step_loss, 0.0
        if not any_process_nonfinite and math.isfinite(loss) and is_finite_number(grad_norm):
            self.in_a_row, self.last_finite_loss, self.last_finite_step = 0, loss, step
            return False
        self.skipped += 1
        self.in_a_row += 1
        return True

    @property
    def over_limit(self) -> bool:
        return self.in_a_row > self.limit

    def stop_message(self, step: int, grad_norm, learning_rate: float) -> str:
        """One line: where the run stopped, the last finite loss, and what usually causes this."""
        last = (
            f"last finite loss {self.last_finite_loss:.6g} at step {self.last_finite_step}"
            if self.last_finite_step is not None
            else "no step had a finite loss"
        )
        return (
            f"stopping at step {step}: the loss or gradient norm was not finite for {self.in_a_row} optimizer "
            f"steps in a row (more than max_nonfinite_steps={self.limit}; each was skipped, the weights are "
            f"unchanged since step {self.last_finite_step or 0}); gradient norm {float(grad_norm or 0):g}; {last}. "
            f"Likely causes: a learning rate too high (learning_rate={learning_rate:g}), fp16 overflow (use bf16 "
            "or fp32), or non-finite inputs or rewards"
        )


def skip_nonfinite_step(trainer, model, grad_norm) -> None:
    """Between backward and the optimizer step: drop the gradients of a non-finite step (torch optimizers
    leave a parameter without a gradient untouched), count it, and stop after too many in a row."""
    steps: NonFiniteSteps = trainer.nonfinite_steps
    local_bad = not math.isfinite(steps.step_loss)
    any_bad = local_bad
    if trainer.accelerator.num_processes > 1:  # every process must skip the same steps
        flag = torch.tensor([float(local_bad)], device=trainer.accelerator.device)
        any_bad = bool(trainer.accelerator.reduce(flag, reduction="sum").item() > 0)
    step = trainer.state.global_step + 1
    if not steps.end_step(step, grad_norm, any_bad):
        return
    model.zero_grad(set_to_none=True)
    if steps.over_limit:
        raise NonFiniteTrainingError(steps.stop_message(step, grad_norm, trainer._get_learning_rate()))
    logger.warning(
        "step %d: the loss or gradient norm is not finite (gradient norm %s); the optimizer step is skipped "
        "(%d in a row, the run stops after more than max_nonfinite_steps=%d)",
        step, grad_norm, steps.in_a_row, steps.limit,
    )  # fmt: skip


def nonfinite_weights(trainer) -> str | None:
    """The first policy or teacher parameter holding NaN or inf ("teacher." prefixed), else None."""
    unwrap = trainer.accelerator.unwrap_model
    name = first_nonfinite_tensor(unwrap(trainer.model).named_parameters())
    if name is None and getattr(trainer, "teacher_model", None) is not None:
        name = first_nonfinite_tensor(unwrap(trainer.teacher_model).named_parameters())
        name = None if name is None else f"teacher.{name}"
    return name


class FiniteWeightsCheck(TrainerCallback):
    """Before each step: stop if the weights hold NaN or inf (nothing is sampled or trained from them)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        name = nonfinite_weights(self.trainer)
        if name is not None:
            raise NonFiniteWeightsError(
                f"before step {state.global_step + 1} the weights hold NaN or inf (first: {name}); steps with "
                "a non-finite loss or gradient are skipped, so something else wrote them (a callback, a hook, a "
                "loaded file); stopping without sampling from or saving them"
            )
