"""`HSDTrainer`: TRL's `GRPOTrainer` with a self-teacher conditioned on a successful peer (HSD) and baselines.

A step: sample and score G rollouts per prompt (TRL's), plan each rollout's teacher (`hsd.core.plan`), render
the teacher prompts, run the teacher pass and the student pass (`hsd.trainer.passes`), and add the
distillation / RLSD loss to TRL's (`_compute_loss`); metrics go to `hsd.trainer.metrics`. The rest is TRL's
hooks: reward guards (`guards`), checkpoints with HSD's state (`checkpoints`), the teacher's weights
(`engines`, `adapters`). The GRPO-family losses are TRL's own.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from hsd.core.batch import padded
from hsd.core.losses import aggregate, reference_kl, rlsd_advantages, rlsd_token_weights
from hsd.core.plan import TeacherPlan, plan_teachers
from hsd.core.positions import distill_position_mask
from hsd.models import language_model
from hsd.teacher.prefix import shared_prefix_refusal
from hsd.teacher.prompt import teacher_input_ids
from hsd.trainer import checkpoints, guards, passes, vllm_cpu
from hsd.trainer.adapters import (
    AdapterTeacher,
    check_adapter_supported,
    is_adapter_model,
)
from hsd.trainer.callbacks import OnEvent
from hsd.trainer.config import HSDConfig
from hsd.trainer.engines import (
    blend_into,
    check_copy_supported,
    check_engine_launched,
    policy_copy,
    teacher_stop_gradient,
)
from hsd.trainer.interrupt import StopOnSignal
from hsd.trainer.metrics import PhaseTimer, StepMetrics
from hsd.trainer.validate import trainer_arguments

logger = logging.getLogger(__name__)

# TRL loss type -> how the distillation term is normalised, so a mixed loss is consistent.
AGGREGATION_FOR_LOSS_TYPE = {
    "grpo": "sequence_mean", "sapo": "sequence_mean", "luspo": "sequence_mean", "bnpo": "token_mean",
    "dapo": "token_mean", "cispo": "token_mean", "vespo": "token_mean", "dr_grpo": "fixed_length",
}  # fmt: skip


@dataclass(frozen=True)
class _ScoredBatch:
    """This process's rollouts as `_calculate_rewards` scored them: kept to plan and render their teachers."""

    inputs: list[dict]
    prompts: list
    completion_ids: list  # token ids per rollout
    rewards_per_func: torch.Tensor  # [N, F], every process's rollouts (TRL gathers them)


