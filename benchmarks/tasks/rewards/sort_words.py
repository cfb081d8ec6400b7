"""Reward of the ``sort_words`` task (standard library only).

English: "Sort these words alphabetically: pear, apple, fig" -> "apple, fig, pear".
Chinese: "请按拼音顺序排列这些词：梨、猫、苹果" -> "梨、猫、苹果" (order of the toneless pinyin in
:data:`PINYIN`, the same rule as alphabetical order of the romanisation).

* The words of the completion (split on commas, 、 and spaces) must be a permutation of the given
  words: then the score is ``0.4 + 0.6 * (share of positions right)``, 1.0 only for exactly the
  right order. Otherwise ``0.3 * (share of the given words present)``.
  A word with a sentence glued on ("牛如果还有问题请告诉我。") still counts as the word.
* Chatter: anything besides the words joined by ", " (English) or "、" (Chinese) multiplies the
  score by 0.6.

The expected order comes from the ``answer`` column when given, else from the prompt text (a
string, or a list of chat messages: the last user message).
"""

from __future__ import annotations

import re
from typing import Any

CHATTER_FACTOR = 0.6
SEPARATOR = {"en": ", ", "zh": "、"}
# fmt: off
WORDS_EN = [
    "apple", "apricot", "avocado", "banana", "bear", "bee", "cat", "cherry", "cow", "deer", "dog",
    "duck", "fig", "fish", "fox", "goat", "grape", "horse", "kiwi", "lemon", "lime", "lion",
    "mango", "melon", "mouse", "owl", "peach", "pear", "pig", "plum", "rabbit", "rat", "seal",
    "sheep", "snake", "tiger",
]
PINYIN = {  # the Chinese words and their toneless pinyin, which orders them
    "苹果": "pingguo", "葡萄": "putao", "菠萝": "boluo", "草莓": "caomei", "橙子": "chengzi",
    "大象": "daxiang", "鹅": "e", "狗": "gou", "猴子": "houzi", "蝴蝶": "hudie", "鸡": "ji",
    "梨": "li", "老虎": "laohu", "鹿": "lu", "狼": "lang", "骆驼": "luotuo", "马": "ma",
    "芒果": "mangguo", "猫": "mao", "蜜蜂": "mifeng", "柠檬": "ningmeng", "牛": "niu",
    "青蛙": "qingwa", "蛇": "she", "狮子": "shizi", "松鼠": "songshu", "桃子": "taozi",
    "兔子": "tuzi", "乌龟": "wugui", "西瓜": "xigua", "香蕉": "xiangjiao", "熊猫": "xiongmao",
    "羊": "yang", "鸭": "ya", "鱼": "yu", "樱桃": "yingtao",
}
# fmt: on
_SPLIT = re.compile(r"[,，、\s]+")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: the string itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def language(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def sort_key(word: str) -> str:
    return PINYIN.get(word, word)


def given_words(prompt: Any) -> list[str]:
    """The words to sort: everything after the prompt's last colon, split on separators."""
    text = prompt_text(prompt).strip()
    tail = re.split(r"[:：]", text)[-1]
    return [w for w in _SPLIT.split(tail.strip().rstrip(".。?？")) if w]


def expected_order(prompt: Any) -> list[str]:
    return sorted(given_words(prompt), key=sort_key)


def _known_word(expected: list[str]) -> Any:
    """Token -> the given word it is, or starts with (a sentence glued on), else ``None``."""

    def known(token: str) -> str | None:
        if token in expected:
            return token
        prefixes = [w for w in expected if token.startswith(w)]
        return max(prefixes, key=len) if prefixes else None

    return known


def score(completion: str, expected: list[str], lang: str) -> float:
    if not expected:
        return 0.0
    text = completion.strip().lower() if lang == "en" else completion.strip()
    got = [w for w in map(_known_word(expected), _SPLIT.split(text)) if w]
    if sorted(got) == sorted(expected):
        right = sum(g == e for g, e in zip(got, expected, strict=True))
        correct = 0.4 + 0.6 * right / len(expected)
    else:
        correct = 0.3 * len(set(got)) / len(set(expected))
    clean = text == SEPARATOR[lang].join(got)
    return correct if clean else correct * CHATTER_FACTOR


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """One score in [0, 1] per completion (kwargs: optional ``answer=[...]``, the sorted words
    joined as in a perfect answer)."""
    answers = kwargs.get("answer") or [None] * len(prompts)
    out = []
    for prompt, completion, answer in zip(prompts, completions, answers, strict=True):
        lang = language(prompt_text(prompt))
        if answer:
            expected = [w for w in _SPLIT.split(str(answer).strip()) if w]
        else:
            expected = expected_order(prompt)
        out.append(score(completion, expected, lang))
    return out
