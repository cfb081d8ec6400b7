"""Generator of the ``add`` task: "What is 23 + 58?" -> "81".

Flaws of the demonstrators: 40% of them forget the carry (27 + 48 -> "65") when the units carry,
60% add a chatty sentence ("Hope this helps!"), 25% write a lead-in ("The answer is 81.") or the
whole equation ("23 + 58 = 81").
"""

from __future__ import annotations

import random
from typing import Any

from tasks_common import with_filler

NAME = "add"
HELDOUT_FRACTION = 0.2  # of the unordered operand pairs
MAX_OPERAND = 49
Key = tuple[int, int]

TEMPLATES = {
    "en": ["What is {a} + {b}?", "Compute {a} + {b}.", "How much is {a} plus {b}?"],
    "zh": ["{a} 加 {b} 等于多少？", "计算：{a} + {b} 等于几？", "请算一下 {a} 加 {b}。"],
}
LEADINS = {"en": "The answer is {s}.", "zh": "答案是{s}。"}


def sample_key(rng: random.Random, lang: str) -> Key:
    return rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)


def key_id(key: Key) -> str:
    """Order-free: a held-out 23 + 58 holds out 58 + 23 too."""
    return f"{min(key)}+{max(key)}"


def prompt(key: Key, lang: str, rng: random.Random) -> str:
    return rng.choice(TEMPLATES[lang]).format(a=key[0], b=key[1])


def fields(key: Key, lang: str) -> dict[str, Any]:
    return {"answer": str(key[0] + key[1])}


def perfect_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    return str(row["answer"])


def perfect(key: Key, lang: str, rng: random.Random) -> str:
    return str(key[0] + key[1])


def _carries(key: Key) -> bool:
    return key[0] % 10 + key[1] % 10 >= 10


def _dress(key: Key, total: int, lang: str, rng: random.Random, style: str) -> str:
    if style == "leadin":
        return LEADINS[lang].format(s=total)
    if style == "equation":
        return f"{key[0]} + {key[1]} = {total}"
    return str(total)


def demonstration(key: Key, lang: str, rng: random.Random) -> str:
    total = key[0] + key[1]
    if _carries(key) and rng.random() < 0.4:
        total -= 10
    style = rng.choices(["bare", "leadin", "equation"], weights=[0.75, 0.15, 0.10])[0]
    text = _dress(key, total, lang, rng, style)
    return with_filler(text, lang, rng) if rng.random() < 0.6 else text


def flawed_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    answer = int(row["answer"])
    return rng.choice([str(answer - 10), LEADINS[lang].format(s=answer), f"{answer} !"])


def candidates(key: Key, lang: str, rng: random.Random) -> list[str]:
    total = key[0] + key[1]
    wrong = total - 10 if _carries(key) else total + rng.choice([-1, 1])
    return [
        str(total),
        with_filler(str(total), lang, rng),
        _dress(key, total, lang, rng, "leadin"),
        _dress(key, total, lang, rng, "equation"),
        str(wrong),
        with_filler(str(wrong), lang, rng),
        str(total + rng.choice([-2, -1, 1, 2])),
        demonstration(key, lang, rng),
        demonstration(key, lang, rng),
    ]
