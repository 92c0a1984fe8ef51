"""The teacher's prompt: the student's question with the privileged context (answer, peer, reference) added.

Plain strings only (no tokenizer here), so the testbed's pretraining mix, the trainer and the analysis
all render the same text. The student's completion is never part of this text: its token ids are appended
after the chat-templated teacher prompt, exactly as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherTemplate:
    """How privileged context is written into the teacher's user message (the paper gives no wording)."""

    answer: str = "\n\nThe correct final answer is: {answer}"  # the gold answer a* (Eq. 9)
    peer: str = "\n\nA correct solution:\n<solution>\n{peer}\n</solution>"  # a successful peer o+
    reference: str = "\n\nA reference solution:\n<solution>\n{reference}\n</solution>"  # offline (SDFT)
    suffix: str = "\n\nNow solve the problem yourself."  # closes the context; omitted when there is none

    def render(
        self,
        question: str,
        *,
        answer: str | None = None,
        peer: str | None = None,
        reference: str | None = None,
    ) -> str:
        """The teacher's user message. With no context at all it is the question unchanged."""
        parts = [question]
        if answer is not None:
            parts.append(self.answer.format(answer=answer))
        if peer is not None:
            parts.append(self.peer.format(peer=peer))
        if reference is not None:
            parts.append(self.reference.format(reference=reference))
        if len(parts) == 1:
            return question
        parts.append(self.suffix)
        return "".join(parts)


DEFAULT_TEACHER_TEMPLATE = TeacherTemplate()
