"""Peak memory of an HSD step with the EMA teacher: a LoRA adapter against full fine-tuning, same model shape.

Run: `nice -n 10 python benchmarks/lora_memory.py` (defaults: SmolLM2-135M's shape, random init, fp32, CPU;
`--model-config qwen3-0.6b` or a directory with a config.json for another shape).

Method: `hsd bench step`'s (docs/performance.md): both trainers are real `HSDTrainer`s (method `hsd`,
`teacher_weights: ema`, every other field at its default) on the same fixed batch with scripted rollouts,
built in one process and stepped in turns; peak memory of a step = the trainer's resident weights,
gradients and optimizer state at the step's start (`resident_bytes`: the policy, its EMA copy where there
is one, AdamW's state) + the largest growth of the process RSS during the step (sampled every 1 ms).
full: the EMA teacher is a second copy of the model and AdamW holds two values per weight. lora: a LoRA
adapter (`--lora-r`, all linear layers) is trained; the EMA teacher is a second adapter on the same base.

Prints one JSON line: per variant the peak and resident bytes, trainable and teacher values, step time, and
`peak_memory_lora_over_full`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# SmolLM2-135M's architecture (its config.json on the hub), built with random weights
SMOLLM2_135M = dict(
    vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100_000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)  # fmt: skip


def shape_dir(name: str, out: Path) -> str:
    """`--model-config` as `hsd.bench` takes it: smollm2-135m is written as a config directory."""
    if name != "smollm2-135m":
        return name
    from transformers import LlamaConfig

    LlamaConfig(**SMOLLM2_135M).save_pretrained(out)
    return str(out)


def build(setup, variant: str, tokenizer, batch, out: str, lora_r: int):
    from peft import LoraConfig

    from hsd.bench.fixtures import scripted_rollouts
    from hsd.bench.step import scripted_data, trainer_args
    from hsd.trainer.config import HSDConfig
    from hsd.trainer.trainer import HSDTrainer

    args = HSDConfig(**trainer_args(setup, out, method="hsd", teacher_weights="ema"))
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear", lora_dropout=0.0)
    return HSDTrainer(
        setup.model(),
        args=args,
        rollout_func=scripted_rollouts(batch, tokenizer),
        peft_config=lora if variant == "lora" else None,
        **scripted_data(batch, tokenizer),
    )


def teacher_values(trainer) -> int:
    """Values the EMA teacher adds: the whole copy (full) or the teacher adapter (lora)."""
    from hsd.trainer.adapters import adapter_parameters

    if trainer.teacher_model is not None:
        return sum(p.numel() for p in trainer.teacher_model.parameters())
    return sum(p.numel() for _, p in adapter_parameters(trainer.model, trainer.adapter_teacher.adapter))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-config", default="smollm2-135m", help="smollm2-135m, tiny, qwen3-0.6b or DIR"
    )
    parser.add_argument("--batch", type=int, default=2, help="questions per step")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per question")
    parser.add_argument("--completion-len", type=int, default=64, help="tokens per rollout")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (all linear layers)")
    parser.add_argument("--repeats", type=int, default=2, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the measured ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from hsd.bench.meter import resident_bytes, summarize, train_in_turns
    from hsd.bench.step import BenchSetup, environment

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        setup = BenchSetup(
            model_config=shape_dir(args.model_config, Path(tmp) / "shape"), random_init=True,
            batch=args.batch, group_size=args.group_size, completion_len=args.completion_len,
            repeats=args.repeats, warmup=args.warmup, seed=args.seed,
        )  # fmt: skip
        setup.check()
        tokenizer, batch = setup.fixed_inputs()
        trainers = {v: build(setup, v, tokenizer, batch, f"{tmp}/{v}", args.lora_r) for v in ("full", "lora")}
        records = train_in_turns(trainers, setup.device, setup.warmup + setup.repeats)
        results = {}
        for name, trainer in trainers.items():
            summary = summarize(records[name], setup.warmup)
            results[name] = {
                "peak_memory_bytes": summary["peak_memory_bytes"],
                "resident_bytes_after": resident_bytes(trainer),
                "trainable_values": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                "teacher_values": teacher_values(trainer),
                "median_step_s": round(summary["median_s"]["step"], 2),
                "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            }
    gib = 1024**3
    report = {
        "command": " ".join(["python", "benchmarks/lora_memory.py", *sys.argv[1:]]),
        "model_config": args.model_config,
        "rollouts": args.batch * args.group_size,
        "completion_len": args.completion_len,
        "lora_r": args.lora_r,
        "environment": environment("cpu"),
        "load_average_before": round(load_before, 2),
        "variants": results,
        "peak_gib": {k: round(v["peak_memory_bytes"] / gib, 3) for k, v in results.items()},
        "peak_memory_lora_over_full": round(
            results["lora"]["peak_memory_bytes"] / results["full"]["peak_memory_bytes"], 3
        ),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
