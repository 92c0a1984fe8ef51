"""The methods hsd trains: HSD and the baselines it is compared with (method doc, "Baselines"), each as
the teacher context it distils from and the weights of its two loss terms.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTerms:
    """What a method optimises: L = distill_weight * L_distill (Eq. 10/13) + pg_weight * L_pg (GRPO's).

    Pure self-distillation methods (hsd, opsd, sdft) have no policy-gradient term: reward acts only
    through which peer is chosen (method doc, step 7).
    """

    context: str  # the teacher's privileged context, one of CONTEXT_MODES (Eq. 9)
    distill_weight: float
    pg_weight: float
    rlsd: bool = False  # RLSD: the teacher's per-token credit reweights the GRPO advantage


# method -> its terms; the GRPO family's TRL fields (loss type, clipping, ...) are in `hsd.trainer.config`
METHOD_TERMS: dict[str, MethodTerms] = {
    "hsd": MethodTerms(context="hsd", distill_weight=1.0, pg_weight=0.0),
    "opsd": MethodTerms(context="opsd", distill_weight=1.0, pg_weight=0.0),
    "sdft": MethodTerms(context="reference", distill_weight=1.0, pg_weight=0.0),
    "grpo_opsd": MethodTerms(context="opsd", distill_weight=0.5, pg_weight=0.5),
    "rlsd": MethodTerms(context="opsd", distill_weight=0.0, pg_weight=1.0, rlsd=True),
    "grpo": MethodTerms(context="none", distill_weight=0.0, pg_weight=1.0),
    "dr_grpo": MethodTerms(context="none", distill_weight=0.0, pg_weight=1.0),
    "dapo": MethodTerms(context="none", distill_weight=0.0, pg_weight=1.0),
    "gspo": MethodTerms(context="none", distill_weight=0.0, pg_weight=1.0),
}
METHODS = tuple(METHOD_TERMS)
