"""Where the teacher's credit lands: A_t = log pT(o_t) - log pS(o_t) (Eq. 2) on failed rollouts, under each
context (answer only, peer + answer, reference), aligned at the first divergence from the peer (Eq. 11).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hsd.core.batch import padded
from hsd.core.checks import is_int
from hsd.core.contexts import context_for
from hsd.core.head import chunked_token_logps, output_head
from hsd.core.peers import RULES_FROM_REWARDS, SUCCESS_THRESHOLD
from hsd.core.plan import TeacherPlan, plan_teachers
from hsd.core.tau import (
    NO_TAU,
    abs_credit_at,
    coverage,
    credit_profile,
    first_divergence,
    mass_within,
    optimal_coverage,
    optimal_success_rate,
    silence_curve,
)
from hsd.models import language_model
from hsd.sampling import SamplingSettings, VerifiedGroups, progress_bar, sample_and_verify
from hsd.tasks.problem import UNCOMPUTED, Problem, chat_prompt
from hsd.tasks.rewards import Verifier
from hsd.teacher.prefix import distinct_prefixes, prefix_shared_hidden
from hsd.teacher.prompt import teacher_input_ids, tokenize_prompt
from hsd.teacher.template import DEFAULT_TEACHER_TEMPLATE, TeacherTemplate

# The context modes (CONTEXT_MODES) compared: opsd, the gold answer only; hsd, a successful peer + the
# answer (Eq. 9); reference, the reference solution (SDFT)
CONTEXTS = ("opsd", "hsd", "reference")
WIDTHS = (2, 4, 8, 16, 32)
# the tables of credit.json that hold one entry per context
PER_CONTEXT_TABLES = (
    "mass_within",
    "mass_within_random",
    "mass_within_tau_pos",
    "mass_within_random_tau_pos",
    "abs_credit_at_tau",
    "abs_credit_elsewhere",
    "peak_credit_at_tau",
)
# difficulty by the group's pass rate p: > .5 easy, .2 to .5 medium, < .2 hard (the paper's buckets)
DIFFICULTIES = ("easy", "medium", "hard")


def difficulty(pass_rate: float) -> str:
    """The difficulty bucket of a pass rate: easy (> .5), medium (.2 to .5), hard (< .2)."""
    if pass_rate > 0.5:
        return "easy"
    return "medium" if pass_rate >= 0.2 else "hard"


@dataclass
class FailedRollout:
    """A failed rollout with a successful peer, and its tokens' log-probs under the student and each teacher."""

    problem_id: str
    rollout: int  # index in its group
    peer: int  # index in its group of the successful peer the teacher sees
    pass_rate: float  # the group's success rate
    completion_ids: list[int]
    peer_ids: list[int]
    student_logps: list[float] = field(default_factory=list)
    teacher_logps: dict[str, list[float]] = field(default_factory=dict)  # context -> log pT per token
    reason: str = ""  # the verifier's reason for the failure
    reference_ids: list[int] | None = None  # the tokenized reference solution, when the problem has one
    completion_tokens: list[str] = field(default_factory=list)  # per-token text, for the report
    peer_tokens: list[str] = field(default_factory=list)
    prompt: str = ""
    answer: str = ""
    error_position: int | None = None  # the token holding the first wrong character, when the verifier knows
    tau: int = field(kw_only=True)  # the plan's first divergence from the peer (Eq. 11); NO_TAU: identical

    def credit(self, context: str) -> list[float]:
        """A_t = log pT(o_t) - log pS(o_t) (Eq. 2) under `context`."""
        teacher = self.teacher_logps[context]
        if len(teacher) != len(self.student_logps) or len(teacher) != len(self.completion_ids):
            raise ValueError(
                f"rollout {self.problem_id}/{self.rollout}: {len(teacher)} teacher and {len(self.student_logps)} "
                f"student log-probs for {len(self.completion_ids)} tokens ({context})"
            )
        return [t - s for t, s in zip(teacher, self.student_logps)]

    def to_json(self) -> dict:
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["credit"] = {c: self.credit(c) for c in self.teacher_logps}
        return record

    @classmethod
    def from_json(cls, record: dict) -> FailedRollout:
        fields = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        if "tau" in fields and fields["tau"] is None:  # written before NO_TAU: null meant identical
            fields["tau"] = NO_TAU
        return cls(**fields)


