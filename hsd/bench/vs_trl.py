"""`hsd bench vs-trl`: a step of HSDTrainer (HSD) against TRL's SDPOTrainer and GRPOTrainer, interleaved."""

from __future__ import annotations

import tempfile

from hsd.bench.fixtures import FixedBatch, scripted_rollouts
from hsd.bench.meter import summarize, train_in_turns
from hsd.bench.step import (
    BenchSetup,
    build_hsd_trainer,
    describe,
    environment,
    ratios_to,
    scripted_data,
    trainer_args,
)
from hsd.core.peers import SUCCESS_THRESHOLD
from hsd.teacher.prompt import tokenize_prompt

SDPO_SETTINGS = dict(
    distillation_mode="full_logits",  # full-vocabulary divergence, as HSD
    distillation_alpha=0.0,  # KL(teacher || student), Eq. 13
    distillation_weight=1.0,  # pure self-distillation, as HSD
    teacher_model_kind="live",  # the current weights under stop-gradient, as HSD
    use_successful_as_teacher=True,  # a successful rollout of the group as the teacher's context
    success_reward_threshold=SUCCESS_THRESHOLD,  # success as HSD counts it
)


def build_sdpo_trainer(setup: BenchSetup, tokenizer, batch: FixedBatch, output_dir: str):
    """TRL's `SDPOTrainer` (successful-peer self-distillation, full logits) on the fixed batch.

    SDPO has no `rollout_func`, so its `_generate` is replaced by the same scripted completions."""
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    prompt_to_question = {
        tuple(tokenize_prompt(tokenizer, row["prompt"])): q for q, row in enumerate(batch.rows)
    }

    class ScriptedSDPOTrainer(SDPOTrainer):
        def _generate(self, prompt_ids):
            seen: dict[int, int] = {}
            completions = []
            for ids in prompt_ids:
                q = prompt_to_question[tuple(ids)]
                k = seen.get(q, 0) % batch.group_size
                seen[q] = k + 1
                completions.append(batch.completions[q * batch.group_size + k])
            return prompt_ids, completions

    args = SDPOConfig(**trainer_args(setup, output_dir, **SDPO_SETTINGS))
    return ScriptedSDPOTrainer(setup.model(), args=args, **scripted_data(batch, tokenizer))


def build_trl_grpo_trainer(setup: BenchSetup, tokenizer, batch: FixedBatch, output_dir: str):
    """TRL's own `GRPOTrainer` on the fixed batch (the reference point of the SDPO measurement)."""
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer(
        setup.model(),
        args=GRPOConfig(**trainer_args(setup, output_dir)),
        rollout_func=scripted_rollouts(batch, tokenizer),
        **scripted_data(batch, tokenizer),
    )


def run_vs_trl(setup: BenchSetup) -> dict:
    """`hsd bench vs-trl`: a step of HSDTrainer (HSD) against TRL's SDPOTrainer and GRPOTrainer, interleaved."""
    setup.check()
    tokenizer, batch = setup.fixed_inputs()
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            "hsd": build_hsd_trainer(setup, "hsd", tokenizer, batch, f"{out}/hsd"),
            "sdpo": build_sdpo_trainer(setup, tokenizer, batch, f"{out}/sdpo"),
            "grpo": build_trl_grpo_trainer(setup, tokenizer, batch, f"{out}/grpo"),
        }
        records = train_in_turns(trainers, setup.device, setup.warmup + setup.repeats)
    results = {m: summarize(records[m], setup.warmup) for m in trainers}
    for name in ("sdpo", "grpo"):  # TRL's trainers have no separate teacher clock
        results[name]["median_s"]["teacher"] = None
    versus_sdpo = ratios_to({m: results[m] for m in ("hsd", "sdpo")}, "sdpo")
    versus_grpo = ratios_to(results, "grpo")
    return {
        "command": "hsd bench vs-trl",
        "setup": {
            **describe(setup, batch),
            "sdpo": SDPO_SETTINGS,
            "trainers": {
                "hsd": "hsd.HSDTrainer, method=hsd",
                "sdpo": "trl.experimental.sdpo.SDPOTrainer",
                "grpo": "trl.GRPOTrainer",
            },
        },
        "environment": environment(setup.device),
        "methods": results,
        "ratios": {metric: {**versus_sdpo[metric], **versus_grpo[metric]} for metric in versus_sdpo},
    }
