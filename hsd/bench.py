"""`hsd bench`: GRPO, OPSD and HSD timed phase by phase on one fixed batch, and HSD against TRL's SDPO.

Everything runs in one process through the real trainers (`HSDTrainer.train`, `SDPOTrainer.train`) with
scripted rollouts, so the numbers in docs/performance.md are what a training run pays per step.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import statistics
import string
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("grpo", "opsd", "hsd")
MODEL_CONFIGS = ("tiny", "qwen3-0.6b", "qwen3-1.7b")
SMOLLM2_VOCAB = 49_152
QWEN3_VOCAB = 151_936
# HSDConfig fields that switch the teacher / student pass optimisations; --plain sets each to "off".
OPTIMISATIONS_OFF = {
    "skip_undistilled_teacher": False,
    "teacher_prefix_cache": False,
    "teacher_inference_mode": False,
    "analytic_distill_head": False,
    "distill_grad_cache_mb": 0,
}


# ------------------------------------------------------------------------------------------ model shapes
def model_config(name: str):
    """A transformers config for a built-in shape (random init; no hub access), or a local directory's."""
    from transformers import AutoConfig, LlamaConfig, Qwen3Config

    if name == "tiny":  # a small Llama with SmolLM2's vocabulary: the LM head dominates, as in small models
        return LlamaConfig(
            vocab_size=SMOLLM2_VOCAB,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        )
    qwen3 = {
        "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072),
        "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144),
    }
    if name in qwen3:
        return Qwen3Config(
            vocab_size=QWEN3_VOCAB,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40_960,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            **qwen3[name],
        )
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--model-config {name!r} is neither one of {', '.join(MODEL_CONFIGS)} nor a directory with a "
            "config.json"
        )
    return AutoConfig.from_pretrained(path)


def build_tokenizer(vocab_size: int):
    """A character-level tokenizer padded to `vocab_size` tokens, each a distinct character.

    Decoding any ids and encoding the text again gives the same ids back, so a peer shown to the teacher as
    text is exactly as long as the peer's completion; prompts and templates read as plain text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</e>", "<u>", "<a>", "<s>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    base = specials + chars
    if vocab_size < len(base) + 16:
        raise ValueError(f"vocab_size={vocab_size} is too small for the benchmark tokenizer")
    filler, code = [], 0x3400  # CJK and beyond: one code point per token, surrogates skipped
    while len(base) + len(filler) < vocab_size:
        if not 0xD800 <= code <= 0xDFFF:
            filler.append(chr(code))
        code += 1
    vocab = {token: i for i, token in enumerate(base + filler)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</e>",
        additional_special_tokens=specials[2:],
    )
    fast.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<u>{{ m['content'] }}{% elif m['role'] == 'system' %}"
        "<s>{{ m['content'] }}{% else %}<a>{{ m['content'] }}</e>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    fast.filler_start = len(base)  # ids from here on are plain characters, safe as random completion tokens
    return fast


def build_model(spec: str, *, random_init: bool, dtype, device: str, seed: int):
    """The policy: a built-in shape (always random init) or a local directory (its weights unless random)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if spec in MODEL_CONFIGS or random_init:
        config = model_config(spec)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device)
    return model


# ----------------------------------------------------------------------------------------- the fixed batch
@dataclass
class FixedBatch:
    """B questions x G rollouts of exactly T tokens, with a fixed success pattern (groups contiguous)."""

    rows: list[dict]  # {"prompt": [...], "answer": str}
    completions: list[list[int]]
    rewards: list[float]
    group_size: int

    @property
    def success_counts(self) -> list[int]:
        G = self.group_size
        return [int(sum(self.rewards[g * G : (g + 1) * G])) for g in range(len(self.rows))]


