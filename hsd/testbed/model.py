"""The testbed model: a character-level tokenizer and a sub-million-parameter Llama pretrained on the chain
mix in minutes on a CPU, saved as an ordinary Hugging Face model directory and cached by its config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import string
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hsd.core.contexts import CONTEXT_KINDS
from hsd.tasks.chain import MODULI
from hsd.testbed.mix import sample_example
from hsd.testbed.terse import ANSWER_FORMS

CODE_VERSION = 2  # bump when a change here or in the mix changes the weights a config builds
SPECIAL_TOKENS = ("<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
CHARS = tuple(c for c in string.printable if c not in "\r\x0b\x0c")  # printable ASCII, space, \t, \n
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('testbed chat roles are system, user and assistant, got ' + message['role']) }}"
    "{%- endif -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass(frozen=True)
class TestbedConfig:
    """Everything that determines the built weights; its hash (with CODE_VERSION) names the cache entry."""

    __test__ = False  # not a pytest test class, whatever its name

    seed: int = 0
    # architecture (Llama)
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    max_positions: int = 1024
    init_std: float = 0.1  # initializer_range; at 0.02 attention stays near uniform for hundreds of steps
    # pretraining
    train_steps: int = 1000
    batch_size: int = 16  # small batches, more updates: the arithmetic is learnt in fewer tokens
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    # the mix
    error_rate: float = 0.2  # per-step corruption of context-free solutions: p ~ (1 - error_rate)^steps
    steps_range: tuple[int, int] = (4, 4)  # one chain length: where an operation sits in the prompt is fixed
    modulus: int = 10
    operand_max: int = 3  # small operands: the result is close to the value, so the table is learnt fast
    multi_share: float = 0.5
    slip_rate: float = (
        0.5  # context examples whose target slips once (slip unscored): teaches past-tau behaviour
    )
    context_weights: tuple[tuple[str, float], ...] = field(
        default=(("none", 0.8), ("answer+peer", 0.1), ("answer", 0.04), ("peer", 0.02), ("reference", 0.04))
    )
    # "parity" / "half": a terse-answer chain (hsd.testbed.terse); a knob added later, so left out of key() and the
    # build record at its default: every build made before it keeps its cache entry and weights
    answer_form: str = "value"

    def __post_init__(self) -> None:
        positive = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_positions")
        for name in (*positive, "train_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.error_rate < 1.0:
            raise ValueError(f"error_rate must be in [0, 1), got {self.error_rate!r}")
        if not 0.0 <= self.slip_rate <= 1.0:
            raise ValueError(f"slip_rate must be in [0, 1], got {self.slip_rate!r}")
        if not 0.0 <= self.multi_share <= 1.0:
            raise ValueError(f"multi_share must be in [0, 1], got {self.multi_share!r}")
        low, high = self.steps_range
        if not 1 <= low <= high:
            raise ValueError(
                f"steps_range must be (low, high) with 1 <= low <= high, got {self.steps_range!r}"
            )
        if self.modulus not in MODULI:
            raise ValueError(f"modulus must be one of {MODULI}, got {self.modulus!r}")
        if not 1 <= self.operand_max < self.modulus:
            raise ValueError(f"operand_max must be in [1, {self.modulus - 1}], got {self.operand_max!r}")
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {self.answer_form!r}")
        unknown = [name for name, _ in self.context_weights if name not in CONTEXT_KINDS]
        if unknown or not any(weight > 0 for _, weight in self.context_weights):
            raise ValueError(
                f"context_weights must weigh contexts among {CONTEXT_KINDS} positively, got {unknown}"
            )

    def fields(self) -> dict:
        """The config as a dict, without the knobs added later (LATER_KNOBS) that are at their defaults."""
        fields = dataclasses.asdict(self)
        return {k: v for k, v in fields.items() if k not in LATER_KNOBS or v != LATER_KNOBS[k]}

    def key(self) -> str:
        """A short hash of the config and the code version: the cache entry's name."""
        payload = json.dumps({"code_version": CODE_VERSION, **self.fields()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


LATER_KNOBS = {"answer_form": "value"}  # knob -> default; hashed only when changed


DEFAULT_TESTBED = TestbedConfig()


def config_from_knobs(seed: int = 0, **knobs) -> TestbedConfig:
    """The config with `knobs` changed from the defaults; an unknown knob is a ValueError naming it."""
    names = {f.name for f in dataclasses.fields(TestbedConfig)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise ValueError(f"unknown testbed knob(s) {unknown}; known: {sorted(names)}")
    for name in ("steps_range", "context_weights"):
        if name in knobs:
            value = knobs[name]
            knobs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return dataclasses.replace(DEFAULT_TESTBED, seed=seed, **knobs)


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast`: one token per character, so token positions in a
    completion are character offsets; <|end|> closes every message and is the eos."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: characters
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=DEFAULT_TESTBED.max_positions,
    )


def _llama_config(config: TestbedConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        initializer_range=config.init_std,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _encode_pair(
    user: str, target: str, char_ids: dict[str, int], special: dict[str, int]
) -> tuple[list, int]:
    """Token ids of the chat-templated (user, assistant) pair and where the assistant's text starts.
    Same ids as `apply_chat_template` (a test checks), without its per-call overhead."""
    prompt = [special["<|user|>"], *(char_ids[c] for c in user), special["<|end|>"], special["<|assistant|>"]]
    return prompt + [char_ids[c] for c in target] + [special["<|end|>"]], len(prompt)


def _encode_example(example, char_ids: dict[str, int], special: dict[str, int]) -> tuple[list, int, tuple]:
    """`_encode_pair` of a mix `Example`, with its unscored spans as token positions (one token per char)."""
    ids, target_start = _encode_pair(example.user, example.target, char_ids, special)
    spans = tuple((target_start + start, target_start + end) for start, end in example.unscored)
    return ids, target_start, spans


def _batches(config: TestbedConfig, tokenizer):
    """Padded (input_ids, labels) batches, deterministic in config.seed: examples come in chunks of 16
    batches, sorted by length inside a chunk (little padding) and the batches of a chunk shuffled."""
    vocab = tokenizer.get_vocab()
    char_ids = {c: vocab[c] for c in CHARS}
    special = {t: vocab[t] for t in SPECIAL_TOKENS}
    rng = random.Random(f"testbed-mix:{config.seed}")
    knobs = dict(
        context_weights=config.context_weights,
        multi_share=config.multi_share,
        steps_range=config.steps_range,
        operand_max=config.operand_max,
        error_rate=config.error_rate,
        modulus=config.modulus,
        slip_rate=config.slip_rate,
        answer_form=config.answer_form,
    )
    chunk = 16
    for _ in range(math.ceil(config.train_steps / chunk)):
        encoded = [
            _encode_example(sample_example(rng, **knobs), char_ids, special)
            for _ in range(chunk * config.batch_size)
        ]
        encoded.sort(key=lambda pair: len(pair[0]))
        groups = [encoded[i : i + config.batch_size] for i in range(0, len(encoded), config.batch_size)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(ids) for ids, _, _ in group)
            input_ids = torch.full((len(group), width), special["<pad>"], dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            for row, (ids, target_start, unscored) in enumerate(group):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, target_start : len(ids)] = input_ids[row, target_start : len(ids)]
                for start, end in unscored:  # a slip shown in a context example is never a target
                    labels[row, start:end] = -100
            yield input_ids, labels


def default_threads() -> int:
    """Two threads on an idle machine, one on a busy one: on a loaded 2-core machine, OpenMP threads that
    wait on each other make a step ten times slower. The pretrained weights do not depend on it."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores else min(2, cores)


@contextmanager
def torch_threads(threads: int | None = None):
    """Run the block with `threads` torch threads (default: default_threads()), then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(config: TestbedConfig, tokenizer, log_every: int = 0, threads: int | None = None):
    """A freshly initialised Llama trained on the mix (loss on the assistant's tokens only); returns
    (model, stats). Deterministic given config.seed on CPU (the same weights with 1 or 2 threads)."""
    with torch_threads(threads):
        return _pretrain(config, tokenizer, log_every)


def _pretrain(config: TestbedConfig, tokenizer, log_every: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(_llama_config(config, tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    started, tokens, losses = time.perf_counter(), 0, []
    for step, (input_ids, labels) in zip(range(config.train_steps), _batches(config, tokenizer)):
        logits_BTV = model(input_ids=input_ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits_BTV[:, :-1].reshape(-1, logits_BTV.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        tokens += input_ids.numel()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - started
            print(
                f"step {step + 1}/{config.train_steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                f"{tokens / elapsed:.0f} tok/s {elapsed:.0f}s",
                flush=True,
            )
    model.eval()
    elapsed = time.perf_counter() - started
    stats = {
        "train_seconds": round(elapsed, 1),
        "tokens": tokens,
        "tokens_per_second": round(tokens / elapsed),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
    }
    return model, stats


def weights_sha256(model) -> str:
    """A hash of every tensor of the state dict, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """cache_dir if given, else $HSD_CACHE_DIR/testbed, else ~/.cache/hsd/testbed."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("HSD_CACHE_DIR") or Path.home() / ".cache" / "hsd") / "testbed"


def cached_testbed_model(
    seed: int = 0, *, cache_dir: str | os.PathLike | None = None, **knobs
) -> Path | None:
    """The directory of the finished build for (seed, knobs) when the cache holds one, else None."""
    target = cache_root(cache_dir) / config_from_knobs(seed, **knobs).key()
    return target if (target / "testbed.json").exists() else None


def build_testbed_model(
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    log_every: int = 0,
    threads: int | None = None,
    **knobs,
) -> Path:
    """The directory of the testbed model for (seed, knobs), pretraining it on first use.

    The directory loads with `AutoModelForCausalLM` / `AutoTokenizer`; its testbed.json records the config,
    the weights hash and the pretraining stats. Built in a temporary directory and renamed into place, so
    a finished entry is complete; a later call finds it and returns at once (unless force).
    """
    config = config_from_knobs(seed, **knobs)
    root = cache_root(cache_dir)
    target = root / config.key()
    if (target / "testbed.json").exists() and not force:
        return target
    from transformers import GenerationConfig

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model, stats = pretrain(config, tokenizer, log_every=log_every, threads=threads)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{config.key()}-", dir=root))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {
            "config": config.fields(),
            "code_version": CODE_VERSION,
            "weights_sha256": weights_sha256(model),
            **stats,
        }
        (staging / "testbed.json").write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():  # force, or a half-made entry without testbed.json
            retired = Path(tempfile.mkdtemp(prefix=f".{config.key()}-old-", dir=root))
            os.replace(target, retired / "model")
            shutil.rmtree(retired, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (target / "testbed.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