@dataclass
class GroupOutcome:
    """How one problem's group turned out: its size and how many rollouts succeeded."""

    problem_id: str
    group_size: int
    successes: int
    uncomputed: int = 0  # rollouts the verifier could not score: neither a failure nor a peer

    @property
    def pass_rate(self) -> float:
        return self.successes / self.group_size

    @property
    def failures_with_peer(self) -> int:
        return self.group_size - self.successes - self.uncomputed if self.successes else 0


# ------------------------------------------------------------------------------------------- the tables
def _clean(value):
    """NaN -> None, recursively, so credit.json is valid JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _prefix_stats(lengths: Sequence[int]) -> dict:
    """Shared-prefix lengths (tokens): n, median, mean, share with none shared."""
    if not lengths:
        return {"n": 0, "median": None, "mean": None, "zero_share": None}
    return {
        "n": len(lengths),
        "median": _median(lengths),
        "mean": sum(lengths) / len(lengths),
        "zero_share": sum(n == 0 for n in lengths) / len(lengths),
    }


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens two sequences share from the start (the whole length when they are identical)."""
    tau = first_divergence(a, b)
    return len(a) if tau == NO_TAU else tau


def _mass_table(credits, taus, widths) -> dict[str, float]:
    return {str(w): share for w, share in mass_within(credits, taus, widths).items()}


def random_positions(rollouts: Sequence[FailedRollout], seed: int) -> list[int]:
    """For the control: one uniformly random position of each rollout (NO_TAU for an empty one), seeded."""
    generator = torch.Generator().manual_seed(seed)
    positions = []
    for r in rollouts:
        n = len(r.completion_ids)
        positions.append(int(torch.randint(n, (1,), generator=generator)) if n else NO_TAU)
    return positions


def credit_tables(
    rollouts: Sequence[FailedRollout],
    groups: Sequence[GroupOutcome],
    *,
    seed: int = 0,
    widths: Sequence[int] = WIDTHS,
    window: int = 32,
    bins: int = 20,
) -> dict:
    """Every measurement of credit.json from the analysed rollouts and the groups they came from."""
    contexts = [c for c in CONTEXTS if any(c in r.teacher_logps for r in rollouts)]
    taus = [r.tau for r in rollouts]
    control = random_positions(rollouts, seed)
    positive = {i for i, tau in enumerate(taus) if tau > 0}
    with_tau = [tau for tau in taus if tau != NO_TAU]

    tables: dict = {"contexts": contexts, **{key: {} for key in PER_CONTEXT_TABLES}}
    profile: dict = {}
    for context in contexts:
        members = [i for i, r in enumerate(rollouts) if context in r.teacher_logps]
        credits = {i: rollouts[i].credit(context) for i in members}
        c_all = [credits[i] for i in members]
        t_all = [taus[i] for i in members]
        r_all = [control[i] for i in members]
        tables["mass_within"][context] = _mass_table(c_all, t_all, widths)
        tables["mass_within_random"][context] = _mass_table(c_all, r_all, widths)
        pos = [i for i in members if i in positive]
        tables["mass_within_tau_pos"][context] = _mass_table(
            [credits[i] for i in pos], [taus[i] for i in pos], widths
        )
        tables["mass_within_random_tau_pos"][context] = _mass_table(
            [credits[i] for i in pos], [control[i] for i in pos], widths
        )
        at_tau, elsewhere = abs_credit_at(c_all, t_all)
        tables["abs_credit_at_tau"][context] = at_tau
        tables["abs_credit_elsewhere"][context] = elsewhere
        offsets, means, counts = credit_profile(c_all, t_all, window)
        _, random_means, _ = credit_profile(c_all, r_all, window)
        profile[context] = {"mean_abs": means, "counts": counts, "mean_abs_random": random_means}
        tables["peak_credit_at_tau"][context] = _peak_credit(offsets, means, counts, window)
    tables["credit_profile"] = {"offsets": list(range(-window, window + 1)), **profile}
    tables["silence_curve"] = _silence_tables(rollouts, contexts, bins)
    tables["median_tau"] = _median(with_tau)
    tables["tau_zero_share"] = sum(t == 0 for t in with_tau) / len(with_tau) if with_tau else None
    tables["n_tau_pos"] = len(positive)
    references = [r for r in rollouts if r.reference_ids is not None]
    tables["shared_prefix"] = {
        "peer": _prefix_stats(with_tau),
        "reference": _prefix_stats([_shared_prefix(r.completion_ids, r.reference_ids) for r in references]),
    }
    tables["error_position"] = _error_tables(rollouts, contexts, taus, control, widths)
    tables["by_difficulty"] = _by_difficulty(rollouts, contexts, window)
    tables["coverage"] = coverage_table(groups)
    tables["counts"] = _counts(rollouts, groups)
    return _clean(tables)