def fixed_batch(tokenizer, n_questions: int, group_size: int, completion_len: int, *, seed: int, p=0.3):
    """Random completion tokens and Bernoulli(p) successes, drawn (with `seed`) until the batch looks like a
    real one: a success rate within 0.1 of p, and, with two groups or more, at least one group without a
    success and one with (the two cases HSD handles differently: fallback and peers)."""
    if n_questions < 1 or group_size < 2 or completion_len < 2:
        raise ValueError("--batch must be >= 1, --group-size >= 2 and --completion-len >= 2")
    rng = random.Random(seed)
    rows = []
    for _ in range(n_questions):
        a, b = rng.randrange(100, 1000), rng.randrange(100, 1000)
        question = f"Compute {a} + {b}. Think step by step, then give the final answer."
        rows.append({"prompt": [{"role": "user", "content": question}], "answer": str(a + b)})

    def realistic(groups) -> bool:
        rate = sum(map(sum, groups)) / (n_questions * group_size)
        mixed = n_questions < 2 or (any(not any(g) for g in groups) and any(any(g) for g in groups))
        return mixed and abs(rate - p) <= 0.1

    for _ in range(10_000):
        successes = [[rng.random() < p for _ in range(group_size)] for _ in range(n_questions)]
        if realistic(successes):
            break
    low, high = tokenizer.filler_start, len(tokenizer)
    completions = []
    for _ in range(n_questions * group_size):
        ids = [rng.randrange(low, high) for _ in range(completion_len - 1)]
        completions.append(ids + [tokenizer.eos_token_id])
    rewards = [float(s) for group in successes for s in group]
    return FixedBatch(rows, completions, rewards, group_size)


def chat_prompt_ids(tokenizer, prompt) -> list[int]:
    """A conversational prompt's ids, as TRL tokenizes a student prompt."""
    out = tokenizer.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"][0])


def scripted_rollouts(batch: FixedBatch, tokenizer):
    """TRL `rollout_func`: rollout k of a question is always the same completion, in any prompt order."""
    questions = {row["prompt"][-1]["content"]: q for q, row in enumerate(batch.rows)}
    prompt_ids = {q: chat_prompt_ids(tokenizer, row["prompt"]) for q, row in enumerate(batch.rows)}

    def rollout(prompts, trainer):
        seen: dict[int, int] = {}
        out_prompts, out_completions = [], []
        for prompt in prompts:
            q = questions[prompt[-1]["content"]]
            k = seen.get(q, 0) % batch.group_size
            seen[q] = k + 1
            out_prompts.append(prompt_ids[q])
            out_completions.append(batch.completions[q * batch.group_size + k])
        return {"prompt_ids": out_prompts, "completion_ids": out_completions, "logprobs": None}

    return rollout


def table_reward(batch: FixedBatch):
    """Reward function that returns each scripted completion's fixed reward."""
    table = {tuple(ids): r for ids, r in zip(batch.completions, batch.rewards)}

    def fixed_success(prompts, completions, completion_ids, **kwargs):
        return [table[tuple(int(t) for t in ids)] for ids in completion_ids]

    return fixed_success


