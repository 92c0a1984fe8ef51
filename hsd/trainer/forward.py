"""A model forward that returns hidden states (teacher pass) or the distillation terms (student pass).

Like TRL's fused LM head, it is installed on the model's `forward`, so calling the (DDP / DeepSpeed / FSDP)
wrapped model runs it with the engine's hooks, and [B, T, V] logits never exist for both sides at once. The
head's computation is `hsd.core.distill.distill_terms`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from hsd.core.distill import DistillTerms, distill_terms
from hsd.core.head import output_head
from hsd.models import language_model
from hsd.teacher.prefix import prefix_shared_hidden


@dataclass(frozen=True)
class DistillSpec:
    """What the student pass distils (`model(..., hsd_distill=DistillSpec(...))`): the tensors, the
    divergence settings (Eq. 13 by default) and the head that computes it."""

    completion_ids: torch.Tensor  # [B, T] the sampled tokens o_t
    positions: torch.Tensor  # bool [B, T]: where the divergence is computed
    teacher_hidden: torch.Tensor  # [B, T, H] the teacher pass's final hidden states (stop-gradient)
    kind: str = "kl_teacher_student"  # the divergence (`hsd.core.losses.token_divergence`)
    temperature: float = 1.0  # both sides' logits are divided by it
    alpha: float | None = None  # the divergence's mixing weight, where it has one
    topk: int | None = None  # restrict the divergence to the teacher's top-k tokens
    clip: float | None = None  # clip each token's divergence at this value
    chunk_size: int = 1024  # positions per chunk of [chunk, V] logits
    teacher_temperature: float = 1.0  # the teacher is pT^(1/teacher_temperature), renormalised
    analytic_head: bool = True  # the worked-out gradient (`hsd.core.distill`) where it applies
    keep_grad_bytes: float = 0  # keep the [N, V] logit gradient from the forward up to this many bytes


@dataclass(frozen=True)
class PrefixSpec:
    """What the shared-prefix teacher pass runs (`model(input_ids=prefix_ids, attention_mask=prefix_mask,
    hsd_prefix=PrefixSpec(...))`): row r is [distinct prefix `prefix_of_row[r]` ; its completion]."""

    prefix_of_row: torch.Tensor  # [R] each row's index among the distinct prefixes
    completion_ids: torch.Tensor  # [R, T] the completion tokens
    completion_mask: torch.Tensor  # [R, T]


class HSDForward:
    """`model.forward` with three call modes added (the model's own forward, unchanged, otherwise). Installed
    on the outermost model (a peft `PeftModel` too): the modes reach the decoder stack and the LM head through
    `hsd.models.language_model`, so an adapter in the layers is applied as it is switched (on, off, another):

    - `model(input_ids, attention_mask, hsd_hidden=T)` -> final hidden states at the T positions that predict
      the last T tokens, [B, T, H] (the teacher pass).
    - `model(input_ids=prefix_ids, attention_mask=prefix_mask, hsd_prefix=PrefixSpec(...))` -> the same
      hidden states for [prefix ; completion] rows, each distinct prefix run once and its KV cache shared
      (`hsd.teacher.prefix`).
    - `model(input_ids, attention_mask, hsd_distill=DistillSpec(...))` -> `DistillTerms` (divergence,
      student and teacher log p(o_t), student and teacher entropies) at the selected completion positions,
      from one backbone pass (the student pass).
    """

    def __init__(self, model):
        functools.update_wrapper(self, model.forward)  # name, docs and signature of the model's forward
        self.model, self.inner = model, model.forward

    def __call__(
        self,
        *args,
        hsd_hidden: int | None = None,
        hsd_prefix: PrefixSpec | None = None,
        hsd_distill: DistillSpec | None = None,
        **kwargs,
    ):
        if hsd_hidden is None and hsd_distill is None and hsd_prefix is None:
            return self.inner(*args, **kwargs)
        backbone, prefix = language_model(self.model).base_model, hsd_prefix
        if prefix is not None:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            return prefix_shared_hidden(
                backbone, ids, mask, prefix.prefix_of_row, prefix.completion_ids, prefix.completion_mask
            )
        hidden = backbone(*args, **{**kwargs, "use_cache": False}).last_hidden_state
        if hsd_hidden is not None:
            return hidden[:, -hsd_hidden - 1 : -1]
        return self.distill(hidden, hsd_distill)

    def distill(self, hidden_BSH: torch.Tensor, spec: DistillSpec) -> DistillTerms:
        """The terms at `spec.positions` from the student pass's hidden states and the model's output head
        (soft-capped where the config says so)."""
        T = spec.completion_ids.size(1)
        lm = language_model(self.model)
        dtype = lm.get_output_embeddings().weight.dtype
        return distill_terms(
            spec.teacher_hidden[spec.positions].to(dtype),
            hidden_BSH[:, -T - 1 : -1][spec.positions].to(dtype),
            spec.completion_ids[spec.positions],
            output_head(lm),
            kind=spec.kind,
            temperature=spec.temperature,
            teacher_temperature=spec.teacher_temperature,
            alpha=spec.alpha,
            topk=spec.topk,
            clip=spec.clip,
            chunk_size=spec.chunk_size,
            keep_grad_bytes=spec.keep_grad_bytes,
            analytic=spec.analytic_head,
        )


def install_hsd_forward(model) -> None:
    """Replace `model.forward` by `HSDForward` (once; a second call leaves it as it is)."""
    if not isinstance(model.forward, HSDForward):
        model.forward = HSDForward(model)
