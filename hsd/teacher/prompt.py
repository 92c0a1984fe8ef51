"""Teacher inputs at the token level: [chat-templated prompt carrying the context ; the student's exact ids].

The privileged context (answer, peer, reference) is rendered as text into the last user message; the
student's completion is appended as the token ids it was sampled as, never decoded and re-encoded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hsd.core.contexts import TeacherContext
from hsd.teacher.template import TeacherTemplate


def _question_of(prompt: Any) -> str:
    """The text the student was asked: the last user message, or the whole prompt when it is plain text."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    raise ValueError("prompt has no user message to carry the teacher's context")


def teacher_prompt(prompt: Any, context_text: str) -> Any:
    """The student's prompt with its last user message (or plain text) replaced by `context_text`."""
    if isinstance(prompt, str):
        return context_text
    messages = copy.deepcopy(list(prompt))
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = context_text
            return messages
    raise ValueError("prompt has no user message to carry the teacher's context")


def render_context(
    prompt: Any,
    context: TeacherContext,
    template: TeacherTemplate,
    *,
    peer_text: str | None,
) -> Any:
    """The teacher's prompt (same shape as the student's) for one rollout's context (Eq. 9)."""
    question = _question_of(prompt)
    text = template.render(question, answer=context.answer, peer=peer_text, reference=context.reference)
    return teacher_prompt(prompt, text)


def tokenize_prompt(tokenizer, prompt: Any, **chat_template_kwargs) -> list[int]:
    """Token ids of a prompt exactly as TRL's GRPOTrainer tokenizes a student prompt."""
    if isinstance(prompt, str):
        return list(tokenizer(text=[prompt])["input_ids"][0])
    out = tokenizer.apply_chat_template(
        conversation=[prompt],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        **chat_template_kwargs,
    )
    return list(out["input_ids"][0])


def teacher_input_ids(
    prompts: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    contexts: Sequence[TeacherContext | None],
    peer_completion_ids: Sequence[Sequence[int] | None],
    tokenizer,
    template: TeacherTemplate,
    *,
    max_peer_tokens: int | None = None,
    chat_template_kwargs: dict | None = None,
) -> list[tuple[list[int], list[int]] | None]:
    """For each rollout: (teacher prompt ids, the student's completion ids), or None when not distilled.

    `peer_completion_ids[i]` holds the token ids of rollout i's peer (None when it has none); the peer is
    shown to the teacher as text decoded from those ids.
    """
    if not len(prompts) == len(completion_ids) == len(contexts) == len(peer_completion_ids):
        raise ValueError(
            "teacher_input_ids: prompts, completion_ids, contexts and peer_completion_ids must have one entry "
            f"per rollout (got {len(prompts)}, {len(completion_ids)}, {len(contexts)}, {len(peer_completion_ids)})"
        )
    kwargs = chat_template_kwargs or {}
    out: list[tuple[list[int], list[int]] | None] = []
    for prompt, ids, context, peer_ids in zip(prompts, completion_ids, contexts, peer_completion_ids):
        if context is None:
            out.append(None)
            continue
        peer_text = None
        if context.peer is not None:
            if peer_ids is None:
                raise ValueError(
                    "teacher_input_ids: a context names a peer but no peer completion ids were given"
                )
            kept = list(peer_ids)[:max_peer_tokens] if max_peer_tokens else list(peer_ids)
            peer_text = tokenizer.decode(kept, skip_special_tokens=True)
        teacher = render_context(prompt, context, template, peer_text=peer_text)
        out.append((tokenize_prompt(tokenizer, teacher, **kwargs), [int(t) for t in ids]))
    return out
