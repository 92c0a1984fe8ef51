"""What the testbed shows before any training: the initial success rate p, whether the first divergence tau
(Eq. 11) from a successful peer falls on the true error, and how many peers are right at every step.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from hsd.core.peers import SUCCESS_THRESHOLD
from hsd.core.tau import NO_TAU, coverage, first_divergence
from hsd.tasks.chain import load_chain_problems, verify_chain
from hsd.tasks.problem import Problem
from hsd.testbed.model import torch_threads


def _completion_ids(row: list[int], eos_id: int) -> list[int]:
    """The sampled tokens up to (not including) the first eos."""
    return row[: row.index(eos_id)] if eos_id in row else row


def completion_text(ids: list[int], tokenizer) -> str:
    """The completion's text, one character per token: a special token sampled mid-completion (<pad>,
    <|user|>, ...) becomes U+FFFD, so character offsets stay token positions and the verifier rejects it."""
    special = set(tokenizer.all_special_ids)
    return "".join("\ufffd" if i in special else tokenizer.convert_ids_to_tokens(i) for i in ids)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    problems: list[Problem],
    group_size: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
) -> list[list[list[int]]]:
    """group_size sampled completions (token ids, eos removed) per problem, batched, left-padded prompts."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    if max_new_tokens is None:  # every correct worked solution is as long as the reference; a little slack
        max_new_tokens = max(len(p.reference or "") for p in problems) + 8
    prompts_N = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
        )
        for p in problems
        for _ in range(group_size)
    ]
    torch.manual_seed(seed)
    rows: list[list[int]] = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with torch_threads():
            for start in range(0, len(prompts_N), batch_size):
                batch = tokenizer(
                    prompts_N[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                out = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
                rows.extend(_completion_ids(row, tokenizer.eos_token_id) for row in new_tokens)
    finally:
        tokenizer.padding_side = padding_side
    return [rows[i : i + group_size] for i in range(0, len(rows), group_size)]


def divergence_stats(
    problems: list[Problem], ids_PG: list[list[list[int]]], tokenizer, seed: int = 0
) -> dict:
    """p, the reasons, and for failed rollouts with a successful peer, tau against the true error position.

    The peer of a failed rollout is drawn uniformly from its group's successes (the method's default); the
    `all_pairs` share counts every (failed, successful) pair of a group instead.
    """
    if not problems or len(problems) != len(ids_PG):
        raise ValueError(f"need one group per problem, got {len(problems)} problems and {len(ids_PG)} groups")
    rng = random.Random(seed)
    rewards, reasons, fully_correct_peers = [], {}, []
    hits = pairs_total = pair_hits = before = after = failed_with_peer = 0
    taus, errors = [], []
    specials = 0
    for problem, group in zip(problems, ids_PG):
        texts = [completion_text(ids, tokenizer) for ids in group]
        specials += sum("\ufffd" in text for text in texts)
        verdicts = [verify_chain(text, problem) for text in texts]
        for verdict in verdicts:
            rewards.append(verdict.reward)
            reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1
        winners = [i for i, v in enumerate(verdicts) if v.reward >= SUCCESS_THRESHOLD]
        fully_correct_peers.extend(verdicts[i].extra["fully_correct"] for i in winners)
        for i, verdict in enumerate(verdicts):
            if verdict.reward >= SUCCESS_THRESHOLD or not winners:
                continue
            failed_with_peer += 1
            error_char = verdict.extra["error_char"]
            for j in winners:
                pairs_total += 1
                pair_hits += first_divergence(group[i], group[j]) == error_char
            tau = first_divergence(group[i], group[rng.choice(winners)])
            hits += tau == error_char
            before += tau != NO_TAU and error_char is not None and tau < error_char
            after += tau != NO_TAU and error_char is not None and tau > error_char
            if tau != NO_TAU:
                taus.append(tau)
            errors.append(error_char)
    n = len(rewards)
    p = sum(r >= SUCCESS_THRESHOLD for r in rewards) / n  # the success rate
    group_size = len(ids_PG[0])
    return {
        "p": round(p, 4),
        "rollouts": n,
        "reasons": dict(sorted(reasons.items())),
        "failed_with_peer": failed_with_peer,
        "coverage": round(failed_with_peer / n, 4),
        "coverage_formula": round(coverage(p, group_size), 4),  # Eq. 12 at the pooled p
        "tau_equals_error": _share(hits, failed_with_peer),
        "tau_before_error": _share(before, failed_with_peer),
        "tau_after_error": _share(after, failed_with_peer),
        "tau_equals_error_all_pairs": _share(pair_hits, pairs_total),
        "peers": len(fully_correct_peers),
        "peers_fully_correct": _share(sum(fully_correct_peers), len(fully_correct_peers)),
        "median_tau": _median(taus),
        "median_error_char": _median(errors),
        "rollouts_with_special_tokens": specials,  # a special token sampled mid-completion: malformed
    }


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def task_defaults(model_dir: str | Path) -> dict:
    """steps, operand_max and modulus the model was pretrained on (its testbed.json), else the task's own."""
    record = Path(model_dir) / "testbed.json"
    if not record.exists():
        return {"steps": 4, "operand_max": 3, "modulus": 10}
    config = json.loads(record.read_text())["config"]
    if config.get("answer_form", "value") != "value":
        raise ValueError(
            f"{model_dir} was pretrained on the {config['answer_form']} answer form; measure scores the chain "
            "task's value form (for the terse form: hsd analyze on `hsd testbed problems` data)"
        )
    return {
        "steps": config["steps_range"][1],
        "operand_max": config["operand_max"],
        "modulus": config["modulus"],
    }


def measure_testbed(
    model,
    tokenizer,
    *,
    task: dict,
    variant: str = "single",
    problems: int = 256,
    group_size: int = 8,
    steps: int | None = None,
    operand_max: int | None = None,
    modulus: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sample_seed: int = 0,
) -> dict:
    """All of the above for a loaded model on `problems` fresh (test-split) problems, group_size rollouts
    each. `task` holds the chain task's steps, operand_max and modulus (`task_defaults(model_dir)`: the ones
    the model was pretrained on); the knobs given here replace its values. The caller loads the model
    (`hsd.models`, a layer above), so the testbed never imports the loader that builds it."""
    task = {
        **task,
        **{
            k: v
            for k, v in dict(steps=steps, operand_max=operand_max, modulus=modulus).items()
            if v is not None
        },
    }
    chain_problems = load_chain_problems(problems, seed=sample_seed, variant=variant, split="test", **task)
    started = time.perf_counter()
    ids_PG = sample_completions(
        model, tokenizer, chain_problems, group_size, temperature=temperature, top_p=top_p, seed=sample_seed
    )
    stats = divergence_stats(chain_problems, ids_PG, tokenizer, seed=sample_seed)
    settings = dict(
        variant=variant,
        problems=problems,
        group_size=group_size,
        **task,
        temperature=temperature,
        top_p=top_p,
        sample_seed=sample_seed,
        sampling_seconds=round(time.perf_counter() - started, 1),
    )
    return {**settings, **stats}
