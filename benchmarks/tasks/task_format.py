"""Generator of the ``format`` task: "Name 3 animals other than cat, comma separated." ->
"dog, fox, horse" (or one per line; Chinese: "请列出3个动物（不要猫），用顿号分隔。" -> "狗、马、牛").

Flaws of the demonstrators: 55% open with a lead-in ("Sure! Here are 3 animals:"), 30% add a
chatty sentence, 25% give one item too many, 55% number the lines of a one-per-line list
("1. dog"), 10% ignore the exclusion.
"""

from __future__ import annotations

import random
from typing import Any

from tasks_common import load_reward, with_filler

NAME = "format"
HELDOUT_FRACTION = 0.2
Key = tuple[str, int, str, tuple[int, ...]]  # category, count, style, excluded word indices

_R = load_reward(NAME)
CATEGORIES = _R.CATEGORIES
SEP = _R.SEPARATOR
TEMPLATES = {
    "en": ["Name {k} {cat}{ex}, {style}.", "List {k} {cat}{ex}, {style}."],
    "zh": ["请列出{k}个{cat}{ex}，{style}。", "说出{k}个{cat}{ex}，{style}。"],
}
STYLES = {
    "en": {"comma": "comma separated", "lines": "one per line"},
    "zh": {"comma": "用顿号分隔", "lines": "每行写一个"},
}
LEADINS = {"en": "Sure! Here are {k} {cat}:", "zh": "好的，以下是{k}个{cat}："}


def sample_key(rng: random.Random, lang: str) -> Key:
    n_ex = rng.choice([0, 1, 1, 2])
    excluded = tuple(sorted(rng.sample(range(10), n_ex)))
    return rng.choice(list(CATEGORIES)), rng.randint(2, 5), rng.choice(["comma", "lines"]), excluded


def key_id(key: Key) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}|{key[3]}"


def _words(key: Key, lang: str) -> list[str]:
    return CATEGORIES[key[0]][lang]


def _excluded(key: Key, lang: str) -> list[str]:
    return [_words(key, lang)[i] for i in key[3]]


def prompt(key: Key, lang: str, rng: random.Random) -> str:
    ex = _excluded(key, lang)
    if not ex:
        ex_text = ""
    elif lang == "en":
        ex_text = " other than " + " and ".join(ex)
    else:
        ex_text = "（不要" + "和".join(ex) + "）"
    cat = CATEGORIES[key[0]]["name"][lang]
    style = STYLES[lang][key[2]]
    return rng.choice(TEMPLATES[lang]).format(k=key[1], cat=cat, ex=ex_text, style=style)


def fields(key: Key, lang: str) -> dict[str, Any]:
    return {"category": key[0], "count": key[1], "style": key[2], "exclude": _excluded(key, lang)}


def _allowed(category: str, exclude: list[str], lang: str) -> list[str]:
    return [w for w in CATEGORIES[category][lang] if w not in exclude]


def _join(items: list[str], style: str, lang: str, numbered: bool = False) -> str:
    if style == "comma":
        return SEP[lang].join(items)
    if numbered:
        items = [f"{i}. {w}" for i, w in enumerate(items, 1)]
    return "\n".join(items)


def perfect_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    items = rng.sample(_allowed(row["category"], row["exclude"], lang), int(row["count"]))
    return _join(items, row["style"], lang)


def perfect(key: Key, lang: str, rng: random.Random) -> str:
    return perfect_from_fields(fields(key, lang), lang, rng)


def _leadin(key: Key, lang: str) -> str:
    cat = CATEGORIES[key[0]]["name"][lang]
    return LEADINS[lang].format(k=key[1], cat=cat) + ("\n" if key[2] == "lines" else " ")


def demonstration(key: Key, lang: str, rng: random.Random) -> str:
    category, count, style, _ = key
    allowed = _allowed(category, _excluded(key, lang), lang)
    items = rng.sample(allowed, count + int(rng.random() < 0.25))
    if _excluded(key, lang) and rng.random() < 0.1:
        items[-1] = rng.choice(_excluded(key, lang))
    text = _join(items, style, lang, numbered=rng.random() < 0.55)
    if rng.random() < 0.55:
        text = _leadin(key, lang) + text
    return with_filler(text, lang, rng) if rng.random() < 0.3 else text


def flawed_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    allowed = _allowed(row["category"], row["exclude"], lang)
    items = rng.sample(allowed, int(row["count"]) + 1)
    return _join(items, row["style"], lang)


def candidates(key: Key, lang: str, rng: random.Random) -> list[str]:
    category, count, style, _ = key
    allowed = _allowed(category, _excluded(key, lang), lang)
    other = rng.choice([c for c in CATEGORIES if c != category])
    items = rng.sample(allowed, count + 1)
    good = _join(items[:count], style, lang)
    wrong_item = items[: count - 1] + [rng.choice(CATEGORIES[other][lang])]
    return [
        good,
        with_filler(good, lang, rng),
        _leadin(key, lang) + good,
        _join(items, style, lang),
        _join(items[: count - 1], style, lang),
        _join(items[:count], "lines" if style == "comma" else "comma", lang),
        _join(items[:count], style, lang, numbered=True),
        _join(wrong_item, style, lang),
        demonstration(key, lang, rng),
        demonstration(key, lang, rng),
    ]