# ---------------------------------------------------------------------------------------- timing, memory
class MemoryMeter:
    """Growth of memory in use over a window: CUDA's allocated bytes on GPU, sampled RSS on CPU.

    On CPU a thread samples RSS every millisecond; glibc serves allocations of 32 MiB and more ([chunk, V]
    logits, activations) with their own mappings, which leave the resident set when freed, and the heap is
    trimmed before each step, so the growth follows the step's large tensors.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self._start = self._peak = 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def trim() -> None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return
        self._start = self._peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self.rss())

    def stop(self) -> int:
        """The largest growth above the memory in use at `start`, in bytes."""
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated()) - self._start
        self._stop.set()
        self._thread.join()
        return max(self._peak, self.rss()) - self._start


def resident_bytes(trainer) -> int:
    """Bytes a trainer holds between steps: its models' weights and buffers, gradients, optimizer state."""
    import torch

    seen: dict[int, int] = {}

    def add(tensor) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for model in (
        trainer.model,
        getattr(trainer, "ref_model", None),
        getattr(trainer, "teacher_model", None),
    ):
        if isinstance(model, torch.nn.Module):
            for tensor in [*model.parameters(), *model.buffers()]:
                add(tensor)
                add(tensor.grad)
    optimizer = getattr(trainer, "optimizer", None)
    for state in getattr(optimizer, "state", {}).values():
        for value in state.values():
            add(value)
    return sum(seen.values())


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class TurnTable:
    """Steps of several `train()` loops, each in its own thread, taken one at a time in rotating rounds.

    Round r runs one step of every trainer, in the trainers' order rotated by r, so slow phases of a
    shared machine fall on every method alike. A trainer's turn lasts from its step's start to the start
    of its next step (or the end of its training), so nothing of one trainer overlaps another's step.
    """

    def __init__(self, names: list[str], steps: int):
        self.slots = [(r, names[(r + k) % len(names)]) for r in range(steps) for k in range(len(names))]
        self.position = 0
        self.done: set[str] = set()
        self.error: BaseException | None = None
        self.holder: str | None = None
        self.condition = threading.Condition()

    def _skip_done(self) -> None:
        while self.position < len(self.slots) and self.slots[self.position][1] in self.done:
            self.position += 1

    def begin_step(self, name: str, step: int) -> None:
        with self.condition:
            self._pass(name)
            while self.error is None and self.slots[min(self.position, len(self.slots) - 1)] != (step, name):
                if self.position >= len(self.slots):
                    raise RuntimeError(f"{name} asked for step {step} beyond the {len(self.slots)} planned")
                self.condition.wait()
            if self.error is not None:
                raise RuntimeError("another trainer of the benchmark failed") from self.error
            self.holder = name

    def _pass(self, name: str) -> None:
        if self.holder == name:
            self.holder = None
            self.position += 1
            self._skip_done()
            self.condition.notify_all()

    def finish(self, name: str, error: BaseException | None = None) -> None:
        with self.condition:
            self._pass(name)
            self.done.add(name)
            if error is not None and self.error is None:
                self.error = error
            self._skip_done()
            self.condition.notify_all()


