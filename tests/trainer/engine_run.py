"""Train several configurations for 2 steps each in one `accelerate launch`; write what each step logged.

usage: accelerate launch [--config_file CPU_ADAPTED.yaml | --cpu] engine_run.py MODEL_DIR OUT_JSON PER_DEVICE
       NAME [NAME ...]        (NAME: a key of RUNS; under an FSDP config the CPU helper cpu_fsdp is enabled)

Per run: the engine that ran, how many parameter values this process holds against the full count (policy,
and the teacher / reference copy where there is one), loss and grad norm of steps 1 and 2, and the peers. A
`lora_*` run trains a LoRA adapter (LORA) with that teacher; an EMA one also reports its teacher adapter as
this process holds it: values held, and whether they differ from the trained adapter's and from the start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import cpu_fsdp  # noqa: E402

cpu_fsdp.enable()

from scripted import TRAINER_ARGS, arithmetic_dataset, exact_answer_reward, make_rollout_func  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

PAPER = Path(__file__).resolve().parents[2] / "configs" / "qwen3-8b-paper.yaml"

# name -> HSDConfig fields on top of TRAINER_ARGS ("paper": the paper recipe's own fields instead).
RUNS = {
    "grpo": dict(method="grpo"),
    "live": dict(method="hsd"),
    "frozen": dict(method="hsd", teacher_weights="frozen"),
    "ema": dict(method="hsd", teacher_weights="ema", teacher_ema_decay=0.5),
    "paper": {},
    "use_cpu": dict(method="hsd", use_cpu=True),  # under an FSDP launch: refused (FSDP would not run)
    "lora_live": dict(method="hsd"),
    "lora_frozen": dict(method="hsd", teacher_weights="frozen"),
    "lora_ema": dict(method="hsd", teacher_weights="ema", teacher_ema_decay=0.5),
    "lora_beta": dict(method="hsd", beta=1e-3),  # the KL reference: the adapter switched off
}
LORA = dict(r=4, target_modules=["q_proj", "v_proj"])


def paper_args(model_dir, output_dir, use_cpu: bool, **sizes):
    """The paper recipe's trainer fields (beta 1e-3, AdamW settings, gradient checkpointing, ...) with a tiny
    model, no vLLM, no bf16, and a batch this machine can run."""
    from hsd.trainer.cli import load_recipe

    overrides = dict(
        model=str(model_dir),
        output_dir=str(output_dir),
        use_vllm=False,
        bf16=False,
        use_cpu=use_cpu,
        report_to=[],
        save_strategy="no",
        gradient_accumulation_steps=1,
        num_generations=TRAINER_ARGS["num_generations"],
        max_completion_length=TRAINER_ARGS["max_completion_length"],
        **sizes,
    )
    return load_recipe(PAPER, overrides)[1]


def shard_counts(trainer, model) -> list[int]:
    """[values held by this process, values in the model]: partitions under ZeRO-3, local DTensor shards
    under FSDP2, the optimizer's fp32 partition under ZeRO-1/2 (its parameters are whole)."""
    params = list(trainer.accelerator.unwrap_model(model).parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    if hasattr(params[0], "ds_tensor"):
        return [sum(p.ds_tensor.numel() for p in params), full]
    if hasattr(params[0], "to_local"):
        return [sum(p.to_local().numel() for p in params), full]
    inner = getattr(trainer.optimizer, "optimizer", None)
    partitions = getattr(inner, "single_partition_of_fp32_groups", None) if model is trainer.model else None
    if partitions is not None:
        return [sum(t.numel() for t in partitions), full]
    return [full, full]


class StepPeers(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.peers = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        self.peers.append(list(self.trainer.last_plan.peers))


def ema_adapter(trainer) -> dict | None:
    """An EMA teacher adapter as this process holds it: values held, and whether they differ from the trained
    adapter's and whether its B matrices (all zero at the start) moved."""
    from hsd.trainer.adapters import TEACHER_ADAPTER, adapter_parameters, teacher_pairs
    from hsd.trainer.engines import local_piece

    if trainer.adapter_teacher is None or trainer.adapter_teacher.adapter is None:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    teacher, policy = teacher_pairs(model)
    t, p = [local_piece(x) for x in teacher], [local_piece(x) for x in policy]
    b = [local_piece(x) for n, x in adapter_parameters(model, TEACHER_ADAPTER) if "lora_B" in n]
    return dict(
        values=sum(x.numel() for x in t),
        differs_from_trained=any(not a.equal(c) for a, c in zip(t, p, strict=True)),
        moved=any(x.count_nonzero() > 0 for x in b),
    )


def run(name: str, model_dir: str, out_dir: Path, per_device: int) -> dict:
    from hsd import HSDConfig, HSDTrainer
    from hsd.trainer.engines import engine_name

    use_cpu = not cpu_fsdp.fsdp_launch()  # FSDP runs on the CPU as a "GPU" rank (cpu_fsdp); the rest: use_cpu
    sizes = dict(per_device_train_batch_size=per_device, max_steps=2, logging_steps=1)
    if name == "paper":
        args = paper_args(model_dir, out_dir / name, use_cpu, **sizes)
    else:
        args = HSDConfig(
            output_dir=str(out_dir / name), **{**TRAINER_ARGS, "use_cpu": use_cpu, **RUNS[name], **sizes}
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peft_config = None
    if name.startswith("lora_"):
        from peft import LoraConfig

        peft_config = LoraConfig(**LORA)
    trainer = HSDTrainer(
        AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=exact_answer_reward,
        args=args,
        train_dataset=arithmetic_dataset(4),
        processing_class=tokenizer,
        rollout_func=make_rollout_func(tokenizer),
        peft_config=peft_config,
    )
    peers = StepPeers(trainer)
    trainer.add_callback(peers)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    copy = trainer.teacher_model if trainer.teacher_model is not None else trainer.ref_model
    return dict(
        engine=engine_name(trainer.accelerator),
        distributed_type=str(trainer.accelerator.distributed_type),
        processes=trainer.accelerator.num_processes,
        policy_values=shard_counts(trainer, trainer.model),
        copy_values=None if copy is None else shard_counts(trainer, copy),
        loss=[h["loss"] for h in logs],
        grad_norm=[h["grad_norm"] for h in logs],
        peers=peers.peers,
        beta=trainer.beta,
        ema_adapter=ema_adapter(trainer),
    )


if __name__ == "__main__":
    model_dir, out_path, per_device, names = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    results = {name: run(name, model_dir, out_path.parent / "runs", per_device) for name in names}
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        out_path.write_text(json.dumps(results, indent=1))
    state.wait_for_everyone()
    state.destroy_process_group()  # torn down before exit, not by the interpreter's shutdown