class HSDTrainer(GRPOTrainer):
    """GRPOTrainer + Hindsight Self-Distillation. Pass an `HSDConfig`; everything else is as in TRL."""

    _tag_names = ["trl", "grpo", "hsd"]

    def __init__(
        self, model, reward_funcs=None, args: HSDConfig | None = None, train_dataset=None, *, run_lock=None,
        **kwargs,
    ):  # fmt: skip
        """As `GRPOTrainer`, `peft_config` included: an adapter run's teachers and reference are the adapter
        switched off or a second adapter, never a copy of the model (`hsd.trainer.adapters`). `run_lock`:
        `hsd train`'s lock on output_dir (`RunLock`), held as long as the trainer."""
        args, model, reward_funcs, reference_beta = trainer_arguments(
            model, reward_funcs, args, train_dataset, kwargs
        )
        with vllm_cpu.vllm_generation(args):  # TRL's vLLM wrapper with what the CPU needs (vllm_cpu.py)
            super().__init__(
                model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs
            )
        check_engine_launched(self.accelerator, args.use_cpu)
        self.run_lock = run_lock  # `hsd train`'s lock on output_dir, held as long as the trainer lives
        self.synchronize_timers = False  # True (hsd.bench.meter, on CUDA): the teacher's timer waits for it
        self.phases = PhaseTimer()  # this step's phase times; hsd.bench.meter reads phases.seconds["teacher"]
        self.step_metrics = StepMetrics(self)  # HSD's metrics, written into TRL's `_metrics`
        self.last_plan: TeacherPlan | None = None  # the teacher plan of the last batch, for inspection
        self.nonfinite_steps = guards.NonFiniteSteps(args.max_nonfinite_steps)  # guards.skip_nonfinite_step
        if reference_beta is not None:
            from trl.trainer.utils import add_fused_lm_head

            args.beta = self.beta = reference_beta
            self.ref_model = self._copy_policy(
                "beta", prepare=lambda m: add_fused_lm_head(m, temperature=self.temperature)
            )
        self._skip_old_logps = False  # True only around TRL's old-policy forward when nothing reads it
        if self._old_logps_unused():
            # The vLLM importance weights are built from the old-policy log-probs and feed only TRL's loss.
            self.vllm_importance_sampling_correction = False
        self._set_up_teacher(args)
        self._set_up_run_guards()

    def _set_up_teacher(self, args: HSDConfig) -> None:
        """The passes' forward on the policy, and the teacher's weights: the live policy (`teacher_model`
        None), a frozen / EMA copy (`teacher_model`), or an adapter run's teacher adapter
        (`adapter_teacher`)."""
        passes.install_pass_forward(self.model)
        policy = self.accelerator.unwrap_model(self.model)
        if is_adapter_model(policy):
            check_adapter_supported(policy)
        lm = language_model(policy)
        self._prefix_refusal = shared_prefix_refusal(lm.config)  # the teacher copies share its config
        if args.needs_teacher and (line := passes.fallback_line(lm, args)):
            logger.warning(line)
        self._peer_draws = 0  # peer generators drawn so far (saved in checkpoints)
        self._hsd_batch: _ScoredBatch | None = None  # between `_calculate_rewards` and the plan
        self.teacher_model = None  # None: the live policy under stop-gradient (the paper's choice)
        self.adapter_teacher: AdapterTeacher | None = None  # an adapter run's frozen / EMA teacher
        if args.needs_teacher and args.teacher_weights != "live":
            if is_adapter_model(policy):
                self.adapter_teacher = AdapterTeacher.build(policy, args.teacher_weights)
            else:
                self.teacher_model = self._copy_policy("teacher_weights")
            if args.teacher_weights == "ema":
                self.add_callback(OnEvent("on_step_end", self._update_ema_teacher))
        self._resume_from: str | None = None  # the checkpoint `train` resumes, restored when training begins
        self.add_callback(OnEvent("on_train_begin", self._restore_hsd_state))

    def _set_up_run_guards(self) -> None:
        """Stop on SIGINT/SIGTERM after a checkpoint; skip non-finite steps; refuse non-finite weights."""
        self._stop_on_signal = StopOnSignal(self)
        self._staging_run_dir: str | None = None  # where `_save_checkpoint` has TRL write, while it does
        self._last_checkpoint: str | None = None
        self.add_callback(self._stop_on_signal)
        self.add_callback(guards.FiniteWeightsCheck(self))

    # ------------------------------------------------------------------------------ checkpoints and guards
    def _restore_hsd_state(self) -> None:
        """When training begins (the engine has prepared the model and TRL's checkpoint is loaded): peer
        draws and teacher weights from the checkpoint `train` resumes (nothing when it starts)."""
        if self._resume_from is not None:
            self._peer_draws = checkpoints.restore_hsd_state(self, self._resume_from)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """TRL's `train`, resuming from the newest *good* checkpoint (with HSD's state) and stopping cleanly
        on a signal: then `TrainingInterrupted` is raised after the checkpoint is saved."""
        run_dir = Path(self.args.output_dir)
        if self.accelerator.is_main_process:
            checkpoints.remove_staging(run_dir)
        self._resume_from = checkpoints.resolve_resume(resume_from_checkpoint, run_dir)
        self._stop_on_signal.install()
        try:
            output = super().train(resume_from_checkpoint=self._resume_from, trial=trial, **kwargs)
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

        def save_trl(staging):  # TRL writes where `_get_output_dir` says
            self._staging_run_dir = str(staging)
            try:
                super(HSDTrainer, self)._save_checkpoint(model, trial)
            finally:
                self._staging_run_dir = None

        run_dir = super()._get_output_dir(trial)
        self._last_checkpoint = checkpoints.save_staged(self, run_dir, self._peer_draws, save_trl)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's `save_model`, refusing weights that hold NaN or inf."""
        run_dir = Path(self.args.output_dir)
        checkpoints.refuse_nonfinite_save(
            guards.nonfinite_weights(self), run_dir, Path(output_dir or run_dir)
        )
        super().save_model(output_dir, _internal_call)

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        guards.skip_nonfinite_step(self, model, grad_norm)
        return grad_norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["train/skipped_nonfinite_steps"] = self.nonfinite_steps.skipped
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- teacher
    def _copy_policy(self, field: str, prepare=passes.install_pass_forward):
        """A separate copy of the current policy (reference, frozen or EMA teacher), prepared for the policy's
        engine like TRL's reference model (`engines.policy_copy`)."""
        check_copy_supported(self.accelerator, field, getattr(self.args, field))
        policy = self.accelerator.unwrap_model(self.model)
        return policy_copy(
            policy,
            self.accelerator,
            prepare,
            is_deepspeed=self.is_deepspeed_enabled,
            is_fsdp=self.is_fsdp_enabled,
        )

    def _update_ema_teacher(self) -> None:
        """After each optimizer step: teacher <- decay * teacher + (1 - decay) * policy, on each process's
        shards (an adapter run: the teacher adapter from the trained adapter, nothing else)."""
        unwrap, decay = self.accelerator.unwrap_model, self.args.teacher_ema_decay
        if self.adapter_teacher is not None:
            self.adapter_teacher.update_ema(unwrap(self.model), decay)
        else:
            blend_into(unwrap(self.teacher_model), unwrap(self.model), decay=decay)

    @contextmanager
    def _teacher_context(self):
        """Around the teacher pass: stop-gradient, the teacher's weights and the `teacher` phase timer (which
        waits for the device with `synchronize_timers`)."""
        stop_gradient = teacher_stop_gradient(self.accelerator, self.args.teacher_inference_mode)
        adapter = self.adapter_teacher  # an adapter run: its teacher adapter switched on (or all off)
        weights = (
            nullcontext() if adapter is None else adapter.active(self.accelerator.unwrap_model(self.model))
        )
        with stop_gradient(), self.phases.timed("teacher"), weights:
            yield
            if self.synchronize_timers and self.accelerator.device.type == "cuda":
                torch.cuda.synchronize(self.accelerator.device)

    # ------------------------------------------------------------------------------------- rollouts & peers
    def _generate(self, prompts):
        with self.phases.timed("rollout"):
            return super()._generate(prompts)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.phases.timed("scoring"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards_per_func, infinite_F = guards.uncompute_nonfinite_rewards(rewards_per_func)
        self.step_metrics.add("hsd/infinite_rewards", int(infinite_F.sum()))
        guards.warn_infinite_rewards(self.reward_func_names, infinite_F, len(rewards_per_func))
        self._hsd_batch = _ScoredBatch(inputs, prompts, completion_ids_list, rewards_per_func)
        return rewards_per_func

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
        rewards = guards.total_rewards(scored.rewards_per_func, self.reward_weights).cpu()  # every process's
        guards.check_uncomputed_share(
            rewards,
            self.args.max_uncomputed_reward_fraction,
            log=lambda share: self.step_metrics.add("hsd/uncomputed_reward_frac", share),
        )
        all_ids = None
        if self.args.needs_teacher:  # every process's completions, in process order
            all_ids = gather_object([list(map(int, ids)) for ids in scored.completion_ids])
        self.last_plan = self._plan_teachers(scored, rewards, all_ids, output)  # 2-4.
        if self.args.needs_teacher:  # 5.
            output.update(
                self._teacher_prompts(scored, self.last_plan, all_ids, output["completion_ids"].device)
            )
        self.step_metrics.statistics(self.last_plan.statistics)
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
        return plan_teachers(
            rewards, group_size, all_ids, context=args.context, rule=args.peer_rule,
            generator=self._peer_generator(), answers=answers, references=references, logps=logps,
            fallback=args.fallback, distill_successes=args.distill_successes,
            threshold=args.success_threshold,
        )  # fmt: skip

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
        with self.phases.timed("teacher_prompts"):
            teacher = teacher_input_ids(
                scored.prompts, all_ids[local], contexts, peer_ids, self.processing_class,
                args.teacher_template, max_peer_tokens=args.max_peer_tokens,
                chat_template_kwargs=self.chat_template_kwargs,
            )  # fmt: skip
        pad_id = self._tokenizer.pad_token_id
        ids, mask = padded([t[0] if t is not None else [pad_id] for t in teacher], left=True, pad_id=pad_id)
        return {
            "teacher_prompt_ids": ids.to(device),
            "teacher_prompt_mask": mask.to(device),
            "distill_mask": torch.tensor([t is not None for t in teacher], device=device),
            "hsd_tau": torch.tensor(plan.taus[local], device=device),
            "hsd_success": torch.tensor(plan.success[local], device=device),
        }

    def _mean_completion_logps(self, output) -> list[float]:
        """Mean token log-prob of each local completion under the current policy (perplexity peer rules)."""
        return passes.mean_completion_logps(self.model, output, self.temperature)

    # ------------------------------------------------------------------------------------------------- loss
    def _teacher_hidden(self, model, inputs, rows: torch.Tensor) -> torch.Tensor:
        """The teacher pass (`passes.teacher_hidden`) of the rows to distil, all rows unless
        `skip_undistilled_teacher`: [B, T, H], through the teacher's shared prefixes with
        `teacher_prefix_cache`."""
        teacher = self.teacher_model if self.teacher_model is not None else model
        if not self.args.skip_undistilled_teacher:
            rows = torch.ones_like(rows, dtype=torch.bool)
        prefix_cache = self.args.teacher_prefix_cache and self._prefix_refusal is None
        return passes.teacher_hidden(
            teacher, inputs, rows, prefix_cache=prefix_cache, context=self._teacher_context
        )

    def _student_terms(self, model, inputs, positions: torch.Tensor, teacher_hidden: torch.Tensor):
        """The student pass (`passes.student_terms`): `DistillTerms`, each [B, T] (zero off `positions`)."""
        head = passes.DistillHead.from_config(self.args, self.temperature)
        return passes.student_terms(model, inputs, positions, teacher_hidden, head)

    def _loss_mask(self, inputs) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]

    def _aggregate(self, values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        aggregation = AGGREGATION_FOR_LOSS_TYPE.get(self.loss_type, "sequence_mean")
        if self.args.distill_weight > 0 and self.args.pg_weight == 0:
            aggregation = "sequence_mean"  # Eq. 10: mean over rollouts of each rollout's token mean
        if aggregation == "fixed_length":
            return aggregate(values_BT, mask_BT, aggregation, max_length=self.max_completion_length)
        return aggregate(values_BT, mask_BT, aggregation)

    def _distillation_loss(self, model, inputs) -> torch.Tensor:
        """(1/G) sum_i (1/|o_i|) sum_t L_{i,t} (+ beta * KL(pi_theta || pi_0))   # Eq. 10, L from Eq. 13."""
        mask = self._loss_mask(inputs).float()
        distill = inputs["distill_mask"].bool()
        with_ref = self.beta != 0.0 and self.args.pg_weight == 0
        positions = mask.bool() & (distill[:, None] | with_ref)
        terms = self._student_terms(model, inputs, positions, self._teacher_hidden(model, inputs, distill))
        div, s_logp, t_logp = terms.divergence, terms.student_logp, terms.teacher_logp
        distill_mask = mask * distill[:, None].float()
        self.step_metrics.diagnostics(inputs, terms, distill_mask)
        kept = distill_position_mask(
            inputs["hsd_tau"], mask.size(1), self.args.distill_positions, self.args.tau_window
        )
        distilled = div
        if self.args.sharper_teacher_only:  # Eq. 10 with L_t x 1[H(pT_t) < H(pS_t)], still over all of o_i
            sharper = (terms.teacher_entropy < terms.student_entropy).float()
            self.step_metrics.mean("hsd/sharper_teacher_frac", sharper, distill_mask * kept.float())
            distilled = div * sharper
        loss = self._aggregate(distilled, distill_mask * kept.float())
        if with_ref:  # sequence-level KL to the initial policy, beta (method doc, step 7)
            kl = reference_kl(s_logp, inputs["ref_per_token_logps"])
            loss = loss + self.beta * self._aggregate(kl, mask)
            self.step_metrics.mean("kl", kl, mask)
        self.step_metrics.credit(inputs, div.detach(), (t_logp - s_logp).detach(), distill_mask)
        training = self.step_metrics.mode() == "train"
        return loss / (self.current_gradient_accumulation_steps if training else 1.0)

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
        self.step_metrics.credit(inputs, None, (t_logp - s_logp), positions.float())
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

    def training_step(self, model, inputs, num_items_in_batch):
        self.phases.seconds.clear()
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nonfinite_steps.add_loss(loss)
        self.step_metrics.phase_times(dict(self.phases.seconds), time.perf_counter() - start)
        return loss
