"""The two model passes of an HSD step, the teacher pass (`teacher_hidden`) and the student pass
(`student_terms`), and the completions' mean log-probs that the perplexity peer rules rank
(`mean_completion_logps`).

Each owns its forward: the decoder stack (`hsd.models.language_model`, so an adapter is applied as it is
switched), the shared-prefix KV cache of the teacher (`hsd.teacher.prefix`), the positions that predict the
completion (`hsd.core.batch.predicting_completion`) and the distillation head (`hsd.core.distill`), so
[B, T, V] logits never exist for both sides at once. A pass runs as the forward of the model it is given,
the engine's wrapper included: `run_in_forward` is the one place that calls through the wrapper, and says
why.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel

from hsd.core.batch import predicting_completion
from hsd.core.distill import DistillTerms, analytic_head_refusal, distill_terms
from hsd.core.head import chunked_token_logps, output_head
from hsd.models import language_model
from hsd.teacher.prefix import distinct_prefixes, prefix_shared_hidden, shared_prefix_refusal


@dataclass(frozen=True)
class DistillHead:
    """How the student pass turns both sides' hidden states into `DistillTerms` (Eq. 13 by default)."""

    kind: str = "kl_teacher_student"  # the divergence (`hsd.core.losses.token_divergence`)
    temperature: float = 1.0  # both sides' logits are divided by it
    alpha: float | None = None  # the divergence's mixing weight, where it has one
    topk: int | None = None  # restrict the divergence to the teacher's top-k tokens
    clip: float | None = None  # clip each token's divergence at this value
    chunk_size: int = 1024  # positions per chunk of [chunk, V] logits
    teacher_temperature: float = 1.0  # the teacher is pT^(1/teacher_temperature), renormalised
    analytic: bool = True  # the worked-out gradient (`hsd.core.distill`) where it applies
    keep_grad_bytes: float = 0  # keep the [N, V] logit gradient from the forward up to this many bytes

    @classmethod
    def from_config(cls, args, temperature: float) -> DistillHead:
        """The head an `HSDConfig` asks for, at the sampling temperature (TRL's `temperature`)."""
        return cls(
            kind=args.divergence,
            temperature=temperature,
            alpha=args.divergence_alpha,
            topk=args.divergence_topk,
            clip=args.divergence_clip,
            chunk_size=args.divergence_chunk_size,
            teacher_temperature=args.teacher_temperature,
            analytic=args.analytic_distill_head,
            keep_grad_bytes=float(args.distill_grad_cache_mb) * 2**20,
        )


def fallback_line(model, args) -> str | None:
    """One line naming the model family and each teacher-pass optimisation switched on in `args` that it
    cannot use, with why (None when it can use them all); those parts run the plain path instead."""
    reasons = []
    if args.teacher_prefix_cache and (why := shared_prefix_refusal(model.config)):
        reasons.append(f"teacher_prefix_cache falls back to a full teacher pass per rollout ({why})")
    if args.analytic_distill_head and (why := analytic_head_refusal(model.config)):
        reasons.append(f"analytic_distill_head falls back to autograd on chunks ({why})")
    return f"{type(model).__name__}: " + "; ".join(reasons) if reasons else None


# ------------------------------------------------------------------------------ the call through the engine
class PassForward:
    """`model.forward`, unchanged, plus one call: `model(input_ids=..., attention_mask=..., hsd_pass=run)`
    returns `run(model, input_ids=..., attention_mask=...)`, with `model` the model it is installed on (the
    outermost one: a peft `PeftModel` too)."""

    def __init__(self, model):
        functools.update_wrapper(self, model.forward)  # name, docs and signature of the model's forward
        self.model, self.inner = model, model.forward

    def __call__(self, *args, hsd_pass=None, **kwargs):
        if hsd_pass is None:
            return self.inner(*args, **kwargs)
        return hsd_pass(self.model, **kwargs)


def install_pass_forward(model) -> None:
    """Put `PassForward` on `model.forward` (once; a second call leaves it as it is). Before the engine
    prepares the model, so accelerate's mixed-precision autocast wraps it as it wraps the model's forward."""
    if not isinstance(model.forward, PassForward):
        model.forward = PassForward(model)