def _peak_credit(offsets: list[int], means: list[float], counts: list[int], window: int) -> dict:
    """Mean |A| at tau (the profile at offset 0) and the profile's peak within +/- window, and where it is.

    The peak is over the offsets that at least half as many rollouts reach as tau itself (a mean over two
    rollouts far before tau is noise when nearly every tau is 0).
    """
    enough = max(1, counts[window]) / 2
    finite = [(m, d) for m, d, n in zip(means, offsets, counts) if n >= enough and not math.isnan(m)]
    peak, peak_offset = max(finite) if finite else (math.nan, None)
    return {"at_tau": means[window], "peak": peak, "peak_offset": peak_offset}


def _silence_tables(rollouts: Sequence[FailedRollout], contexts: Sequence[str], bins: int) -> dict:
    """Mean |A| by relative position t / |o| in `bins` bins, per context, with the bins' centers."""
    tables = {"bins": silence_curve([], bins)[0]}
    for context in contexts:
        credits = [r.credit(context) for r in rollouts if context in r.teacher_logps]
        tables[context] = silence_curve(credits, bins)[1]
    return tables


def _error_tables(rollouts, contexts, taus, control, widths) -> dict | None:
    """Where the verifier knows the first wrong token (the testbed chain task): the share of rollouts whose
    tau is that token, and the mass-within-w table and |A| aligned at the error instead of tau."""
    known = [i for i, r in enumerate(rollouts) if r.error_position is not None]
    if not known:
        return None
    errors = {i: rollouts[i].error_position for i in known}
    out: dict = {
        "n": len(known),
        "tau_equals_error_share": sum(taus[i] == errors[i] for i in known) / len(known),
        "tau_before_error_share": sum(taus[i] != NO_TAU and taus[i] < errors[i] for i in known) / len(known),
        "median_error": _median(list(errors.values())),
        "mass_within": {},
        "mass_within_random": {},
        "abs_credit_at_error": {},
        "abs_credit_elsewhere": {},
    }
    for context in contexts:
        members = [i for i in known if context in rollouts[i].teacher_logps]
        credits = [rollouts[i].credit(context) for i in members]
        out["mass_within"][context] = _mass_table(credits, [errors[i] for i in members], widths)
        out["mass_within_random"][context] = _mass_table(credits, [control[i] for i in members], widths)
        at, elsewhere = abs_credit_at(credits, [errors[i] for i in members])
        out["abs_credit_at_error"][context], out["abs_credit_elsewhere"][context] = at, elsewhere
    return out