def instrument(trainer, name: str, device: str, turns: TurnTable) -> list[dict]:
    """Per-step phase times and peak memory of the real `trainer.train()`: wraps the instance's
    `_prepare_inputs` and `training_step`, and takes turns at step begin / end. Returns the list it fills."""
    from transformers import TrainerCallback

    records: list[dict] = []
    clock: dict[str, float] = {}
    meter = MemoryMeter(device)
    prepare_inputs, training_step = trainer._prepare_inputs, trainer.training_step

    def timed_prepare(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = prepare_inputs(*args, **kwargs)
        synchronize(device)
        clock["prepare"] = clock.get("prepare", 0.0) + time.perf_counter() - start
        return out

    def timed_training_step(*args, **kwargs):
        start = time.perf_counter()
        out = training_step(*args, **kwargs)
        synchronize(device)
        clock["training_step"] = time.perf_counter() - start
        clock["teacher"] = dict(getattr(trainer, "_phase", {})).get("teacher", 0.0)
        clock["end_of_backward"] = time.perf_counter()
        return out

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            turns.begin_step(name, len(records))
            gc.collect()
            MemoryMeter.trim()
            synchronize(device)
            clock.clear()
            clock["resident"] = resident_bytes(trainer)
            meter.start()
            clock["begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            end = time.perf_counter()
            growth = meter.stop()
            prepare, teacher = clock.get("prepare", 0.0), clock.get("teacher", 0.0)
            student = clock["training_step"] - prepare - teacher
            optimizer = end - clock["end_of_backward"]
            records.append(
                dict(
                    prepare=prepare,
                    teacher=teacher,
                    student_forward_backward=student,
                    optimizer=optimizer,
                    update=teacher + student + optimizer,
                    step=end - clock["begin"],
                    peak_memory=clock["resident"] + growth,
                )
            )

    trainer._prepare_inputs = timed_prepare
    trainer.training_step = timed_training_step
    trainer.synchronize_timers = device.startswith("cuda")
    trainer.add_callback(StepClock())
    return records


def train_in_turns(trainers: dict, device: str, steps: int) -> dict[str, list[dict]]:
    """Run every trainer's `train()` for `steps` steps, interleaved step by step; per-step records."""
    turns = TurnTable(list(trainers), steps)
    records = {name: instrument(trainer, name, device, turns) for name, trainer in trainers.items()}
    errors: dict[str, BaseException] = {}

    def run(name, trainer):
        try:
            trainer.train()
        except BaseException as error:  # re-raised in the main thread below
            errors[name] = error
            turns.finish(name, error)
        else:
            turns.finish(name)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in trainers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"the {name} trainer failed: {type(error).__name__}: {error}") from error
    return records


def summarize(records: list[dict], warmup: int) -> dict:
    """Medians over the timed steps (peak memory: the largest), and every step for reference."""
    timed = records[warmup:]
    if not timed:
        raise RuntimeError("no timed step was recorded")
    median = {k: statistics.median(r[k] for r in timed) for k in timed[0] if k != "peak_memory"}
    return {"median_s": median, "peak_memory_bytes": max(r["peak_memory"] for r in timed), "steps": records}


# ------------------------------------------------------------------------------------------------ a run
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
    from datasets import Dataset

    from hsd.trainer.config import HSDConfig
    from hsd.trainer.trainer import HSDTrainer

    model = build_model(
        setup.model_config,
        random_init=setup.random_init,
        dtype=setup.torch_dtype,
        device=setup.device,
        seed=setup.seed,
    )
    name, _, variant = method.partition(":")
    overrides = {**setup.overrides, **(OPTIMISATIONS_OFF if variant == "plain" else {})}
    args = HSDConfig(**trainer_args(setup, output_dir, method=name, **overrides))
    return HSDTrainer(
        model,
        reward_funcs=table_reward(batch),
        args=args,
        train_dataset=Dataset.from_list(batch.rows),
        processing_class=tokenizer,
        rollout_func=scripted_rollouts(batch, tokenizer),
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


def run_step(setup: BenchSetup, methods=METHODS) -> dict:
    """`hsd bench step`: each method on the same batch, steps interleaved, phase medians, ratios to GRPO."""
    setup.check()
    tokenizer = build_tokenizer(model_config(setup.model_config).vocab_size)
    batch = fixed_batch(tokenizer, setup.batch, setup.group_size, setup.completion_len, seed=setup.seed)
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


# --------------------------------------------------------------------------------------------------- CLI
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-config",
        default="tiny",
        help=f"{', '.join(MODEL_CONFIGS)} (random init) or a model directory (default: tiny)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights for a model directory too")
    parser.add_argument("--batch", type=int, default=4, help="questions per step (default: 4)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per question, G (default: 8)")
    parser.add_argument("--completion-len", type=int, default=64, help="tokens per completion (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="turn off TRL's default activation checkpointing",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an HSDConfig field for every method, e.g. --set teacher_prefix_cache=false (repeatable)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="switch every teacher-pass optimisation off (the plain path)"
    )
    parser.add_argument("--out", help="write the JSON report here (it is printed either way)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="{step,vs-trl}", required=True)
    step = sub.add_parser("step", help="GRPO, OPSD and HSD phase by phase on one fixed batch")
    _add_common(step)
    step.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated (default: grpo,opsd,hsd); a name ending in :plain runs with every optimisation off",
    )
    versus = sub.add_parser("vs-trl", help="an HSD step of HSDTrainer against a step of TRL's SDPOTrainer")
    _add_common(versus)


def parse_overrides(items: list[str], plain: bool) -> dict:
    """`FIELD=VALUE` strings into HSDConfig keyword arguments (values read as `hsd train` reads them)."""
    from hsd.trainer.cli import yaml_scalar
    from hsd.trainer.config import HSDConfig

    known = set(HSDConfig.__dataclass_fields__)
    out = dict(OPTIMISATIONS_OFF) if plain else {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        name, value = item.split("=", 1)
        if name not in known:
            raise ValueError(f"--set {item!r}: HSDConfig has no field {name!r}")
        out[name] = yaml_scalar(value)
    return out


def setup_from_args(args) -> BenchSetup:
    return BenchSetup(
        model_config=args.model_config,
        random_init=args.random_init,
        batch=args.batch,
        group_size=args.group_size,
        completion_len=args.completion_len,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        overrides=parse_overrides(args.set, args.plain),
    )


def format_table(report: dict) -> str:
    """Phase medians in seconds, peak memory in MiB, one row per method, then the ratios."""
    phases = ("prepare", "teacher", "student_forward_backward", "optimizer", "update", "step")
    lines = [f"{'method':<8}" + "".join(f"{p[:14]:>16}" for p in phases) + f"{'peak MiB':>12}"]
    for method, result in report["methods"].items():
        median = result["median_s"]
        cells = "".join(f"{median[p]:>16.4f}" if median.get(p) is not None else f"{'-':>16}" for p in phases)
        lines.append(f"{method:<8}{cells}{result['peak_memory_bytes'] / 2**20:>12.1f}")
    for metric, values in report.get("ratios", {}).items():
        lines.append(f"{metric}: " + ", ".join(f"{k} = {v}" for k, v in values.items()))
    return "\n".join(lines)


def main(args) -> int:
    setup = setup_from_args(args)
    if args.bench == "step":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {*METHODS, *(f"{m}:plain" for m in METHODS)}
        unknown = [m for m in methods if m not in known]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ValueError(
                f"--methods {args.methods!r}: each once, among {', '.join(METHODS)} (add :plain for a method "
                "with every optimisation off)"
            )
        report = run_step(setup, methods)
    else:
        report = run_vs_trl(setup)
    report["argv"] = ["hsd", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else sys.argv
    print(format_table(report))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


# ------------------------------------------------------------------------------------- against TRL's SDPO
SDPO_SETTINGS = dict(
    distillation_mode="full_logits",  # full-vocabulary divergence, as HSD
    distillation_alpha=0.0,  # KL(teacher || student), Eq. 13
    distillation_weight=1.0,  # pure self-distillation, as HSD
    teacher_model_kind="live",  # the current weights under stop-gradient, as HSD
    use_successful_as_teacher=True,  # a successful rollout of the group as the teacher's context
    success_reward_threshold=1.0,
)


def build_sdpo_trainer(setup: BenchSetup, tokenizer, batch: FixedBatch, output_dir: str):
    """TRL's `SDPOTrainer` (successful-peer self-distillation, full logits) on the fixed batch.

    SDPO has no `rollout_func`, so its `_generate` is replaced by the same scripted completions."""
    from datasets import Dataset
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    prompt_to_question = {
        tuple(chat_prompt_ids(tokenizer, row["prompt"])): q for q, row in enumerate(batch.rows)
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

    model = build_model(
        setup.model_config,
        random_init=setup.random_init,
        dtype=setup.torch_dtype,
        device=setup.device,
        seed=setup.seed,
    )
    args = SDPOConfig(**trainer_args(setup, output_dir, **SDPO_SETTINGS))
    return ScriptedSDPOTrainer(
        model,
        reward_funcs=table_reward(batch),
        args=args,
        train_dataset=Dataset.from_list(batch.rows),
        processing_class=tokenizer,
    )


def build_trl_grpo_trainer(setup: BenchSetup, tokenizer, batch: FixedBatch, output_dir: str):
    """TRL's own `GRPOTrainer` on the fixed batch (the reference point of the SDPO measurement)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model = build_model(
        setup.model_config,
        random_init=setup.random_init,
        dtype=setup.torch_dtype,
        device=setup.device,
        seed=setup.seed,
    )
    return GRPOTrainer(
        model,
        reward_funcs=table_reward(batch),
        args=GRPOConfig(**trainer_args(setup, output_dir)),
        train_dataset=Dataset.from_list(batch.rows),
        processing_class=tokenizer,
        rollout_func=scripted_rollouts(batch, tokenizer),
    )


def run_vs_trl(setup: BenchSetup) -> dict:
    """`hsd bench vs-trl`: a step of HSDTrainer (HSD) against TRL's SDPOTrainer and GRPOTrainer, interleaved."""
    setup.check()
    tokenizer = build_tokenizer(model_config(setup.model_config).vocab_size)
    batch = fixed_batch(tokenizer, setup.batch, setup.group_size, setup.completion_len, seed=setup.seed)
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
