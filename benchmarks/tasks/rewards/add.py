"""Reward of the ``add`` task: "What is 23 + 58?" -> "81" (standard library only).

* Correctness: the completion's number (the one after the last ``=``, else the first one) equal
  to the sum gives 1.0; a wrong number gives ``0.5 * max(0, 1 - |error| / 20)`` (a forgotten carry,
  off by 10, gives 0.25); no number gives 0.
* Chatter: anything besides the bare number (a lead-in, a "Hope this helps!") multiplies the
  score by 0.6. So 1.0 only for exactly the right number and nothing else.

The expected sum comes from the ``answer`` column when given, else from the prompt text (a string,
or a list of chat messages: the last user message).
"""

from __future__ import annotations

import re
from typing import Any

CHATTER_FACTOR = 0.6
_PROBLEM = re.compile(r"(\d+)\s*(?:\+|加|plus)\s*(\d+)")
_NUMBER = re.compile(r"-?\d+")


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: the string itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def expected_answer(prompt: Any) -> int | None:
    match = _PROBLEM.search(prompt_text(prompt))
    return int(match.group(1)) + int(match.group(2)) if match else None


def parse_number(completion: str) -> int | None:
    text = completion.strip()
    tail = text.rsplit("=", 1)[-1] if "=" in text else text
    found = _NUMBER.search(tail)
    return int(found.group()) if found else None


def score(completion: str, answer: int | None) -> float:
    if answer is None:
        return 0.0
    text = completion.strip()
    got = parse_number(text)
    if got is None:
        return 0.0
    correct = 1.0 if got == answer else 0.5 * max(0.0, 1.0 - abs(got - answer) / 20)
    clean = re.fullmatch(r"-?\d+", text) is not None
    return correct if clean else correct * CHATTER_FACTOR


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """One score in [0, 1] per completion (kwargs: optional ``answer=[...]`` column)."""
    answers = kwargs.get("answer") or [None] * len(prompts)
    out = []
    for prompt, completion, answer in zip(prompts, completions, answers, strict=True):
        expected = int(answer) if answer not in (None, "") else expected_answer(prompt)
        out.append(score(completion, expected))
    return out