def _by_difficulty(rollouts: Sequence[FailedRollout], contexts: Sequence[str], window: int) -> dict:
    """Per difficulty bucket: rollouts, median tau, mean |A| at tau per context (the paper's peak credit)."""
    out = {}
    for bucket in DIFFICULTIES:
        members = [r for r in rollouts if difficulty(r.pass_rate) == bucket]
        taus = [r.tau for r in members if r.tau != NO_TAU]
        at_tau = {}
        for context in contexts:
            having = [r for r in members if context in r.teacher_logps]
            at_tau[context] = abs_credit_at([r.credit(context) for r in having], [r.tau for r in having])[0]
        out[bucket] = {"n_rollouts": len(members), "median_tau": _median(taus), "abs_credit_at_tau": at_tau}
    return out


def coverage_table(groups: Sequence[GroupOutcome]) -> dict:
    """Empirical coverage (share of rollouts that fail yet have a successful peer) by difficulty, against
    f(p, G) (Eq. 12) at each group's pass rate."""
    sizes = {g.group_size for g in groups}
    if len(sizes) > 1:
        raise ValueError(f"groups must all have one size for the coverage table, got sizes {sorted(sizes)}")
    G = sizes.pop() if sizes else None
    table: dict = {"group_size": G, "buckets": {}}
    if G is None:
        return table
    table["p_star"] = optimal_success_rate(G) if G >= 2 else None
    table["f_star"] = optimal_coverage(G) if G >= 2 else None
    for bucket in (*DIFFICULTIES, "all"):
        members = [g for g in groups if bucket == "all" or difficulty(g.pass_rate) == bucket]
        if not members:
            table["buckets"][bucket] = {
                "n_problems": 0,
                "mean_pass_rate": None,
                "empirical": None,
                "formula": None,
            }
            continue
        rollouts = sum(g.group_size for g in members)
        table["buckets"][bucket] = {
            "n_problems": len(members),
            "mean_pass_rate": sum(g.pass_rate for g in members) / len(members),
            "empirical": sum(g.failures_with_peer for g in members) / rollouts,
            "formula": sum(coverage(g.pass_rate, G) for g in members) / len(members) if G >= 2 else None,
        }
    table["problems"] = [[g.pass_rate, g.failures_with_peer / g.group_size] for g in groups]
    return table


def _counts(rollouts: Sequence[FailedRollout], groups: Sequence[GroupOutcome]) -> dict:
    n_rollouts = sum(g.group_size for g in groups)
    successes = sum(g.successes for g in groups)
    return {
        "problems": len(groups),
        "rollouts": n_rollouts,
        "successes": successes,
        "failures": n_rollouts - successes - sum(g.uncomputed for g in groups),
        "uncomputed": sum(g.uncomputed for g in groups),
        "failed_with_peer": sum(g.failures_with_peer for g in groups),
        "analysed": len(rollouts),
        "tau_none": sum(r.tau == NO_TAU for r in rollouts),
        "groups_no_success": sum(g.successes == 0 for g in groups),
        "groups_all_success": sum(g.successes == g.group_size for g in groups),
        "tokens": sum(len(r.completion_ids) for r in rollouts),
    }


# ------------------------------------------------------------------------------------- the model side
def _batches(order: list[int], lengths: dict[int, int], batch_tokens: int) -> list[list[int]]:
    """`order` cut into runs of at most `batch_tokens` padded tokens (rows x longest row; one row at least)."""
    batches, current, longest = [], [], 0
    for i in order:
        if current and max(longest, lengths[i]) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    return batches + [current] if current else batches


