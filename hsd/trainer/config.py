"""`HSDConfig`: TRL's `GRPOConfig` plus the knobs of Hindsight Self-Distillation and its baselines.

A `method` preset fills the fields a user left unset and never overrides a value the user set; GRPO-family
baselines are configured through TRL's own fields (`loss_type`, `importance_sampling_level`, `epsilon_high`,
`scale_rewards`), so they are TRL's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trl import GRPOConfig

from hsd.core.checks import is_int, is_number
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

# the fields a preset fills: the method's terms (context, loss weights, rlsd) and the TRL fields above
PRESET_FIELDS = (*asdict(METHOD_TERMS["hsd"]), *dict.fromkeys(k for p in TRL_PRESETS.values() for k in p))

# HSDConfig's own fields by topic, as `hsd train --help` lists them (every own field is in one; tested). A
# table, not a metadata key: HfArgumentParser passes each field's metadata to argparse, which takes no "group".
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "method": ("method", "context", "distill_weight", "pg_weight", "rlsd", "rlsd_lambda", "rlsd_eps"),
    "teacher": (
        "peer_rule", "fallback", "distill_successes", "success_threshold", "teacher_weights",
        "teacher_ema_decay", "teacher_temperature", "teacher_answer_template", "teacher_peer_template",
        "teacher_reference_template", "teacher_suffix_template", "max_peer_tokens", "answer_column",
        "reference_column",
    ),
    "loss": ("divergence", "divergence_alpha", "divergence_topk", "divergence_clip", "distill_positions",
             "tau_window", "sharper_teacher_only"),
    "performance": (
        "divergence_chunk_size", "skip_undistilled_teacher", "teacher_prefix_cache", "teacher_inference_mode",
        "analytic_distill_head", "distill_grad_cache_mb",
    ),
    "safety": ("max_uncomputed_reward_fraction", "max_nonfinite_steps"),
    "rollouts (vLLM)": ("vllm_dtype", "vllm_enforce_eager"),
}  # fmt: skip

_DEFAULT_TEMPLATE = TeacherTemplate()


def method_preset(method: str) -> dict:
    """The values `method` gives the fields a user leaves unset (a subset of PRESET_FIELDS)."""
    return {**asdict(METHOD_TERMS[method]), **TRL_PRESETS.get(method, {})}


def _preset_trl_field(name: str):
    """TRL's field `name` with the default None (unset): the method's preset, else TRL's default, fills it."""
    trl = GRPOConfig.__dataclass_fields__[name]
    help_text = (
        f"{trl.metadata['help']} Unset (null): the method's preset, else TRL's default {trl.default!r}."
    )
    return field(default=None, metadata={"help": help_text})


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"HSDConfig.{name}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass
class HSDConfig(GRPOConfig):
    """Configuration for `HSDTrainer`. Every field of `trl.GRPOConfig` applies; these are added."""

    # A user's value of a preset field always wins. The fields a preset fills default to None, "unset", and
    # __post_init__ fills each None from the preset (for a TRL field without a preset value: TRL's default).
    # A sentinel default rather than a record of the arguments passed to __init__: HfArgumentParser (TRL's
    # own command line) passes every field, defaults included, so only the value can tell "unset"; and a
    # user's value equal to TRL's default (loss_type="dapo" under method gspo) is still the user's.
    loss_type: str | None = _preset_trl_field("loss_type")
    scale_rewards: str | None = _preset_trl_field("scale_rewards")
    importance_sampling_level: str | None = _preset_trl_field("importance_sampling_level")
    epsilon: float | None = _preset_trl_field("epsilon")
    epsilon_high: float | None = _preset_trl_field("epsilon_high")
    mask_truncated_completions: bool | None = _preset_trl_field("mask_truncated_completions")

    method: str = field(
        default="hsd",
        metadata={
            "help": f"Preset that fills the fields left unset, never a value you set: {', '.join(METHODS)}."
        },
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

    vllm_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the colocated vLLM engine (auto, float32, bfloat16, float16). None: the policy's "
            "dtype on the CPU, vLLM's choice on a GPU."
        },
    )
    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Run the colocated vLLM engine without torch.compile / CUDA graphs. None: true on the CPU "
            "(compiling takes a minute there), vLLM's choice on a GPU."
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
        self.filled_by_preset = self._fill_unset_fields()
        _check_choice("context", self.context, CONTEXT_MODES)
        _check_choice("peer_rule", self.peer_rule, PEER_RULES)
        _check_choice("divergence", self.divergence, DIVERGENCE_KINDS)
        _check_choice("teacher_weights", self.teacher_weights, TEACHER_WEIGHTS)
        _check_choice("distill_positions", self.distill_positions, DISTILL_POSITIONS)
        if not is_int(self.tau_window) or self.tau_window < 0:
            raise ValueError(f"HSDConfig.tau_window={self.tau_window!r} must be an int >= 0")
        temperature = self.teacher_temperature
        if not is_number(temperature) or not temperature > 0:
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

    def _fill_unset_fields(self) -> dict:
        """Each preset field left unset (None) takes the method's value, else TRL's default; returns the
        values the preset filled (recipe.json records them)."""
        preset, filled = method_preset(self.method), {}
        for name in PRESET_FIELDS:
            if getattr(self, name) is not None:
                continue  # the user's value
            if name in preset:
                filled[name] = preset[name]
                setattr(self, name, preset[name])
            else:
                setattr(self, name, GRPOConfig.__dataclass_fields__[name].default)
        return filled

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
