"""`HSDTrainer`: TRL's `GRPOTrainer` with a self-teacher conditioned on a successful peer (HSD) and baselines.

Overrides: `_calculate_rewards` (keeps the batch for peer choice), `_generate_and_score_completions` (plans
each rollout's teacher with `hsd.core.plan`, renders and pads the teacher prompts), `_compute_loss`
(distillation / RLSD on top of TRL's loss), `training_step` (phase timings). The GRPO-family losses are
TRL's own.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOTrainer
from trl.trainer.utils import pad

from hsd.core.distill import DistillTerms, analytic_head_refusal
from hsd.core.head import chunked_token_logps, output_head
from hsd.core.losses import aggregate, reference_kl, rlsd_advantages, rlsd_token_weights
from hsd.core.plan import GroupStatistics, TeacherPlan, plan_teachers
from hsd.core.positions import distill_position_mask, rollout_regions
from hsd.models import language_model, require_peft
from hsd.teacher.prefix import distinct_prefixes, shared_prefix_refusal
from hsd.teacher.prompt import teacher_input_ids
from hsd.trainer import checkpoints, guards, vllm_cpu
from hsd.trainer.adapters import (
    AdapterTeacher,
    active_adapter,
    check_adapter_supported,
    is_adapter_model,
    teacher_pairs,
)
from hsd.trainer.config import HSDConfig
from hsd.trainer.engines import (
    blend_into,
    blend_params,
    broadcast_from_rank0,
    check_copy_supported,
    check_engine_launched,
    copy_weights,
    gathers_parameters,
    new_copy,
    prepare_copy,
    release_gathered,
    teacher_stop_gradient,
)
from hsd.trainer.forward import DistillSpec, PrefixSpec, install_hsd_forward
from hsd.trainer.interrupt import StopOnSignal

logger = logging.getLogger(__name__)

# TRL loss type -> how the distillation term is normalised, so a mixed loss is consistent.
AGGREGATION_FOR_LOSS_TYPE = {
    "grpo": "sequence_mean",
    "sapo": "sequence_mean",
    "luspo": "sequence_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",
    "cispo": "token_mean",
    "vespo": "token_mean",
    "dr_grpo": "fixed_length",
}


def fallback_line(model, args: HSDConfig) -> str | None:
    """One line naming the model family and each teacher-pass optimisation switched on in `args` that it
    cannot use, with why (None when it can use them all); those parts run the plain path instead."""
    reasons = []
    if args.teacher_prefix_cache and (why := shared_prefix_refusal(model.config)):
        reasons.append(f"teacher_prefix_cache falls back to a full teacher pass per rollout ({why})")
    if args.analytic_distill_head and (why := analytic_head_refusal(model.config)):
        reasons.append(f"analytic_distill_head falls back to autograd on chunks ({why})")
    return f"{type(model).__name__}: " + "; ".join(reasons) if reasons else None


def check_vllm_model(model, args: HSDConfig) -> None:
    """`UserError` (one line) when vLLM cannot run `model` (a model or a name) here: `vllm_cpu.refusal`."""
    from hsd.errors import UserError

    if isinstance(model, str):
        from transformers import AutoConfig

        from hsd.models import resolve_model

        source = resolve_model(model)
        config = AutoConfig.from_pretrained(source.pretrained, **source.init_kwargs)
    else:
        config = model.config
    if line := vllm_cpu.refusal(config, args, model=repr(model) if isinstance(model, str) else "the model"):
        raise UserError(line)


class RewardFunctionError(RuntimeError):
    """A reward function raised: the message names the function and the batch it failed on."""


def _guard_reward_func(func):
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


def validate_dataset(dataset, args: HSDConfig) -> None:
    """Check that the columns the chosen context needs exist and are filled; name the column and row."""
    if dataset is None or not args.needs_teacher or not hasattr(dataset, "column_names"):
        return
    needs = []
    if args.context in ("hsd", "opsd"):
        needs.append(args.answer_column)
    if args.context == "reference":
        needs.append(args.reference_column)
    for column in needs:
        if column not in dataset.column_names:
            raise ValueError(
                f"context {args.context!r} needs the dataset column {column!r}, which is missing "
                f"(columns: {', '.join(dataset.column_names)}); set HSDConfig."
                f"{'answer_column' if column == args.answer_column else 'reference_column'} to the right name"
            )
        bad = [i for i, value in enumerate(dataset[column]) if value is None or str(value).strip() == ""]
        if bad:
            raise ValueError(
                f"dataset column {column!r} is empty in {len(bad)} row(s), first rows (0-based): {bad[:10]}; "
                f"context {args.context!r} needs it in every row"
            )


@dataclass(frozen=True)
class _ScoredBatch:
    """This process's rollouts as `_calculate_rewards` scored them: kept to plan and render their teachers."""

    inputs: list[dict]
    prompts: list
    completion_ids: list  # token ids per rollout
    rewards_per_func: torch.Tensor  # [N, F], every process's rollouts (TRL gathers them)