@torch.no_grad()
def completion_logprobs(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    temperature: float = 1.0,
    batch_tokens: int = 8192,
    share_prompts: bool = True,
) -> list[list[float]]:
    """log p(o_t | prompt, o_<t) for every completion token of each (prompt ids, completion ids) pair.

    The trainer's teacher pass (`hsd.teacher.prefix.prefix_shared_hidden`): prompts left-padded, completions
    right-padded, at most about `batch_tokens` padded tokens a batch; with `share_prompts` each distinct
    prompt of a batch (a group's student prompt, its answer-only teacher prompt, the teacher prompt of one
    peer) runs once and its KV cache serves every completion on it. Logits are divided by `temperature`
    as in the trainer's log-probs; only completion positions go through the LM head.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    for i, (prompt, _) in enumerate(sequences):
        if len(prompt) == 0:
            raise ValueError(f"sequences[{i}] has an empty prompt: the first token has no prediction")
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in sequences]
    scored = [i for i, (_, completion) in enumerate(sequences) if len(completion)]
    order = sorted(scored, key=lambda i: (tuple(sequences[i][0]), len(sequences[i][1])))
    lengths = {i: len(sequences[i][0]) + len(sequences[i][1]) for i in scored}
    for batch in _batches(order, lengths, batch_tokens):
        prefix_ids, prefix_mask = padded([sequences[i][0] for i in batch], left=True)
        prefix_of_row = torch.arange(len(batch))
        if share_prompts:
            prefix_ids, prefix_mask, prefix_of_row = distinct_prefixes(prefix_ids, prefix_mask)
        completion_ids, completion_mask = padded([sequences[i][1] for i in batch], left=False)
        hidden_RTH = prefix_shared_hidden(
            language_model(model).base_model,
            prefix_ids.to(device),
            prefix_mask.to(device),
            prefix_of_row.to(device),
            completion_ids.to(device),
            completion_mask.to(device),
        )
        keep_RT = completion_mask.bool().to(device)
        logps_N = chunked_token_logps(
            hidden_RTH[keep_RT], completion_ids.to(device)[keep_RT], output_head(language_model(model)),
            temperature=temperature,
        ).cpu()  # fmt: skip
        start = 0
        for i in batch:
            n = len(sequences[i][1])
            out[i] = logps_N[start : start + n].tolist()
            start += n
    return out


def score_rollouts(
    model,
    tokenizer,
    rollouts: Sequence[FailedRollout],
    problems: dict[str, Problem],
    contexts: Sequence[str] = CONTEXTS,
    *,
    template: TeacherTemplate = DEFAULT_TEACHER_TEMPLATE,
    temperature: float = 1.0,
    max_peer_tokens: int | None = None,
    batch_tokens: int = 8192,
) -> None:
    """Fill each rollout's student log-probs and its teacher log-probs under each context, in place.

    Student: [chat-templated question ; o]. Teacher: [chat-templated question carrying the context ; o],
    built by the trainer's own `teacher_input_ids`, so the analysed teacher is the trained teacher.
    """
    unknown = [c for c in contexts if c not in CONTEXTS]
    if unknown:
        raise ValueError(f"contexts must be among {CONTEXTS}, got {unknown}")
    sequences, targets = [], []
    for r in rollouts:
        problem = problems[r.problem_id]
        prompt = chat_prompt(problem.prompt)
        sequences.append((tokenize_prompt(tokenizer, prompt), r.completion_ids))
        targets.append((r, None))
        for context in contexts:
            if context == "reference" and problem.reference is None:
                continue  # no reference solution: no reference teacher
            ctx = context_for(context, answer=problem.answer, peer=r.peer, reference=problem.reference)
            peer_ids = r.peer_ids if ctx.peer is not None else None
            (teacher,) = teacher_input_ids(
                [prompt],
                [r.completion_ids],
                [ctx],
                [peer_ids],
                tokenizer,
                template,
                max_peer_tokens=max_peer_tokens,
            )
            sequences.append(teacher)
            targets.append((r, context))
    logps = completion_logprobs(model, sequences, temperature=temperature, batch_tokens=batch_tokens)
    for (r, context), values in zip(targets, logps):
        if context is None:
            r.student_logps = values
        else:
            r.teacher_logps[context] = values


@dataclass
class Analysis:
    """What a run of the analysis collected: the analysed rollouts, every group, and the settings."""

    rollouts: list[FailedRollout]
    groups: list[GroupOutcome]
    settings: dict


def _token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in ids]


def error_token(verdict, tokens: Sequence[str], text: str) -> int | None:
    """The token holding the verifier's first wrong character (`extra["error_char"]`, an offset into the
    completion's text), when the per-token texts spell exactly that text; else None."""
    offset = verdict.extra.get("error_char") if verdict.extra else None
    if offset is None or "".join(tokens) != text:
        return None
    start = 0
    for t, token in enumerate(tokens):
        # an invisible token (eos) where a character was due is the wrong token
        if offset < start + len(token) or (token == "" and offset == start):
            return t
        start += len(token)
    return None  # the missing character comes after the last sampled token (a cut-off completion)


