"""Batched sampling (or greedy decoding) of completions from a Hugging Face causal LM, with a progress bar.
Completions are kept as the exact token ids generated, up to and including the first eos, as TRL keeps them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hsd.core.batch import padded
from hsd.core.checks import is_int
from hsd.tasks.problem import Problem, Verdict, chat_prompt
from hsd.tasks.rewards import VERIFIERS, Verifier, verify_all
from hsd.teacher.prompt import tokenize_prompt


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn: sampled at `temperature` / `top_p`, or greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.max_new_tokens):
            raise ValueError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def prompt_ids(tokenizer, problem: Problem) -> list[int]:
    """The chat-templated student prompt, tokenized as the trainer tokenizes it."""
    return tokenize_prompt(tokenizer, chat_prompt(problem.prompt))


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends a completion: the tokenizer's eos and the model's generation eos."""
    sources = (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None))
    ids = {i for s in sources if s is not None for i in (s if isinstance(s, list | tuple) else [s])}
    if not ids:
        raise ValueError(
            "the tokenizer and the model both lack an eos token; cannot tell where completions end"
        )
    return sorted(ids)


def _cut_at_eos(row: list[int], stop: set[int]) -> list[int]:
    for t, token in enumerate(row):
        if token in stop:
            return row[: t + 1]
    return row


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], *, n: int = 1,
             settings: SamplingSettings = SamplingSettings(), batch_size: int = 32, seed: int = 0,
             progress=None) -> list[list[list[int]]]:  # fmt: skip
    """`n` completions (token ids up to and including the first eos) for each prompt (token ids).

    Rows (prompt x sample) are generated `batch_size` at a time, left-padded, longest prompts together. The
    global torch RNG is seeded with `seed` + the batch's first row, so a call is reproducible. `progress`
    (a tqdm bar or None) advances by one per row.
    """
    from transformers import GenerationConfig

    if not is_int(n) or n < 1:
        raise ValueError(f"n (samples per prompt) must be a positive int, got {n!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if settings.greedy and n != 1:
        raise ValueError(f"greedy decoding gives one completion per prompt; got n={n}")
    stop = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = GenerationConfig(
        do_sample=not settings.greedy,
        temperature=settings.temperature if not settings.greedy else None,
        top_p=settings.top_p if not settings.greedy else None,
        top_k=0,  # no top-k cut: sample from the whole (top-p) distribution
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=stop,
        pad_token_id=pad_id,
    )
    rows = [(list(map(int, prompts[p])), p) for p in range(len(prompts)) for _ in range(n)]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    device = next(model.parameters()).device
    out_rows: list[list[int] | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        input_ids, attention = padded([rows[r][0] for r in batch], left=True, pad_id=pad_id)
        torch.manual_seed(seed + start)
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        new_tokens = generated[:, input_ids.shape[1] :].tolist()
        for r, row in zip(batch, new_tokens):
            out_rows[r] = _cut_at_eos(row, set(stop))
        if progress is not None:
            progress.update(len(batch))
    return [out_rows[p * n : (p + 1) * n] for p in range(len(prompts))]


def decode(tokenizer, ids: Sequence[int]) -> str:
    """A completion's text, special tokens (eos) left out: what the verifier reads."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass
class VerifiedGroups:
    """`n` completions of each problem: token ids, the text the verifier read, and its verdicts."""

    ids_PG: list[list[list[int]]]
    texts_PG: list[list[str]]
    verdicts_PG: list[list[Verdict]]

    def per_problem(self):
        """(ids_G, texts_G, verdicts_G) for each problem, in order."""
        return zip(self.ids_PG, self.texts_PG, self.verdicts_PG)


def sample_and_verify(model, tokenizer, problems: Sequence[Problem], verifier: Verifier, *, n: int,
                      settings: SamplingSettings, batch_size: int, seed: int, verify_workers: int = 2,
                      progress=None) -> VerifiedGroups:  # fmt: skip
    """`generate` `n` completions from each problem's chat prompt, decode them and verify them
    (`verify_workers` at a time)."""
    prompts = [prompt_ids(tokenizer, p) for p in problems]
    ids_PG = generate(model, tokenizer, prompts, n=n, settings=settings, batch_size=batch_size, seed=seed,
                      progress=progress)  # fmt: skip
    texts_PG = [[decode(tokenizer, ids) for ids in ids_G] for ids_G in ids_PG]
    return VerifiedGroups(ids_PG, texts_PG, verify_all(problems, texts_PG, verifier, verify_workers))


def set_cpu_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: `threads`, else 1 when the load average already fills every core (OpenMP
    threads that wait on each other make a busy machine several times slower), else torch's default."""
    if threads is None and os.getloadavg()[0] >= (os.cpu_count() or 1):
        threads = 1
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass
class LoadedModel:
    """A model ready to sample from, its tokenizer, and what it runs on."""

    model: object
    tokenizer: object
    device: str
    threads: int  # torch's CPU threads
    path: str  # where the name or alias resolved to (an adapter: its directory)

    def info(self) -> dict:
        """The run's record of where the model came from and what it ran on."""
        return {"model_path": self.path, "device": self.device, "threads": self.threads}


def problems_and_model(args: argparse.Namespace, limit: int | None) -> tuple[list[Problem], LoadedModel]:
    """What `hsd eval` and `hsd analyze` start from: at most `limit` problems of --dataset (--split,
    --instruction, --seed), then --model (a hub id, a directory, a .gguf file, an alias, or an adapter
    directory, merged into its base) in eval mode on
    --device (default: cuda when available), after `set_cpu_threads(--threads)`. The problems come first, so
    that a mistake in the data stops the command before any model loads."""
    from hsd.models import load_model, load_tokenizer, resolve_model
    from hsd.tasks.datasets import load_problems

    problems = load_problems(
        args.dataset,
        split=args.split,
        limit=limit,
        instruction=args.instruction,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = set_cpu_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device=device)
    source = resolve_model(args.model)
    return problems, LoadedModel(model, tokenizer, device, threads, source.adapter or source.pretrained)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that sample and verify (`hsd eval`, `hsd analyze`): the problems'
    split and instruction, the verifier, where the model runs, the progress bar."""
    parser.add_argument("--split", default=None, help="split of a dataset directory or hub dataset")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding local copies of the named benchmarks (gsm8k/test.jsonl, ...; "
                             "default: $HSD_DATA_DIR); a name it lacks comes from the hub")  # fmt: skip
    parser.add_argument("--instruction", default=None, help="appended to each prompt (default: the task's)")
    parser.add_argument("--verifier", choices=sorted(VERIFIERS), default="task",
                        help="task: the task's own verifier (default); last-number: math-verify on the last "
                             "\\boxed{} or number of the reply, for terse numeric tasks")  # fmt: skip
    parser.add_argument("--verify-workers", type=int, default=2, help="verifications run in parallel")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, or 1 when the machine is already busy)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar on stderr (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True)
