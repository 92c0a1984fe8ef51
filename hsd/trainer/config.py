"""`HSDConfig`: TRL's `GRPOConfig` plus the knobs of Hindsight Self-Distillation and its baselines.

A `method` preset fills every knob left unset; GRPO-family baselines are configured through TRL's own
fields (`loss_type`, `importance_sampling_level`, `epsilon_high`, `scale_rewards`), so they are TRL's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from hsd.core.contexts import CONTEXT_MODES
from hsd.core.losses import DIVERGENCE_KINDS
from hsd.core.methods import METHOD_TERMS, METHODS
from hsd.core.peers import PEER_RULES, SUCCESS_THRESHOLD
from hsd.core.positions import DISTILL_POSITIONS
from hsd.teacher.template import TeacherTemplate

TEACHER_WEIGHTS = ("live", "ema", "frozen")

_GRPO = dict(loss_type="grpo", scale_rewards="group", importance_sampling_level="token")
# method -> the TRL GRPO fields it sets (its context and loss weights are `hsd.core.methods.METHOD_TERMS`)
TRL_PRESETS: dict[str, dict] = {
    "grpo_opsd": _GRPO,
    "rlsd": _GRPO,
    "grpo": _GRPO,
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none", importance_sampling_level="token"),
    "dapo": dict(
        loss_type="dapo",
        scale_rewards="group",
        importance_sampling_level="token",
        epsilon=0.2,
        epsilon_high=0.28,
        mask_truncated_completions=True,
    ),
    "gspo": dict(
        loss_type="grpo",
        scale_rewards="group",
        importance_sampling_level="sequence",
        epsilon=3e-4,
        epsilon_high=4e-4,
    ),
}

_DEFAULT_TEMPLATE = TeacherTemplate()


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"HSDConfig.{name}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class HSDConfig(GRPOConfig):
    """Configuration for `HSDTrainer`. Every field of `trl.GRPOConfig` applies; these are added."""

    method: str = field(
        default="hsd",
        metadata={"help": f"Preset that fills the knobs below left unset: {', '.join(METHODS)}."},
    )
    context: str | None = field(
        default=None,
        metadata={
            "help": f"Teacher's privileged context: {', '.join(CONTEXT_MODES)} (Eq. 9). Preset if unset."
        },
    )
    peer_rule: str = field(
        default="uniform",
        metadata={"help": f"How a successful peer is chosen from the group: {', '.join(PEER_RULES)}."},
    )
    fallback: bool = field(
        default=True,
        metadata={
            "help": "With no successful peer, fall back to the answer-only context (else no distillation)."
        },
    )
    distill_successes: bool = field(
        default=True,
        metadata={"help": "Distil successful rollouts too, toward another success (the equations say yes)."},
    )
    success_threshold: float = field(
        default=SUCCESS_THRESHOLD,
        metadata={"help": "A rollout whose total reward is >= this counts as a success."},
    )
    divergence: str = field(
        default="kl_teacher_student",
        metadata={
            "help": f"Per-token divergence: {', '.join(DIVERGENCE_KINDS)} (Eq. 13 is kl_teacher_student)."
        },
    )
    divergence_alpha: float | None = field(
        default=None, metadata={"help": "Interpolation weight of the generalised JSD (kind jsd), in [0, 1]."}
    )
    divergence_topk: int | None = field(
        default=None,
        metadata={"help": "Number of teacher top tokens kept for kind topk (plus one tail bucket)."},
    )
    divergence_clip: float | None = field(
        default=None,
        metadata={"help": "Clamp each per-token divergence to at most this value (None: no clip)."},
    )
    teacher_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Teacher sharpened (< 1) or flattened (> 1): pT proportional to pT^(1/teacher_temperature)."
        },
    )
    distill_positions: str = field(
        default="all",
        metadata={
            "help": f"Positions distilled: {', '.join(DISTILL_POSITIONS)} (the last two: failures with a peer)."
        },
    )
    tau_window: int = field(
        default=2,
        metadata={"help": "Half-width w of distill_positions=tau_window: positions with |t - tau| <= w."},
    )
    sharper_teacher_only: bool = field(
        default=False,
        metadata={
            "help": "Distil only positions where the teacher (after teacher_temperature) has lower entropy "
            "than the student, H(pT) < H(pS); the other positions' L_t count as 0 in Eq. 10's token mean."
        },
    )
    distill_weight: float | None = field(
        default=None, metadata={"help": "Weight of the distillation loss (pure HSD 1.0). Preset if unset."}
    )
    pg_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of TRL's policy-gradient loss (pure HSD 0.0). Preset if unset."},
    )
    teacher_weights: str = field(
        default="live",
        metadata={
            "help": "Teacher weights: live (current, stop-gradient; the paper's), ema, or frozen (initial)."
        },
    )
    teacher_ema_decay: float = field(
        default=0.99, metadata={"help": "EMA decay per optimizer step when teacher_weights=ema."}
    )
    rlsd: bool | None = field(
        default=None,
        metadata={"help": "Reweight GRPO advantages per token by the teacher (RLSD). Preset if unset."},
    )
    rlsd_lambda: float = field(
        default=0.5, metadata={"help": "RLSD mixing: A_t = A * ((1 - lambda) + lambda * w_t)."}
    )
    rlsd_eps: float = field(default=0.2, metadata={"help": "RLSD weight clip: w_t in [1 - eps, 1 + eps]."})
    teacher_answer_template: str = field(
        default=_DEFAULT_TEMPLATE.answer,
        metadata={"help": "Text added to the teacher prompt for the answer."},
    )
    teacher_peer_template: str = field(
        default=_DEFAULT_TEMPLATE.peer, metadata={"help": "Text added to the teacher prompt for the peer."}
    )
    teacher_reference_template: str = field(
        default=_DEFAULT_TEMPLATE.reference,
        metadata={"help": "Text added to the teacher prompt for a reference solution."},
    )
    teacher_suffix_template: str = field(
        default=_DEFAULT_TEMPLATE.suffix, metadata={"help": "Text that closes the privileged context."}
    )
    max_peer_tokens: int | None = field(
        default=None,
        metadata={"help": "Truncate a peer's completion to this many tokens in the teacher prompt."},
    )
    divergence_chunk_size: int = field(
        default=1024,
        metadata={"help": "Positions per chunk of the full-vocabulary divergence (memory bound)."},
    )
    skip_undistilled_teacher: bool = field(
        default=True, metadata={"help": "Run no teacher pass for rollouts that get no distillation."}
    )
    teacher_prefix_cache: bool = field(
        default=True,
        metadata={"help": "Run each distinct teacher prefix (prompt + context) once and share its KV cache."},
    )
    teacher_inference_mode: bool = field(
        default=True,
        metadata={
            "help": "Teacher pass under torch.inference_mode (else no_grad); no_grad under ZeRO-3 / FSDP."
        },
    )
    analytic_distill_head: bool = field(
        default=True,
        metadata={"help": "Student head for Eq. 13 with a worked-out gradient (else autograd on chunks)."},
    )
    distill_grad_cache_mb: float = field(
        default=1024,
        metadata={
            "help": "Keep the head's [N, V] logit gradient from the forward up to this size (0: recompute)."
        },
    )
    answer_column: str = field(
        default="answer", metadata={"help": "Dataset column holding the gold answer a* (teacher context)."}
    )
    reference_column: str = field(
        default="reference", metadata={"help": "Dataset column holding a worked reference solution (sdft)."}
    )
    max_uncomputed_reward_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Stop training when more than this share of a batch's rewards could not be computed."
        },
    )

    max_nonfinite_steps: int = field(
        default=3,
        metadata={
            "help": "Stop when more than this many optimizer steps in a row had a non-finite loss or gradient."
        },
    )

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        terms = METHOD_TERMS[self.method]
        for name in ("context", "distill_weight", "pg_weight", "rlsd"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(terms, name))
        for name, value in TRL_PRESETS.get(self.method, {}).items():
            setattr(self, name, value)
        _check_choice("context", self.context, CONTEXT_MODES)
        _check_choice("peer_rule", self.peer_rule, PEER_RULES)
        _check_choice("divergence", self.divergence, DIVERGENCE_KINDS)
        _check_choice("teacher_weights", self.teacher_weights, TEACHER_WEIGHTS)
        _check_choice("distill_positions", self.distill_positions, DISTILL_POSITIONS)
        if isinstance(self.tau_window, bool) or not isinstance(self.tau_window, int) or self.tau_window < 0:
            raise ValueError(f"HSDConfig.tau_window={self.tau_window!r} must be an int >= 0")
        temperature = self.teacher_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"HSDConfig.teacher_temperature={temperature!r} must be a number > 0")
        if self.distill_positions != "all" and self.context not in ("hsd", "peer"):
            raise ValueError(
                f"HSDConfig.distill_positions={self.distill_positions!r} needs tau, i.e. a context with a peer "
                f"(hsd or peer), got context={self.context!r}"
            )
        if self.divergence_alpha is not None and not 0.0 <= self.divergence_alpha <= 1.0:
            raise ValueError(f"HSDConfig.divergence_alpha={self.divergence_alpha} must be in [0, 1]")
        if self.divergence == "topk" and not self.divergence_topk:
            raise ValueError("HSDConfig.divergence_topk must be set (> 0) when divergence='topk'")
        for name in ("distill_weight", "pg_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"HSDConfig.{name}={getattr(self, name)} must be >= 0")
        if self.distill_weight == 0 and self.pg_weight == 0:
            raise ValueError("HSDConfig.distill_weight and pg_weight are both 0: nothing to train")
        if not 0.0 <= self.teacher_ema_decay < 1.0:
            raise ValueError(f"HSDConfig.teacher_ema_decay={self.teacher_ema_decay} must be in [0, 1)")
        if not 0.0 <= self.rlsd_lambda <= 1.0:
            raise ValueError(f"HSDConfig.rlsd_lambda={self.rlsd_lambda} must be in [0, 1]")
        if not 0.0 < self.rlsd_eps < 1.0:
            raise ValueError(f"HSDConfig.rlsd_eps={self.rlsd_eps} must be in (0, 1)")
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"HSDConfig.max_nonfinite_steps={self.max_nonfinite_steps} must be >= 0")
        if self.divergence_chunk_size < 1:
            raise ValueError("HSDConfig.divergence_chunk_size must be >= 1")
        if self.use_cpu and self.bf16 is None:
            self.bf16 = False  # TRL defaults to bf16 autocast, which is slow on most CPUs
        if getattr(self, "activation_checkpointing", False) is None:
            # transformers renamed gradient_checkpointing (TRL's default: on): pass the value under the new name
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()

    @property
    def teacher_template(self) -> TeacherTemplate:
        """The teacher prompt template assembled from the four template fields."""
        return TeacherTemplate(
            answer=self.teacher_answer_template,
            peer=self.teacher_peer_template,
            reference=self.teacher_reference_template,
            suffix=self.teacher_suffix_template,
        )

    @property
    def needs_teacher(self) -> bool:
        """Whether any term of the loss uses the teacher's distribution."""
        return self.distill_weight > 0 or bool(self.rlsd)