@dataclass(frozen=True)
class CollectSettings:
    """How `collect` samples and scores: group size, sampling, when to stop, peers, contexts, batching."""

    group_size: int = 8  # rollouts per problem, G
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=256)
    min_failures: int = 64  # sample batches of problems until this many failed rollouts with a peer
    problems_per_batch: int = 8  # problems sampled per round
    batch_size: int = 64  # sequences generated at once
    seed: int = 0  # of sampling and the peer draws
    peer_rule: str = "uniform"  # one of RULES_FROM_REWARDS
    success_threshold: float = SUCCESS_THRESHOLD  # a rollout succeeds when its reward >= this
    contexts: tuple[str, ...] = CONTEXTS  # the teacher contexts scored
    template: TeacherTemplate = DEFAULT_TEACHER_TEMPLATE
    max_peer_tokens: int | None = None  # truncate the peer shown to the teacher
    batch_tokens: int = 8192  # padded tokens per scoring batch
    verify_workers: int = 2  # verifications run in parallel

    def __post_init__(self) -> None:
        """`ValueError` naming the setting that cannot work."""
        group_size = self.group_size
        if not is_int(group_size) or group_size < 2:
            raise ValueError(
                f"group_size must be an int >= 2 (a peer is another rollout), got {group_size!r}"
            )
        if self.peer_rule not in RULES_FROM_REWARDS:
            raise ValueError(f"peer_rule must be one of {RULES_FROM_REWARDS}, got {self.peer_rule!r}")
        if self.sampling.greedy:
            raise ValueError("the analysis samples groups of rollouts; greedy decoding gives one per problem")
        if self.problems_per_batch < 1:
            raise ValueError(f"problems_per_batch must be >= 1, got {self.problems_per_batch}")
        object.__setattr__(self, "contexts", tuple(self.contexts))

    def to_json(self) -> dict:
        """The settings credit.json records."""
        return dict(
            group_size=self.group_size, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
            max_new_tokens=self.sampling.max_new_tokens, min_failures=self.min_failures, seed=self.seed,
            peer_rule=self.peer_rule, success_threshold=self.success_threshold, contexts=list(self.contexts),
            max_peer_tokens=self.max_peer_tokens,
        )  # fmt: skip


def _rewards(sampled: VerifiedGroups) -> list[float]:
    """Each rollout's reward, flat (NaN: not computed, as the trainer's reward function reports it)."""
    return [math.nan if v.reason == UNCOMPUTED else v.reward for vs in sampled.verdicts_PG for v in vs]