def run_in_forward(model, run, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """`run(unwrapped model, input_ids=, attention_mask=)` called as the forward of `model` (`PassForward`):
    the one call of a pass through the engine's wrapper, as TRL's fused LM head is called. Calling the bare
    decoder stack instead skips what each wrapper does around a forward: DDP prepares its gradient
    all-reduce there (without it the backward syncs nothing); FSDP2's root pre-forward hook unshards the
    root-level parameters (embeddings, final norm, LM head), which would stay sharded; DeepSpeed's forward
    marks the modules as in a forward, which ZeRO-3 needs to fetch a partitioned parameter used outside its
    own module (a tied LM head); accelerate's mixed-precision autocast wraps only the model's forward."""
    return model(input_ids=input_ids, attention_mask=attention_mask, hsd_pass=run)


# ---------------------------------------------------------------------------------------------- the passes
@dataclass(frozen=True)
class _HiddenPass:
    """Final hidden states at the positions that predict the last `T` tokens, [B, T, H]."""

    T: int

    def __call__(self, model, **inputs) -> torch.Tensor:
        hidden = language_model(model).base_model(**inputs, use_cache=False).last_hidden_state
        return predicting_completion(hidden, self.T)


@dataclass(frozen=True)
class _SharedPrefixPass:
    """The same hidden states for rows [distinct prefix `prefix_of_row[r]` ; completion r], each distinct
    prefix run once and its KV cache shared (`hsd.teacher.prefix.prefix_shared_hidden`)."""

    prefix_of_row: torch.Tensor  # [R] each row's index among the distinct prefixes
    completion_ids: torch.Tensor  # [R, T]
    completion_mask: torch.Tensor  # [R, T]

    def __call__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone = language_model(model).base_model
        return prefix_shared_hidden(
            backbone, input_ids, attention_mask, self.prefix_of_row, self.completion_ids, self.completion_mask
        )


@dataclass(frozen=True)
class _StudentPass:
    """`DistillTerms` at `positions` from one pass of the student's decoder stack and its output head (soft-
    capped where the config says so); the teacher's side is its hidden states from the teacher pass."""

    completion_ids: torch.Tensor  # [B, T] the sampled tokens o_t
    positions: torch.Tensor  # bool [B, T]: where the divergence is computed
    teacher_hidden: torch.Tensor  # [B, T, H] the teacher pass's final hidden states (stop-gradient)
    head: DistillHead

    def __call__(self, model, **inputs) -> DistillTerms:
        lm, head = language_model(model), self.head
        hidden = lm.base_model(**inputs, use_cache=False).last_hidden_state
        student = predicting_completion(hidden, self.completion_ids.size(1))
        dtype = lm.get_output_embeddings().weight.dtype
        return distill_terms(
            self.teacher_hidden[self.positions].to(dtype),
            student[self.positions].to(dtype),
            self.completion_ids[self.positions],
            output_head(lm),
            kind=head.kind,
            temperature=head.temperature,
            teacher_temperature=head.teacher_temperature,
            alpha=head.alpha,
            topk=head.topk,
            clip=head.clip,
            chunk_size=head.chunk_size,
            keep_grad_bytes=head.keep_grad_bytes,
            analytic=head.analytic,
        )


@torch.no_grad()
def mean_completion_logps(model, batch, temperature: float) -> list[float]:
    """Mean token log-prob of each completion of `batch` (TRL's prompt / completion ids and masks) under
    `model`, logits divided by `temperature` (the perplexity peer rules)."""
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    hidden = run_in_forward(
        model,
        _HiddenPass(ids.size(1)),
        torch.cat([batch["prompt_ids"], ids], dim=1),
        torch.cat([batch["prompt_mask"], mask], dim=1),
    )
    head = output_head(language_model(extract_model_from_parallel(model)))  # as `accelerator.unwrap_model`
    logp = chunked_token_logps(
        hidden.reshape(-1, hidden.size(-1)), ids.reshape(-1), head, temperature=temperature
    ).view_as(ids.float())
    return ((logp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def teacher_batch(inputs, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher sequences [teacher prompt (left-padded) ; the student's completion ids] for rows `index`."""
    ids = torch.cat([inputs["teacher_prompt_ids"][index], inputs["completion_ids"][index]], dim=1)
    mask = torch.cat([inputs["teacher_prompt_mask"][index], inputs["completion_mask"][index]], dim=1)
    return ids, mask


def teacher_hidden(teacher, inputs, rows: torch.Tensor, *, prefix_cache: bool, context=nullcontext):
    """The teacher pass over the teacher sequences of `rows` (bool [B]), under `context()` (the caller's
    stop-gradient and teacher weights): [B, T, H], zero in the other rows.

    With `prefix_cache` each distinct teacher prefix runs once and its KV cache serves every row that
    shares it. Every process runs the forward (sharded engines gather weights collectively): with no row
    here it runs on row 0 and the result is discarded.
    """
    completion_ids = inputs["completion_ids"]
    T = completion_ids.size(1)
    index = rows.nonzero(as_tuple=True)[0]
    run = index if len(index) else torch.zeros(1, dtype=torch.long, device=rows.device)
    with context():
        if prefix_cache:
            prefix_ids, prefix_mask, prefix_of_row = distinct_prefixes(
                inputs["teacher_prompt_ids"][run], inputs["teacher_prompt_mask"][run]
            )
            shared = _SharedPrefixPass(prefix_of_row, completion_ids[run], inputs["completion_mask"][run])
            hidden = run_in_forward(teacher, shared, prefix_ids, prefix_mask)
        else:
            hidden = run_in_forward(teacher, _HiddenPass(T), *teacher_batch(inputs, run))
    out = hidden.new_zeros(completion_ids.size(0), T, hidden.size(-1))
    if len(index):
        out[index] = hidden
    return out


def student_terms(
    model, inputs, positions: torch.Tensor, teacher_hidden: torch.Tensor, head: DistillHead
) -> DistillTerms:
    """The student pass over [prompt ; completion]: `DistillTerms`, each [B, T] (zero off `positions`)."""
    completion_ids = inputs["completion_ids"]
    terms = run_in_forward(
        model,
        _StudentPass(completion_ids, positions, teacher_hidden, head),
        torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
    )
    out = []
    for values in terms:
        full = torch.zeros(completion_ids.shape, dtype=values.dtype, device=values.device)
        full[positions] = values
        out.append(full)
    return DistillTerms(*out)
