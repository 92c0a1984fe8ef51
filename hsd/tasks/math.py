"""Math answers: the last balanced \\boxed{...} (or a fallback), GSM8K `#### n` golds, equivalence by math-verify.
math-verify runs in a persistent worker process under a wall-clock limit that holds in any thread or process.
"""

from __future__ import annotations

import re
from functools import lru_cache

from hsd.tasks.pool import WorkerError, WorkerTimeout, shared_pool
from hsd.tasks.problem import UNCOMPUTED, Verdict

FALLBACKS = ("last_number", "none")
MAX_ANSWER_CHARS = 1000  # a final answer longer than this is rejected without parsing ("answer_too_long")

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"(?<!\\\\)[{}]")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_INTEGER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)")


def as_text(completion: str | bytes) -> str:
    """A completion as text; bytes that are not valid UTF-8 are decoded with replacement characters."""
    if isinstance(completion, bytes | bytearray):
        return bytes(completion).decode("utf-8", errors="replace")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str or bytes, got {type(completion).__name__}")
    return completion


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each '{' -> position of its matching '}', in one linear pass (escaped braces ignored)."""
    matches, stack = {}, []
    for brace in _BRACE.finditer(text):
        if brace.group(0) == "{":
            stack.append(brace.start())
        elif stack:
            matches[stack.pop()] = brace.start()
    return matches


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) whose braces balance; None when there is none."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    openings = [m.end() - 1 for m in _BOX_OPEN.finditer(text)]
    if not openings:
        return None
    last = openings[-1]
    close = _matching_braces(text[last:]).get(0)  # the usual case: the last box is balanced
    if close is not None:
        return text[last + 1 : last + close].strip()
    matches = _matching_braces(text[openings[0] :])  # one linear pass serves every earlier box
    for brace in reversed(openings[:-1]):
        close = matches.get(brace - openings[0])
        if close is not None:
            return text[brace + 1 : close + openings[0]].strip()
    return None


def _last_number(text: str) -> str | None:
    """The last number in the text, searching growing tails so a long text costs little."""
    end = max(text.rfind(digit) for digit in "0123456789")  # C-speed scans; the regex only sees the tail
    if end < 0:
        return None
    text, size = text[: end + 1], 256
    while True:
        tail = text[-size:]
        last = None
        for last in _NUMBER.finditer(tail):  # noqa: B007 - keep the last match
            pass
        whole = size >= len(text)
        if last is not None and (
            whole or (last.start() > 0 and tail[last.start() - 1] not in "0123456789,.-")
        ):
            return last.group(0)
        if whole:
            return None
        size *= 16


def extract_answer(completion: str | bytes, fallback: str = "last_number") -> str | None:
    """The final answer of a completion: the last balanced \\boxed{...}, else the fallback.

    fallback: "last_number" (the last number in the text, thousands separators kept) or "none".
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    text = as_text(completion)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if fallback == "last_number":
        return _last_number(text)
    return None


def gsm8k_gold(answer_field: str) -> str:
    """The number after GSM8K's `#### `, thousands separators removed: '... #### 1,600' -> '1600'."""
    if not isinstance(answer_field, str) or "####" not in answer_field:
        raise ValueError(f"a GSM8K answer must end with '#### <number>', got {str(answer_field)[-80:]!r}")
    gold = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError("a GSM8K answer has nothing after '####'")
    return gold


def gsm8k_reference(answer_field: str) -> str:
    """The worked solution of a GSM8K answer, without its `#### n` line."""
    return answer_field.rsplit("####", 1)[0].rstrip()


def _as_integer(text: str) -> int | None:
    text = text.strip().strip("$").strip()
    if _INTEGER.fullmatch(text):
        return int(text.replace(",", ""))
    return None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    if not parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed")
    return parsed


def equivalent(answer: str, gold: str) -> bool:
    """math-verify's judgement, with its own signal-based timeouts off (the caller enforces a limit)."""
    import logging

    import math_verify.utils
    from math_verify import parse, verify

    math_verify.utils.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = _parse_gold(gold)
    answer_parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


_WORKER_MODULES = ("math_verify", "hsd.tasks.math")


def warm_workers(count: int = 1) -> None:
    """Start `count` math-verify workers now, so a first call does not wait for their imports."""
    shared_pool(_WORKER_MODULES).warm(count)


def verify_math(
    completion: str | bytes,
    gold: str,
    *,
    timeout: float = 5.0,
    fallback: str = "last_number",
    shortcut: bool = True,
    max_answer_chars: int = MAX_ANSWER_CHARS,
) -> Verdict:
    """Reward 1.0 when the completion's final answer equals `gold` (math-verify), else 0.0, with a reason.

    Reasons: "correct", "wrong", "no_answer" (nothing to extract), "answer_too_long", "timeout" (math-verify
    ran past `timeout` seconds; its worker was killed), "error" (the check itself failed: reward unknown).
    shortcut: decide identical strings and pairs of plain integers without math-verify (same verdict, faster).
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold must be a non-empty string, got {gold!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    answer = extract_answer(completion, fallback)
    if answer is None or not answer:
        return Verdict(0.0, "no_answer", "no \\boxed{...} answer found in the completion")
    extra = {"answer": answer[:200]}
    if len(answer) > max_answer_chars:
        return Verdict(0.0, "answer_too_long", f"final answer has {len(answer)} characters", extra)
    if shortcut:
        if answer == gold.strip():
            return Verdict(1.0, "correct", "", extra)
        answer_int, gold_int = _as_integer(answer), _as_integer(gold)
        if answer_int is not None and gold_int is not None:
            same = answer_int == gold_int
            return Verdict(float(same), "correct" if same else "wrong", "" if same else _wrong(answer), extra)
    try:
        same = shared_pool(_WORKER_MODULES).call(
            "hsd.tasks.math", "equivalent", answer, gold, timeout=timeout
        )
    except WorkerTimeout:
        return Verdict(0.0, "timeout", f"checking the answer took longer than {timeout:g} s", extra)
    except WorkerError as exc:
        return Verdict(0.0, UNCOMPUTED, f"math-verify failed: {exc}", extra)
    return Verdict(float(same), "correct" if same else "wrong", "" if same else _wrong(answer), extra)


def _wrong(answer: str) -> str:
    return f"final answer {answer[:200]} is not equivalent to the reference answer"
