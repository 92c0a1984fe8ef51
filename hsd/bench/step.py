"""`hsd bench step`: GRPO, OPSD and HSD timed phase by phase on one fixed batch, steps interleaved."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from hsd.bench.fixtures import (
    MODEL_CONFIGS,
    OPTIMISATIONS_OFF,
    FixedBatch,
    build_model,
    build_tokenizer,
    fixed_batch,
    model_config,
    scripted_rollouts,
    table_reward,
)
from hsd.bench.meter import summarize, train_in_turns

STEP_METHODS = ("grpo", "opsd", "hsd")  # the methods `hsd bench step` times by default


@dataclass
class BenchSetup:
    """What every method is run on: one model shape, one batch, one device, one seed."""

    model_config: str = "tiny"
    random_init: bool = False
    batch: int = 4
    group_size: int = 8
    completion_len: int = 64
    repeats: int = 3
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    seed: int = 0
    gradient_checkpointing: bool = True
    overrides: dict = field(default_factory=dict)

    @property
    def torch_dtype(self):
        import torch

        name = self.dtype
        if name == "auto":
            name = "bfloat16" if self.device.startswith("cuda") else "float32"
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

    def check(self) -> None:
        for name in ("batch", "group_size", "completion_len", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        elif self.device != "cpu":
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")

    def model(self):
        """A fresh policy of this shape, seeded: every method starts from the same weights."""
        return build_model(
            self.model_config,
            random_init=self.random_init,
            dtype=self.torch_dtype,
            device=self.device,
            seed=self.seed,
        )

    def fixed_inputs(self) -> tuple:
        """(tokenizer, the fixed batch) that every method runs on."""
        tokenizer = build_tokenizer(model_config(self.model_config).vocab_size)
        return tokenizer, fixed_batch(
            tokenizer, self.batch, self.group_size, self.completion_len, seed=self.seed
        )


def scripted_data(batch: FixedBatch, tokenizer) -> dict:
    """The trainer arguments that fix what is trained on: the table reward, the batch's rows, the tokenizer."""
    from datasets import Dataset

    return dict(
        reward_funcs=table_reward(batch),
        train_dataset=Dataset.from_list(batch.rows),
        processing_class=tokenizer,
    )


def trainer_args(setup: BenchSetup, output_dir: str, **fields):
    """Training arguments shared by every trainer: one optimizer step per batch, no saving, no reports."""
    import torch

    dtype = setup.torch_dtype
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=setup.batch * setup.group_size,
        num_generations=setup.group_size,
        max_completion_length=setup.completion_len,
        max_steps=setup.warmup + setup.repeats,
        gradient_accumulation_steps=1,
        learning_rate=1e-6,
        seed=setup.seed,
        use_cpu=setup.device == "cpu",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=setup.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **fields,
    )


def build_hsd_trainer(setup: BenchSetup, method: str, tokenizer, batch: FixedBatch, output_dir: str):
    """`HSDTrainer` for one method on the fixed batch: scripted rollouts, fixed rewards, fresh model.

    `method` may end in `:plain` (e.g. `hsd:plain`): that trainer runs with every optimisation off."""
    from hsd.trainer.config import HSDConfig
    from hsd.trainer.trainer import HSDTrainer

    name, _, variant = method.partition(":")
    overrides = {**setup.overrides, **(OPTIMISATIONS_OFF if variant == "plain" else {})}
    args = HSDConfig(**trainer_args(setup, output_dir, method=name, **overrides))
    return HSDTrainer(
        setup.model(),
        args=args,
        rollout_func=scripted_rollouts(batch, tokenizer),
        **scripted_data(batch, tokenizer),
    )


def ratio(numerator: float, denominator: float) -> float | None:
    return None if not denominator else round(numerator / denominator, 4)


def ratios_to(results: dict, base: str) -> dict:
    """update_time, step_time and peak_memory of every other method over `base`'s."""
    metrics = (
        ("update_time", lambda r: r["median_s"]["update"]),
        ("step_time", lambda r: r["median_s"]["step"]),
        ("peak_memory", lambda r: r["peak_memory_bytes"]),
    )
    return {
        metric: {
            f"{m}_over_{base}": ratio(value(results[m]), value(results[base])) for m in results if m != base
        }
        for metric, value in metrics
    }


def run_step(setup: BenchSetup, methods=STEP_METHODS) -> dict:
    """`hsd bench step`: each method on the same batch, steps interleaved, phase medians, ratios to GRPO."""
    setup.check()
    tokenizer, batch = setup.fixed_inputs()
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            m: build_hsd_trainer(setup, m, tokenizer, batch, f"{out}/{m.replace(':', '-')}") for m in methods
        }
        records = train_in_turns(trainers, setup.device, setup.warmup + setup.repeats)
        losses = {m: [h["loss"] for h in t.state.log_history if "loss" in h] for m, t in trainers.items()}
    results = {m: {**summarize(records[m], setup.warmup), "loss": losses[m]} for m in methods}
    report = {
        "command": "hsd bench step",
        "setup": describe(setup, batch),
        "environment": environment(setup.device),
        "methods": results,
    }
    if "grpo" in results and len(results) > 1:
        report["ratios"] = ratios_to(results, "grpo")
    return report


def describe(setup: BenchSetup, batch: FixedBatch) -> dict:
    config = model_config(setup.model_config)
    return {
        "model_config": setup.model_config,
        "random_init": setup.random_init or setup.model_config in MODEL_CONFIGS,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "questions": setup.batch,
        "group_size": setup.group_size,
        "rollouts": setup.batch * setup.group_size,
        "completion_len": setup.completion_len,
        "successes_per_group": batch.success_counts,
        "repeats": setup.repeats,
        "warmup": setup.warmup,
        "device": setup.device,
        "dtype": str(setup.torch_dtype).removeprefix("torch."),
        "gradient_checkpointing": setup.gradient_checkpointing,
        "seed": setup.seed,
        "config_overrides": setup.overrides,
        "peak_memory": "the trainer's resident weights, gradients and optimizer state at the step's start + "
        + (
            "the largest growth of torch.cuda.memory_allocated during the step"
            if setup.device.startswith("cuda")
            else "the largest growth of RSS during the step (sampled every 1 ms)"
        ),
    }


def environment(device: str) -> dict:
    import platform

    import torch
    import transformers
    import trl

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env
