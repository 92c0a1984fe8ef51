"""The fixed batch every `hsd bench` method runs on, and the test fixtures it shares with the test suite:
built-in model shapes, a character-level tokenizer with a chat template, scripted rollouts (TRL's
`rollout_func`) and a table reward.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsd.tasks.problem import chat_prompt
from hsd.teacher.prompt import tokenize_prompt

SMOLLM2_VOCAB = 49_152
QWEN3_VOCAB = 151_936

_QWEN3 = dict(model_type="qwen3", vocab_size=QWEN3_VOCAB, num_hidden_layers=28, num_attention_heads=16,
              num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960, rope_theta=1_000_000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=True)  # fmt: skip
# the built-in model shapes (random init): "tiny", a small Llama with SmolLM2's vocabulary (the LM head
# dominates, as in small models), and Qwen3-0.6B / 1.7B
MODEL_CONFIGS: dict[str, dict] = {
    "tiny": dict(model_type="llama", vocab_size=SMOLLM2_VOCAB, hidden_size=128, intermediate_size=384,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                 tie_word_embeddings=True),
    "qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072},
    "qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144},
}  # fmt: skip

# HSDConfig fields that switch the teacher / student pass optimisations; --plain sets each to "off".
OPTIMISATIONS_OFF = {
    "skip_undistilled_teacher": False,
    "teacher_prefix_cache": False,
    "teacher_inference_mode": False,
    "analytic_distill_head": False,
    "distill_grad_cache_mb": 0,
}


def model_config(name: str):
    """A transformers config for a built-in shape (random init; no hub access), or a local directory's."""
    from transformers import AutoConfig

    if name in MODEL_CONFIGS:
        shape = dict(MODEL_CONFIGS[name])
        return AutoConfig.for_model(shape.pop("model_type"), **shape)
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--model-config {name!r} is neither one of {', '.join(MODEL_CONFIGS)} nor a directory with a "
            "config.json"
        )
    return AutoConfig.from_pretrained(path)


def build_tokenizer(vocab_size: int | None = None):
    """A character-level tokenizer (printable ASCII and 5 specials) with a chat template, padded to `vocab_size`
    tokens (None: not padded), each a distinct character.

    Decoding any ids and encoding the text again gives the same ids back, so a peer shown to the teacher as
    text is exactly as long as the peer's completion; prompts and templates read as plain text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</e>", "<u>", "<a>", "<s>"]
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    base = specials + chars
    vocab_size = len(base) if vocab_size is None else vocab_size
    if vocab_size < len(base):
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
        rows.append({"prompt": chat_prompt(question), "answer": str(a + b)})

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


def scripted_rollout_func(tokenizer, completion: Callable[[str, int], list[int]]):
    """TRL `rollout_func`: the k-th time a question comes up in one call, its completion is the token ids
    `completion(question, k)`; prompts tokenized as TRL tokenizes a student prompt. Independent of the
    process layout and of the prompts' order."""
    prompt_ids_of: dict[str, list[int]] = {}

    def rollout(prompts, trainer):
        seen: dict[str, int] = {}
        prompt_ids, completion_ids = [], []
        for prompt in prompts:
            question = prompt[-1]["content"]
            k = seen[question] = seen.get(question, -1) + 1
            if question not in prompt_ids_of:
                prompt_ids_of[question] = tokenize_prompt(tokenizer, prompt)
            prompt_ids.append(prompt_ids_of[question])
            completion_ids.append(list(completion(question, k)))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def scripted_rollouts(batch: FixedBatch, tokenizer):
    """TRL `rollout_func`: rollout k of a question is always the same completion, in any prompt order."""
    question_index = {row["prompt"][-1]["content"]: q for q, row in enumerate(batch.rows)}

    def completion(question: str, k: int) -> list[int]:
        return batch.completions[question_index[question] * batch.group_size + k % batch.group_size]

    return scripted_rollout_func(tokenizer, completion)


def table_reward(batch: FixedBatch):
    """Reward function that returns each scripted completion's fixed reward."""
    table = {tuple(ids): r for ids, r in zip(batch.completions, batch.rewards)}

    def fixed_success(prompts, completions, completion_ids, **kwargs):
        return [table[tuple(int(t) for t in ids)] for ids in completion_ids]

    return fixed_success