def _analysed(
    tokenizer, batch: Sequence[Problem], sampled: VerifiedGroups, plan: TeacherPlan
) -> tuple[list[GroupOutcome], list[FailedRollout]]:
    """How each group of the batch turned out, and the failed rollouts that training distils with a peer:
    those whose planned teacher context holds one (an uncomputed reward, NaN, gets no context)."""
    groups, failed = [], []
    rewards_N = _rewards(sampled)
    for k, (problem, (ids_G, texts_G, verdicts)) in enumerate(zip(batch, sampled.per_problem())):
        at, group_size = k * len(ids_G), len(ids_G)
        successes = sum(plan.success[at : at + group_size])
        uncomputed = sum(math.isnan(r) for r in rewards_N[at : at + group_size])
        groups.append(GroupOutcome(problem.id, group_size, successes, uncomputed))
        reference_ids = None
        if problem.reference is not None:
            reference_ids = list(tokenizer(problem.reference, add_special_tokens=False)["input_ids"])
        for i, verdict in enumerate(verdicts):
            context, tau = plan.contexts[at + i], plan.taus[at + i]
            if plan.success[at + i] or context is None or context.peer is None:
                continue
            peer = context.peer - at
            visible = [tokenizer.decode([t], skip_special_tokens=True) for t in ids_G[i]]
            failed.append(
                FailedRollout(
                    problem_id=problem.id, rollout=i, peer=peer, pass_rate=successes / group_size,
                    completion_ids=list(ids_G[i]), peer_ids=list(ids_G[peer]), reason=verdict.reason,
                    reference_ids=reference_ids, completion_tokens=_token_texts(tokenizer, ids_G[i]),
                    peer_tokens=_token_texts(tokenizer, ids_G[peer]), prompt=problem.prompt,
                    answer=problem.answer, error_position=error_token(verdict, visible, texts_G[i]),
                    tau=tau,
                )
            )  # fmt: skip
    return groups, failed


def collect(
    model,
    tokenizer,
    problems: Sequence[Problem],
    verifier: Verifier,
    settings: CollectSettings | None = None,
    *,
    progress: bool = True,
) -> Analysis:
    """Sample `group_size` rollouts per problem, a batch of problems at a time, verify them, plan each
    batch's teachers as the trainer does (`plan_teachers`, context hsd) and score each failed rollout with a
    peer under each context, until `min_failures` of them are in hand or the problems run out."""
    if len({p.id for p in problems}) != len(problems):
        raise ValueError("problems: ids must be unique")
    c = settings or CollectSettings()
    by_id = {p.id: p for p in problems}
    generator = torch.Generator().manual_seed(c.seed)  # peer draws
    rollouts: list[FailedRollout] = []
    groups: list[GroupOutcome] = []
    bar = progress_bar(c.min_failures, "failed rollouts with a peer", progress)
    try:
        for start in range(0, len(problems), c.problems_per_batch):
            if len(rollouts) >= c.min_failures:
                break
            batch = list(problems[start : start + c.problems_per_batch])
            sampled = sample_and_verify(model, tokenizer, batch, verifier, n=c.group_size, settings=c.sampling,
                                        batch_size=c.batch_size, seed=c.seed + start * c.group_size,
                                        verify_workers=c.verify_workers)  # fmt: skip
            ids_N = [ids for ids_G in sampled.ids_PG for ids in ids_G]
            plan = plan_teachers(_rewards(sampled), c.group_size, ids_N, rule=c.peer_rule,
                                 generator=generator, answers=[p.answer for p in batch],
                                 threshold=c.success_threshold)  # fmt: skip
            batch_groups, new = _analysed(tokenizer, batch, sampled, plan)
            groups.extend(batch_groups)
            score_rollouts(model, tokenizer, new, by_id, c.contexts, template=c.template,
                           temperature=c.sampling.temperature, max_peer_tokens=c.max_peer_tokens,
                           batch_tokens=c.batch_tokens)  # fmt: skip
            bar.set_postfix(problems=len(groups), analysed=len(rollouts) + len(new), refresh=False)
            bar.update(min(len(rollouts) + len(new), c.min_failures) - min(len(rollouts), c.min_failures))
            rollouts.extend(new)
    finally:
        bar.close()
    return Analysis(rollouts, groups, c.to_json())
