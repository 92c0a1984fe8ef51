"""A small arithmetic dataset, its exact-answer reward, and scripted rollouts (TRL's `rollout_func`), so that
a trainer's batch is the same in every process layout and every run."""

from __future__ import annotations

from datasets import Dataset

GROUP = 4


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

    def rollout(prompts, trainer):
        prompt_ids, completion_ids = [], []
        seen: dict[str, int] = {}
        for prompt in prompts:
            question = prompt[-1]["content"]
            k = seen.get(question, 0)
            seen[question] = k + 1
            prompt_ids.append(
                tokenizer.apply_chat_template(
                    [prompt], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"][0]
            )
            ids = tokenizer(scripted_completion(question, k), add_special_tokens=False)["input_ids"]
            completion_ids.append(list(ids) + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout
