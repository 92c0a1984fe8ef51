"""What an HSD step adds to TRL's logged metrics: the teacher plan's statistics, the distillation diagnostics
and credit at tau, and the time of each phase of the step. Every value goes into TRL's per-mode lists
(`trainer._metrics`, averaged and cleared by TRL's `log`); a masked mean is reduced over all processes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import fields

import torch

from hsd.core.distill import DistillTerms
from hsd.core.plan import GroupStatistics
from hsd.core.positions import rollout_regions

# The phases of a step timed by `PhaseTimer` and logged as `time/<phase>`; `time/update` is the rest of the
# step (student pass, loss, backward). The teacher prompts are timed but not logged on their own.
LOGGED_PHASES = ("rollout", "scoring", "teacher")


class PhaseTimer:
    """Seconds spent in each named phase of the current training step (`timed(name)` adds to `seconds`)."""

    def __init__(self):
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


class StepMetrics:
    """The HSD metrics of one trainer, written into its TRL metric lists for the current mode."""

    def __init__(self, trainer):
        self.trainer = trainer

    def mode(self) -> str:
        """TRL's metric mode: "train" while the model trains, else "eval"."""
        return "train" if self.trainer.model.training else "eval"

    def add(self, name: str, value: float, mode: str | None = None) -> None:
        self.trainer._metrics[mode or self.mode()][name].append(value)

    def mean(self, name: str, values_BT: torch.Tensor, mask_BT: torch.Tensor) -> None:
        """The masked mean of [B, T] values over all processes."""
        totals = torch.stack([(values_BT * mask_BT).sum(), mask_BT.sum()]).float()
        totals = self.trainer.accelerator.reduce(totals, reduction="sum")
        self.add(name, (totals[0] / totals[1].clamp(min=1.0)).item())

    def means(self, named: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Masked means of several [B, T] values over all processes (one reduce); a name whose mask is empty
        everywhere is not logged this step."""
        totals = torch.stack([torch.stack([(v * m).sum(), m.sum()]).float() for v, m in named.values()])
        totals = self.trainer.accelerator.reduce(totals, reduction="sum")
        for name, (total, count) in zip(named, totals.tolist(), strict=True):
            if count > 0:
                self.add(name, total / count)

    def statistics(self, statistics: GroupStatistics) -> None:
        """Each statistic of the step's groups as `hsd/<name>` (those that are None are not logged)."""
        for field in fields(statistics):
            value = getattr(statistics, field.name)
            if value is not None:
                self.add(f"hsd/{field.name}", value)

    def diagnostics(self, inputs, terms: DistillTerms, scored_BT: torch.Tensor) -> None:
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
        self.means(means)

    def credit(self, inputs, div, credit, distill_mask) -> None:
        """Mean divergence, distilled tokens, and mean |A_t| (Eq. 2) at tau versus elsewhere."""
        if div is not None:
            self.mean("hsd/divergence_mean", div, distill_mask)
        tokens = self.trainer.accelerator.reduce(distill_mask.sum().float(), reduction="sum")
        self.add("hsd/distilled_tokens", tokens.item())
        taus = inputs["hsd_tau"]
        T = credit.size(1)
        at_tau = torch.zeros_like(distill_mask)
        rows = (taus >= 0) & (taus < T)
        at_tau[rows.nonzero(as_tuple=True)[0], taus[rows]] = 1.0
        at_tau = at_tau * distill_mask
        failed_with_tau = distill_mask * rows[:, None].float()
        self.mean("hsd/abs_credit_at_tau", credit.abs(), at_tau)
        self.mean("hsd/abs_credit_elsewhere", credit.abs(), failed_with_tau - at_tau)

    def phase_times(self, seconds: dict[str, float], total: float) -> None:
        """`time/<phase>` of a training step taking `total` seconds, and `time/update`: the rest of it."""
        for name in LOGGED_PHASES:
            self.add(f"time/{name}", seconds.get(name, 0.0), mode="train")
        other = sum(seconds.get(name, 0.0) for name in (*LOGGED_PHASES, "teacher_prompts"))
        self.add("time/update", max(total - other, 0.0), mode="train")
