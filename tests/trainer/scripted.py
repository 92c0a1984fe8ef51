"""A small arithmetic dataset, its exact-answer reward, and scripted rollouts (TRL's `rollout_func`), so that
a trainer's batch is the same in every process layout and every run."""

from __future__ import annotations

from datasets import Dataset

GROUP = 4

# Trainer fields every scripted run shares (tests, the accelerate step, the resume run); callers add the rest.
TRAINER_ARGS = dict(
    per_device_train_batch_size=16,
    num_generations=GROUP,
    max_completion_length=16,
    bf16=False,
    max_steps=1,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    seed=0,
    logging_steps=1,
    learning_rate=1e-2,
)


def arithmetic_dataset(n: int = 8) -> Dataset:
    rows = [
        {"prompt": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)}
        for b in range(4)
        for a in range(4)
    ][:n]
    return Dataset.from_list(rows)


def exact_answer_reward(prompts, completions, answer, **kwargs):
    """1.0 when the completion ends with '=<answer>', else 0.0."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(t.strip().endswith("=" + a)) for t, a in zip(texts, answer)]


def scripted_completion(question: str, k: int) -> str:
    """Rollout k of a group: a fixed mix of right and wrong answers that share a prefix.

    Questions starting with 0 get no success (a group with no peer); starting with 3, all succeed."""
    a, b = (int(x) for x in question.rstrip("=").split("+"))
    right = f"{a}+{b}={a + b}"
    wrong = f"{a}+{b}={a + b + 1}"
    if a == 0:
        return wrong if k % 2 else f"{a}+{b}={a + b + 2}"
    if a == 3:
        return right
    return [right, wrong, f"{b}+{a}={a + b}", f"{a}+{b}=9{a}"][k % GROUP]


def make_rollout_func(tokenizer):
    """TRL rollout_func: deterministic completions (exact token ids + eos), independent of the process layout."""
    from hsd.bench.fixtures import scripted_rollout_func

    def completion(question: str, k: int) -> list[int]:
        ids = tokenizer(scripted_completion(question, k), add_special_tokens=False)["input_ids"]
        return list(ids) + [tokenizer.eos_token_id]

    return scripted_rollout_func(tokenizer, completion)


def scripted_trainer(
    model_dir,
    output_dir,
    *,
    cls=None,
    config_cls=None,
    reward_funcs=exact_answer_reward,
    train_dataset=None,
    callbacks=None,
    peft_config=None,
    model=None,
    **overrides,
):
    """A trainer (HSDTrainer unless `cls`) on the model in `model_dir` with scripted rollouts, the exact-answer
    reward and `arithmetic_dataset(4)`: 4 questions x 4 rollouts, one group without a success (0+..) and one
    where all succeed (3+..). `overrides` replace fields of TRAINER_ARGS; `peft_config` (a peft config) makes it
    an adapter run; `model` replaces the model loaded from `model_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hsd import HSDConfig, HSDTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = (config_cls or HSDConfig)(output_dir=str(output_dir), **{**TRAINER_ARGS, **overrides})
    return (cls or HSDTrainer)(
        AutoModelForCausalLM.from_pretrained(model_dir) if model is None else model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=arithmetic_dataset(4) if train_dataset is None else train_dataset,
        processing_class=tokenizer,
        rollout_func=make_rollout_func(tokenizer),
        callbacks=callbacks,
        peft_config=peft_config,
    )