class _EMATeacherCallback(TrainerCallback):
    """After each optimizer step: teacher <- decay * teacher + (1 - decay) * policy."""

    def __init__(self, trainer: HSDTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._update_ema_teacher()


class _RestoreHSDState(TrainerCallback):
    """When training begins (the engine has prepared the model and TRL's checkpoint is loaded), restore HSD's
    state from the checkpoint being resumed: the teacher's weights, split as the engine splits them now."""

    def __init__(self, trainer: HSDTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_hsd_state()


class HSDTrainer(GRPOTrainer):
    """GRPOTrainer + Hindsight Self-Distillation. Pass an `HSDConfig`; everything else is as in TRL."""

    _tag_names = ["trl", "grpo", "hsd"]

    def __init__(self, model, reward_funcs=None, args: HSDConfig | None = None, train_dataset=None, **kwargs):
        """As `GRPOTrainer`, `peft_config` included: an adapter run's teachers and reference are the adapter
        switched off or a second adapter, never a copy of the model (`hsd.trainer.adapters`)."""
        if args is None:
            args = HSDConfig(output_dir="hsd-output")
        if not isinstance(args, HSDConfig):
            raise TypeError(f"HSDTrainer needs an HSDConfig, got {type(args).__name__}")
        validate_dataset(train_dataset, args)
        if args.use_vllm:
            check_vllm_model(model, args)
        if isinstance(model, str):
            from hsd.models import load_model, load_tokenizer, resolve_model

            source = resolve_model(model)
            if source.gguf_file:  # TRL cannot rebuild a GGUF from its directory: load it here
                if kwargs.get("processing_class") is None:
                    kwargs["processing_class"] = load_tokenizer(model)
                model = load_model(model).train()
            else:
                model = source.pretrained
        if reward_funcs is not None:
            funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            reward_funcs = [
                f if isinstance(f, (str, torch.nn.Module)) or not callable(f) else _guard_reward_func(f)
                for f in funcs
            ]
        if kwargs.get("peft_config") is not None:
            require_peft("HSDTrainer(peft_config=...)")
        adapter = kwargs.get("peft_config") is not None or is_adapter_model(model)
        # TRL rebuilds the reference policy from the model's hub id / path; an in-memory model has none, so
        # the reference is copied from it here instead (same weights: pi_0 is the policy at the start). With
        # an adapter, TRL's reference is the adapter switched off (or its copy): no model copy.
        beta = args.beta
        copy_reference = beta != 0.0 and not isinstance(model, str) and not adapter
        if copy_reference:
            args.beta = 0.0
        with vllm_cpu.vllm_generation(args):  # TRL's vLLM wrapper with what the CPU needs (vllm_cpu.py)
            super().__init__(
                model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs
            )
        check_engine_launched(self.accelerator, args.use_cpu)
        if copy_reference:
            from trl.trainer.utils import add_fused_lm_head

            args.beta = self.beta = beta
            self.ref_model = self._copy_policy(
                "beta", prepare=lambda m: add_fused_lm_head(m, temperature=self.temperature)
            )
        self._skip_old_logps = False
        if self._old_logps_unused():
            # The vLLM importance weights are built from the old-policy log-probs and feed only TRL's loss.
            self.vllm_importance_sampling_correction = False
        install_hsd_forward(self.model)
        policy = self.accelerator.unwrap_model(self.model)
        if is_adapter_model(policy):
            check_adapter_supported(policy)
        lm = language_model(policy)
        self._prefix_refusal = shared_prefix_refusal(lm.config)  # the teacher copies share its config
        if args.needs_teacher and (line := fallback_line(lm, args)):
            logger.warning(line)
        self._peer_draws = 0
        self._phase = defaultdict(float)
        self._hsd_batch: _ScoredBatch | None = None
        self.last_peers: list[int | None] | None = None
        self.last_contexts: list | None = None
        self.teacher_model = None  # None: the live policy under stop-gradient (the paper's choice)
        self.adapter_teacher: AdapterTeacher | None = None  # an adapter run's frozen / EMA teacher
        if args.needs_teacher and args.teacher_weights != "live":
            if is_adapter_model(policy):
                self.adapter_teacher = AdapterTeacher.build(policy, args.teacher_weights)
            else:
                self.teacher_model = self._copy_policy("teacher_weights")
            if args.teacher_weights == "ema":
                self.add_callback(_EMATeacherCallback(self))
        self._resume_from: str | None = None
        self.add_callback(_RestoreHSDState(self))
        self._attach_run_guards()

    # ------------------------------------------------------------------- signals, checkpoints, non-finite
    def _attach_run_guards(self) -> None:
        """Stop on SIGINT/SIGTERM after a checkpoint; skip non-finite steps; refuse non-finite weights."""
        self._stop_on_signal = StopOnSignal(self)
        self._nonfinite_steps = guards.NonFiniteSteps(self.args.max_nonfinite_steps)
        self._staging_run_dir: str | None = None
        self._last_checkpoint: str | None = None
        self.add_callback(self._stop_on_signal)
        self.add_callback(guards.FiniteWeightsCheck(self))

    def _teacher_parameters(self) -> list | None:
        """The (name, parameter) pairs of the teacher's own weights (a frozen / EMA copy or teacher adapter),
        which a checkpoint holds; None for a teacher without weights of its own (live, adapter off)."""
        unwrap = self.accelerator.unwrap_model
        if self.teacher_model is not None:
            return list(unwrap(self.teacher_model).named_parameters())
        if self.adapter_teacher is not None:
            return self.adapter_teacher.parameters(unwrap(self.model))
        return None

    def _restore_hsd_state(self) -> None:
        """Peer draws and teacher weights from the checkpoint `train` resumes (nothing when it starts)."""
        if self._resume_from is None:
            return
        owner = self.teacher_model if self.teacher_model is not None else self.model
        release_gathered(self.accelerator.unwrap_model(owner))  # FSDP2: no stale unsharded copy survives
        self._peer_draws = checkpoints.load_hsd_state(
            self._resume_from, self._teacher_parameters(), **self._teacher_layout()
        )

    def _teacher_layout(self) -> dict:
        return dict(rank=self.accelerator.process_index, sharded=gathers_parameters(self.accelerator))

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """TRL's `train`, resuming from the newest *good* checkpoint (with HSD's state) and stopping cleanly
        on a signal: then `TrainingInterrupted` is raised after the checkpoint is saved."""
        run_dir = Path(self.args.output_dir)
        if self.accelerator.is_main_process:
            checkpoints.remove_staging(run_dir)
        resume = checkpoints.resolve_resume(resume_from_checkpoint, run_dir)
        self._resume_from = resume  # restored when training begins (_RestoreHSDState)
        self._stop_on_signal.install()
        try:
            output = super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        finally:
            self._stop_on_signal.restore()
        interrupted = self._stop_on_signal.interruption(self.state.global_step, self._last_checkpoint)
        if interrupted is not None:
            raise interrupted
        return output

    def _get_train_sampler(self, dataset=None):
        return checkpoints.EpochSeededSampler(super()._get_train_sampler(dataset))

    def _get_output_dir(self, trial) -> str:
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint written into a staging folder, plus HSD's state; renamed into place when complete."""
        run_dir, step = super()._get_output_dir(trial), self.state.global_step
        main = self.args.should_save
        with checkpoints.staged_checkpoint(
            run_dir, step, main, self.accelerator.wait_for_everyone
        ) as staging:
            self._staging_run_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_run_dir = None
            checkpoints.save_hsd_state(
                staging / f"checkpoint-{step}",
                self._peer_draws,
                self._teacher_parameters(),
                **self._teacher_layout(),
            )
        self._last_checkpoint = str(Path(run_dir) / f"checkpoint-{step}")
        best = self.state.best_model_checkpoint
        if best and checkpoints.STAGING in best:
            self.state.best_model_checkpoint = best.replace(f"{checkpoints.STAGING}/", "")
        if main:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's `save_model`, refusing weights that hold NaN or inf."""
        name = guards.nonfinite_weights(self)
        if name is not None:
            intact = checkpoints.newest_good_checkpoint(Path(self.args.output_dir), warn=lambda _: None)
            raise guards.NonFiniteWeightsError(
                f"not saving {Path(output_dir or self.args.output_dir).name}: the weights hold NaN or inf "
                f"(first: {name}); "
                + (f"{intact.name} is intact" if intact else "no earlier checkpoint exists")
            )
        super().save_model(output_dir, _internal_call)

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        guards.skip_nonfinite_step(self, model, grad_norm)
        return grad_norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["train/skipped_nonfinite_steps"] = self._nonfinite_steps.skipped
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- teacher
    def _copy_policy(self, field: str, prepare=install_hsd_forward):
        """A separate copy of the current policy (reference, frozen or EMA teacher), prepared for the policy's
        engine like TRL's reference model (engines.py: gathered where partitioned, split like the policy)."""
        check_copy_supported(self.accelerator, field, getattr(self.args, field))
        policy = self.accelerator.unwrap_model(self.model)
        copy = new_copy(policy)
        copy_weights(copy, policy)
        prepare(copy)
        copy = prepare_copy(copy, self.accelerator, self.is_deepspeed_enabled, self.is_fsdp_enabled)
        if self.is_fsdp_enabled:
            broadcast_from_rank0(copy, policy, self.accelerator)
        return copy

    def _update_ema_teacher(self) -> None:
        """teacher <- decay * teacher + (1 - decay) * policy, on each process's shards (an adapter run: the
        teacher adapter from the trained adapter, nothing else)."""
        unwrap, decay = self.accelerator.unwrap_model, self.args.teacher_ema_decay
        if self.adapter_teacher is None:
            blend_into(unwrap(self.teacher_model), unwrap(self.model), decay=decay)
            return
        policy = unwrap(self.model)
        release_gathered(policy)
        blend_params(*teacher_pairs(policy), decay=decay)

    def _teacher_weights(self):
        """The context of the teacher pass that selects its weights: an adapter run's teacher adapter (or
        the adapter off); otherwise nothing to switch (the live policy or the teacher copy runs)."""
        if self.adapter_teacher is None:
            return nullcontext()
        return active_adapter(self.accelerator.unwrap_model(self.model), self.adapter_teacher.adapter)

    @contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._phase[phase] += time.perf_counter() - start

    # ------------------------------------------------------------------------------------- rollouts & peers
    def _generate(self, prompts):
        with self._timed("rollout"):
            return super()._generate(prompts)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self._timed("scoring"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards_per_func, infinite_F = guards.uncompute_nonfinite_rewards(rewards_per_func)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["hsd/infinite_rewards"].append(int(infinite_F.sum()))
        for name, count in zip(self.reward_func_names, infinite_F.tolist()):
            if count:
                logger.warning(
                    "reward function %r returned +-inf for %d of %d completions: counted as not computed",
                    name, count, len(rewards_per_func),
                )  # fmt: skip
        self._hsd_batch = _ScoredBatch(inputs, prompts, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _total_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Weighted sum over reward functions; NaN where no function could score the rollout."""
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return rewards

    def _peer_generator(self) -> torch.Generator:
        """Same seed on every process and in a one-process run: peer choice does not depend on the layout."""
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self._peer_draws)
        self._peer_draws += 1
        return generator

    def _generate_and_score_completions(self, inputs):
        """The method's steps 1-5 on this process's share of the batch:
        1. G rollouts per prompt, scored: TRL's own (`_generate`, `_calculate_rewards` keeps what it scored);
        2-4. each rollout's outcome, peer, teacher context and tau: `hsd.core.plan.plan_teachers`;
        5. the teacher prompts [q ; c_i], rendered and left-padded, attached to the batch; statistics logged.
        """
        # TRL computes the old policy's log-probs first when generation and optimizer steps are misaligned (or
        # for vLLM's importance weights, off when unused): its condition, so the skip hits exactly that forward.
        generate_every = self.args.steps_per_generation * self.num_iterations
        misaligned = self.args.gradient_accumulation_steps % generate_every != 0
        self._skip_old_logps = self._old_logps_unused() and misaligned
        try:
            output = super()._generate_and_score_completions(inputs)  # 1.
        finally:
            self._skip_old_logps = False
        scored, self._hsd_batch = self._hsd_batch, None
        rewards = self._checked_rewards(scored.rewards_per_func)
        all_ids = None
        if self.args.needs_teacher:  # every process's completions, in process order
            all_ids = gather_object([list(map(int, ids)) for ids in scored.completion_ids])
        plan = self._plan_teachers(scored, rewards, all_ids, output)  # 2-4.
        if self.args.needs_teacher:  # 5.
            output.update(self._teacher_prompts(scored, plan, all_ids, output["completion_ids"].device))
        self._log_statistics(plan.statistics)
        return output

    def _old_logps_unused(self) -> bool:
        """Whether no term of the loss reads TRL's old-policy log-probs: they enter only TRL's policy-gradient
        loss (its ratio and vLLM importance weights); the reference KL uses the reference's own log-probs."""
        return self.args.pg_weight == 0

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if self._skip_old_logps and model is self.model:  # the old-policy forward: its result is never read
            self._skip_old_logps = False
            return None, None, None
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _checked_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Total rewards of every process's rollouts (NaN: not computed); `RunStopped` when the share not
        computed exceeds `max_uncomputed_reward_fraction`."""
        limit = self.args.max_uncomputed_reward_fraction
        rewards = self._total_rewards(rewards_per_func).cpu()  # all processes, in process order
        uncomputed = torch.isnan(rewards)
        share = uncomputed.float().mean().item()
        self._metrics[self._metrics_mode()]["hsd/uncomputed_reward_frac"].append(share)
        if share > limit:
            raise guards.RunStopped(
                f"{int(uncomputed.sum())} of {rewards.numel()} rewards could not be computed in this batch "
                f"(more than max_uncomputed_reward_fraction={limit}); stopping "
                "rather than training on them. See the reward function's warnings above for the rows."
            )
        return rewards

    def _plan_teachers(self, scored: _ScoredBatch, rewards, all_ids, output) -> TeacherPlan:
        """Steps 2-4 for every process's rollouts: each process plans the same batch from the same gathered
        rewards, ids and columns with the same peer generator. Outcomes only for a method without a teacher."""
        args = self.args
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        if not args.needs_teacher:
            return plan_teachers(rewards, group_size, context=None, threshold=args.success_threshold)
        answers = gather_object([str(x.get(args.answer_column, "") or "") for x in scored.inputs])
        references = None
        if args.context == "reference":
            references = gather_object([str(x.get(args.reference_column, "") or "") for x in scored.inputs])
        logps = None
        if args.peer_rule in ("lowest_ppl", "highest_ppl"):
            logps = gather_object(self._mean_completion_logps(output))
        plan = plan_teachers(
            rewards,
            group_size,
            all_ids,
            context=args.context,
            rule=args.peer_rule,
            generator=self._peer_generator(),
            answers=answers,
            references=references,
            logps=logps,
            fallback=args.fallback,
            distill_successes=args.distill_successes,
            threshold=args.success_threshold,
        )
        self.last_peers, self.last_contexts = list(plan.peers), list(plan.contexts)  # for inspection
        return plan

    def _teacher_prompts(
        self, scored: _ScoredBatch, plan: TeacherPlan, all_ids, device
    ) -> dict[str, torch.Tensor]:
        """Step 5 for this process's rollouts: `teacher_prompt_ids` / `_mask` (the teacher prompts [q ; c_i],
        left-padded; one pad token where not distilled), `distill_mask`, `hsd_tau` and `hsd_success`."""
        args = self.args
        n_local = len(scored.completion_ids)
        start = self.accelerator.process_index * n_local
        local = slice(start, start + n_local)
        contexts = plan.contexts[local]
        peer_ids = [all_ids[c.peer] if c is not None and c.peer is not None else None for c in contexts]
        with self._timed("teacher_prompts"):
            teacher = teacher_input_ids(
                scored.prompts,
                all_ids[local],
                contexts,
                peer_ids,
                self.processing_class,
                args.teacher_template,
                max_peer_tokens=args.max_peer_tokens,
                chat_template_kwargs=self.chat_template_kwargs,
            )
        pad_id = self._tokenizer.pad_token_id
        rows = [torch.tensor(t[0] if t is not None else [pad_id]) for t in teacher]
        masks = [torch.ones(len(r), dtype=torch.long) for r in rows]
        return {
            "teacher_prompt_ids": pad(rows, padding_value=pad_id, padding_side="left").to(device),
            "teacher_prompt_mask": pad(masks, padding_value=0, padding_side="left").to(device),
            "distill_mask": torch.tensor([t is not None for t in teacher], device=device),
            "hsd_tau": torch.tensor(plan.taus[local], device=device),
            "hsd_success": torch.tensor(plan.success[local], device=device),
        }

    def _log_statistics(self, statistics: GroupStatistics) -> None:
        """Each statistic of the step's groups as `hsd/<name>` (those that are None are not logged)."""
        for field in fields(statistics):
            value = getattr(statistics, field.name)
            if value is not None:
                self._metrics[self._metrics_mode()][f"hsd/{field.name}"].append(value)

    def _metrics_mode(self) -> str:
        return "train" if self.model.training else "eval"

    @torch.no_grad()
    def _mean_completion_logps(self, output) -> list[float]:
        """Mean token log-prob of each local completion under the current policy (perplexity peer rules)."""
        ids = output["completion_ids"]
        mask = output["completion_mask"]
        hidden = self.model(
            input_ids=torch.cat([output["prompt_ids"], ids], dim=1),
            attention_mask=torch.cat([output["prompt_mask"], mask], dim=1),
            hsd_hidden=ids.size(1),
        )
        head = output_head(language_model(self.accelerator.unwrap_model(self.model)))
        logp = chunked_token_logps(
            hidden.reshape(-1, hidden.size(-1)), ids.reshape(-1), head, temperature=self.temperature
        ).view_as(ids.float())
        return ((logp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()

    # ------------------------------------------------------------------------------------------------- loss
    @staticmethod
    def teacher_batch(inputs, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher sequences [teacher prompt (left-padded) ; the student's completion ids] for rows `index`."""
        ids = torch.cat([inputs["teacher_prompt_ids"][index], inputs["completion_ids"][index]], dim=1)
        mask = torch.cat([inputs["teacher_prompt_mask"][index], inputs["completion_mask"][index]], dim=1)
        return ids, mask

    def _teacher_hidden(self, model, inputs, rows: torch.Tensor) -> torch.Tensor:
        """Teacher pass (stop-gradient) over the teacher sequences of the selected rows: [B, T, H].

        Each distinct teacher prefix runs once and its KV cache serves every row that shares it
        (`teacher_prefix_cache`); rows without distillation get no teacher pass (`skip_undistilled_teacher`).
        """
        args = self.args
        completion_ids = inputs["completion_ids"]
        T = completion_ids.size(1)
        teacher = self.teacher_model if self.teacher_model is not None else model
        if not args.skip_undistilled_teacher:
            rows = torch.ones_like(rows, dtype=torch.bool)
        index = rows.nonzero(as_tuple=True)[0]
        # Every process runs the teacher forward (sharded engines gather weights collectively): with no
        # distilled row here, it runs on row 0 and the result is discarded.
        run = index if len(index) else torch.zeros(1, dtype=torch.long, device=rows.device)
        shared = args.teacher_prefix_cache and self._prefix_refusal is None
        stop_gradient = teacher_stop_gradient(self.accelerator, args.teacher_inference_mode)
        with stop_gradient(), self._timed("teacher"), self._teacher_weights():
            if shared:
                prefix_ids, prefix_mask, prefix_of_row = distinct_prefixes(
                    inputs["teacher_prompt_ids"][run], inputs["teacher_prompt_mask"][run]
                )
                hidden = teacher(
                    input_ids=prefix_ids,
                    attention_mask=prefix_mask,
                    hsd_prefix=PrefixSpec(prefix_of_row, completion_ids[run], inputs["completion_mask"][run]),
                )
            else:
                ids, mask = self.teacher_batch(inputs, run)
                hidden = teacher(input_ids=ids, attention_mask=mask, hsd_hidden=T)
            if getattr(self, "synchronize_timers", False) and hidden.is_cuda:
                torch.cuda.synchronize(hidden.device)
        out = hidden.new_zeros(completion_ids.size(0), T, hidden.size(-1))
        if len(index):
            out[index] = hidden
        return out

    def _student_terms(
        self, model, inputs, positions: torch.Tensor, teacher_hidden: torch.Tensor
    ) -> DistillTerms:
        """One student pass: `DistillTerms`, each [B, T] (zero off `positions`)."""
        args = self.args
        completion_ids = inputs["completion_ids"]
        spec = DistillSpec(
            completion_ids=completion_ids,
            positions=positions,
            teacher_hidden=teacher_hidden,
            kind=args.divergence,
            temperature=self.temperature,
            alpha=args.divergence_alpha,
            topk=args.divergence_topk,
            clip=args.divergence_clip,
            chunk_size=args.divergence_chunk_size,
            teacher_temperature=args.teacher_temperature,
            analytic_head=args.analytic_distill_head,
            keep_grad_bytes=float(args.distill_grad_cache_mb) * 2**20,
        )
        with self._timed("student_forward"):
            terms = model(
                input_ids=torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
                attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
                hsd_distill=spec,
            )
        shape = completion_ids.shape
        out = []
        for values in terms:
            full = torch.zeros(shape, dtype=values.dtype, device=values.device)
            full[positions] = values
            out.append(full)
        return DistillTerms(*out)

    def _loss_mask(self, inputs) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]

    def _aggregate(self, values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        mode = AGGREGATION_FOR_LOSS_TYPE.get(self.loss_type, "sequence_mean")
        if self.args.distill_weight > 0 and self.args.pg_weight == 0:
            mode = "sequence_mean"  # Eq. 10: mean over rollouts of each rollout's token mean
        if mode == "fixed_length":
            return aggregate(values_BT, mask_BT, mode, max_length=self.max_completion_length)
        return aggregate(values_BT, mask_BT, mode)

    def _distillation_loss(self, model, inputs) -> torch.Tensor:
        """(1/G) sum_i (1/|o_i|) sum_t L_{i,t} (+ beta * KL(pi_theta || pi_0))   # Eq. 10, L from Eq. 13."""
        mask = self._loss_mask(inputs).float()
        distill = inputs["distill_mask"].bool()
        with_ref = self.beta != 0.0 and self.args.pg_weight == 0
        positions = mask.bool() & (distill[:, None] | with_ref)
        teacher_hidden = self._teacher_hidden(model, inputs, distill)
        terms = self._student_terms(model, inputs, positions, teacher_hidden)
        div, s_logp, t_logp = terms.divergence, terms.student_logp, terms.teacher_logp
        distill_mask = mask * distill[:, None].float()
        self._log_diagnostics(inputs, terms, distill_mask)
        kept = distill_position_mask(
            inputs["hsd_tau"], mask.size(1), self.args.distill_positions, self.args.tau_window
        )
        distilled = div
        if self.args.sharper_teacher_only:  # Eq. 10 with L_t x 1[H(pT_t) < H(pS_t)], still over all of o_i
            sharper = (terms.teacher_entropy < terms.student_entropy).float()
            self._log_mean("hsd/sharper_teacher_frac", sharper, distill_mask * kept.float())
            distilled = div * sharper
        loss = self._aggregate(distilled, distill_mask * kept.float())
        if with_ref:  # sequence-level KL to the initial policy, beta (method doc, step 7)
            kl = reference_kl(s_logp, inputs["ref_per_token_logps"])
            loss = loss + self.beta * self._aggregate(kl, mask)
            self._log_mean("kl", kl, mask)
        self._log_credit(inputs, div.detach(), (t_logp - s_logp).detach(), distill_mask)
        mode = "train" if self.model.training else "eval"
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

    def _rlsd_inputs(self, model, inputs):
        """RLSD: per-token advantages A_t = A * ((1 - lambda) + lambda * w_t), w_t from teacher/student ratio."""
        args = self.args
        mask = self._loss_mask(inputs).bool()
        distill = inputs["distill_mask"].bool()
        positions = mask & distill[:, None]
        teacher_hidden = self._teacher_hidden(model, inputs, distill)
        with torch.no_grad():
            terms = self._student_terms(model, inputs, positions, teacher_hidden)
        s_logp, t_logp = terms.student_logp, terms.teacher_logp
        weights = rlsd_token_weights(inputs["advantages"], t_logp, s_logp, args.rlsd_eps)
        weights = torch.where(positions, weights, torch.ones_like(weights))
        self._log_credit(inputs, None, (t_logp - s_logp), positions.float())
        return {**inputs, "advantages": rlsd_advantages(inputs["advantages"], weights, args.rlsd_lambda)}

    def _compute_loss(self, model, inputs):
        args = self.args
        if args.rlsd:
            inputs = self._rlsd_inputs(model, inputs)
        loss = None
        if args.pg_weight > 0:
            loss = super()._compute_loss(model, inputs)
            if args.pg_weight != 1.0:
                loss = args.pg_weight * loss
        if args.distill_weight > 0:
            distill = args.distill_weight * self._distillation_loss(model, inputs)
            loss = distill if loss is None else loss + distill
        return loss

    # -------------------------------------------------------------------------------------------- metrics
    def _log_mean(self, name: str, values_BT: torch.Tensor, mask_BT: torch.Tensor) -> None:
        totals = torch.stack([(values_BT * mask_BT).sum(), mask_BT.sum()]).float()
        totals = self.accelerator.reduce(totals, reduction="sum")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][name].append((totals[0] / totals[1].clamp(min=1.0)).item())

    def _log_diagnostics(self, inputs, terms: DistillTerms, scored_BT: torch.Tensor) -> None:
        """Can the teacher still teach? Mean p(o_t) of the sampled token and mean entropy of each side, over
        every scored position (`hsd/teacher_p_token`, ...) and per region (`.../success`,
        `.../failed_before_tau`, `.../failed_at_tau`, `.../failed_after_tau`, `.../failed_no_peer`)."""
        regions = rollout_regions(inputs["hsd_tau"], inputs["hsd_success"], scored_BT.size(1))
        values = {
            "teacher_p_token": terms.teacher_logp.exp(),
            "student_p_token": terms.student_logp.detach().exp(),
            "teacher_entropy": terms.teacher_entropy,
            "student_entropy": terms.student_entropy,
        }
        means = {}
        for suffix, region in [("", None), *regions.items()]:
            where = scored_BT if region is None else scored_BT * region.float()
            for name, value in values.items():
                means[f"hsd/{name}" + (f"/{suffix}" if suffix else "")] = (value, where)
        self._log_means(means)

    def _log_means(self, named: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Masked means of several [B, T] values over all processes (one reduce); a name whose mask is empty
        everywhere is not logged this step."""
        totals = torch.stack([torch.stack([(v * m).sum(), m.sum()]).float() for v, m in named.values()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        mode = "train" if self.model.training else "eval"
        for name, (total, count) in zip(named, totals.tolist(), strict=True):
            if count > 0:
                self._metrics[mode][name].append(total / count)

    def _log_credit(self, inputs, div, credit, distill_mask) -> None:
        """Mean divergence, distilled tokens, and mean |A_t| (Eq. 2) at tau versus elsewhere."""
        mode = "train" if self.model.training else "eval"
        if div is not None:
            self._log_mean("hsd/divergence_mean", div, distill_mask)
        tokens = self.accelerator.reduce(distill_mask.sum().float(), reduction="sum")
        self._metrics[mode]["hsd/distilled_tokens"].append(tokens.item())
        taus = inputs["hsd_tau"]
        T = credit.size(1)
        at_tau = torch.zeros_like(distill_mask)
        rows = (taus >= 0) & (taus < T)
        at_tau[rows.nonzero(as_tuple=True)[0], taus[rows]] = 1.0
        at_tau = at_tau * distill_mask
        failed_with_tau = distill_mask * rows[:, None].float()
        self._log_mean("hsd/abs_credit_at_tau", credit.abs(), at_tau)
        self._log_mean("hsd/abs_credit_elsewhere", credit.abs(), failed_with_tau - at_tau)

    def training_step(self, model, inputs, num_items_in_batch):
        self._phase.clear()
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite_steps.add_loss(loss)
        total = time.perf_counter() - start
        phase = dict(self._phase)
        mode = "train"
        for name in ("rollout", "scoring", "teacher"):
            self._metrics[mode][f"time/{name}"].append(phase.get(name, 0.0))
        other = phase.get("rollout", 0.0) + phase.get("scoring", 0.0) + phase.get("teacher", 0.0)
        other += phase.get("teacher_prompts", 0.0)
        self._metrics[mode]["time/update"].append(max(total - other, 0.0))
        return loss
